"""FLUX.1 [dev] and [schnell]: a flow-matching transformer conditioned on CLIP-L's pooled output and
T5-XXL's token sequence, trained as kohya's flux_train_network does.

- Conditioning: CLIP-L's pooled output (`pooled_projections`) and T5-XXL's last hidden states
  (`encoder_hidden_states`), T5 padded to 512 tokens for dev and 256 for schnell; with
  `t5_attention_mask` (kohya's `--apply_t5_attn_mask`) T5 runs with its attention mask and the
  transformer attends only to real tokens. Both encoders are frozen and their outputs cached
  (kohya's `--cache_text_encoder_outputs`); a LoRA on CLIP-L is optional, never on T5.
- Objective: engine/families/flux_objective.py (rectified flow on 2x2-packed latents).
- LoRA: every Linear of the double and single blocks, exported in kohya's lora_flux names
  (engine/families/flux_lora.py).
- Files: kohya's four single files (engine/families/flux_files.py, flux_load.py) or a diffusers folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelFileError
from engine.families.base import LoadedModel, ModelFamily
from engine.families.flux_files import FLUX_VARIANTS, check_flux_files
from engine.families.flux_load import T5_MAX_LENGTH, load_flux_parts, load_tokenizers, scheduler_for
from engine.families.flux_lora import (
    MODELSPEC_ARCHITECTURE,
    NETWORK_MODULE,
    FluxLoraSettings,
    TrainedLayer,
    clip_l_stem,
    flux_metadata,
    kohya_flux_state_dict,
    kohya_transformer_stem,
    transformer_lora_targets,
)
from engine.families.flux_objective import FlowMatching, FlowSettings
from engine.messages import Message

if TYPE_CHECKING:
    import torch

FLUX_FOLDER_PARTS = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)


class Flux1(ModelFamily):
    """FLUX.1 dev or schnell; `t5_max_length` and `t5_attention_mask` are the run's choices."""

    base_model_version = "flux1"
    default_resolution = 1024
    denoiser_label = "transformer"
    text_encoder_prefixes = ("lora_te1",)  # CLIP-L; T5-XXL (kohya's lora_te3) is never trained here

    def __init__(self, variant: str, *, t5_max_length: int | None = None, t5_attention_mask: bool = False):
        self.variant = variant
        self.name = f"flux1-{variant}"
        self.label = FLUX_VARIANTS[variant]
        self.modelspec_architecture = MODELSPEC_ARCHITECTURE[variant]
        self.t5_max_length = t5_max_length or T5_MAX_LENGTH[variant]
        self.t5_attention_mask = t5_attention_mask

    def tokenize(self, model: LoadedModel, captions: list[str]) -> list[torch.Tensor]:
        """[CLIP ids (77), T5 ids, T5 attention mask]."""
        clip, t5 = model.tokenizers
        clip_ids = clip(
            captions,
            padding="max_length",
            max_length=clip.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        t5_tokens = t5(
            captions,
            padding="max_length",
            max_length=self.t5_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return [clip_ids, t5_tokens.input_ids, t5_tokens.attention_mask]

    def encode(self, model: LoadedModel, token_ids: list[torch.Tensor], clip_skip: int = 1) -> dict[str, Any]:
        from engine.devices import host_to_device

        clip, t5 = model.text_encoders
        clip_ids, t5_ids, t5_mask = token_ids
        pooled = clip(host_to_device(clip_ids, clip.device), return_dict=True).pooler_output
        mask = host_to_device(t5_mask, t5.device) if self.t5_attention_mask else None
        hidden = t5(
            host_to_device(t5_ids, t5.device), attention_mask=mask, return_dict=True
        ).last_hidden_state
        conditioning = {"pooled_projections": pooled, "encoder_hidden_states": hidden}
        if mask is not None:
            conditioning["t5_attention_mask"] = mask
        return conditioning

    def predict(
        self,
        model: LoadedModel,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: dict[str, Any],
        geometry: Any = None,
    ) -> torch.Tensor:
        import torch

        conditioning = dict(conditioning)
        text = conditioning["encoder_hidden_states"]
        mask = conditioning.pop("t5_attention_mask", None)
        attention = {}
        if mask is not None:
            # The text tokens come first in FLUX's joint sequence; image tokens are always attended to.
            image = torch.ones(mask.shape[0], noisy_latents.shape[1], dtype=torch.bool, device=mask.device)
            attention["attention_mask"] = torch.cat([mask.bool(), image], dim=1)[:, None, None, :]
        dtype = text.dtype
        return model.denoiser(
            hidden_states=noisy_latents.to(dtype),
            timestep=timesteps.to(dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=text.device, dtype=dtype),
            joint_attention_kwargs=attention or None,
            return_dict=False,
            **{key: value.to(dtype) if key != "guidance" else value for key, value in conditioning.items()},
        )[0]

    def kohya_unet_name(self, module_path: str) -> str:
        return kohya_transformer_stem(module_path)[0]

    def kohya_text_encoder_name(self, index: int, module_path: str) -> str:
        return clip_l_stem(module_path)

    network_module = NETWORK_MODULE
    modelspec_implementation = "https://github.com/black-forest-labs/flux"  # kohya's sai_model_spec IMPL_FLUX

    def lora_targets(self, denoiser: Any) -> list[str]:
        return transformer_lora_targets(denoiser)

    def trainable_text_encoders(self, model: LoadedModel) -> list[Any]:
        return model.text_encoders[:1]  # CLIP-L; kohya trains T5 only on request, this tool never

    def kohya_tensors(
        self,
        denoiser_layers: list[tuple[str, Any, Any, float]],
        text_layers: list[tuple[str, Any, Any, float]],
        dtype: Any,
    ) -> dict[str, Any]:
        return kohya_flux_state_dict(
            [TrainedLayer(*layer) for layer in denoiser_layers],
            [TrainedLayer(*layer) for layer in text_layers],
            dtype=dtype,
        )

    def lora_metadata(self, answers: Any) -> dict[str, str]:
        training = answers.training
        settings = FluxLoraSettings(
            variant=self.variant,
            timestep_sampling=training.timestep_sampling,
            discrete_flow_shift=training.discrete_flow_shift,
            sigmoid_scale=training.sigmoid_scale,
            guidance_scale=training.guidance_scale,
            apply_t5_attn_mask=self.t5_attention_mask,
            t5_max_length=self.t5_max_length,
        )
        return flux_metadata(settings, answers.network.dim)


FLUX_DEV = Flux1("dev")
FLUX_SCHNELL = Flux1("schnell")


@dataclass(frozen=True)
class FluxOptions:
    """The answers that shape a FLUX.1 model: its other three files and the run's text and flow settings."""

    ae: Path | None = None
    clip_l: Path | None = None
    t5xxl: Path | None = None
    tokenizer: Path | None = None
    t5_max_length: int | None = None
    t5_attention_mask: bool = False
    flow: FlowSettings = FlowSettings()

    @property
    def names_flux_files(self) -> bool:
        """The answers name FLUX.1's other files: `[model] path` is meant to be a FLUX.1 transformer."""
        return any(path is not None for path in (self.ae, self.clip_l, self.t5xxl))


def _model(parts: dict[str, Any], variant: str, options: FluxOptions, source: Path, note: str) -> LoadedModel:
    family = Flux1(variant, t5_max_length=options.t5_max_length, t5_attention_mask=options.t5_attention_mask)
    return LoadedModel(
        family=family,
        denoiser=parts["transformer"],
        vae=parts["vae"],
        text_encoders=[parts["clip"], parts["t5"]],
        tokenizers=parts["tokenizers"],
        objective=FlowMatching(parts["scheduler"], options.flow, guidance=variant == "dev"),
        source=source,
        notes=[note],
    )


def missing_part_error(path: Path, slot: str) -> ModelFileError:
    from engine.families.flux_files import SLOTS

    return ModelFileError(
        f"this is a FLUX.1 transformer file; a FLUX.1 model in single files also needs {SLOTS[slot].label} ({SLOTS[slot].key})",
        where=path,
        fix=SLOTS[slot].fix,
    )


def load_flux_files(path: Path, options: FluxOptions) -> LoadedModel:
    """FLUX.1 from kohya's four files, every one checked from its header before any weight is read."""
    import torch

    for slot in ("ae", "clip_l", "t5xxl"):
        if getattr(options, slot) is None:
            raise missing_part_error(path, slot)
    info = check_flux_files(path, options.ae, options.clip_l, options.t5xxl)
    parts = load_flux_parts(info, options.tokenizer, torch.float32)
    note = f"{info.label} from single files ({path.name}{', fp8 on disk' if info.transformer.fp8 else ''}, {options.ae.name}, {options.clip_l.name}, {options.t5xxl.name})"
    return _model(parts, info.variant, options, path, note)


def load_flux_model(path: Path, options: FluxOptions) -> LoadedModel:
    return load_flux_folder(path, options) if path.is_dir() else load_flux_files(path, options)


def is_flux_folder(path: Path) -> bool:
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (path / "transformer" / "config.json").is_file() and (path / "text_encoder_2").is_dir()
    return str(index.get("_class_name", "")).startswith("Flux")


def load_flux_folder(path: Path, options: FluxOptions) -> LoadedModel:
    """FLUX.1 from a diffusers folder (FluxPipeline.save_pretrained, or the Hub's FLUX.1-dev / -schnell)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    for part in FLUX_FOLDER_PARTS:
        if not (path / part).is_dir():
            raise ModelFileError(
                f"this FLUX.1 diffusers folder has no `{part}` folder",
                where=path,
                fix=f"copy the complete model folder ({', '.join(FLUX_FOLDER_PARTS)}), or give kohya's four single files",
            )
    try:
        transformer = FluxTransformer2DModel.from_pretrained(
            path, subfolder="transformer", local_files_only=True
        )
        variant = "dev" if transformer.config.guidance_embeds else "schnell"
        parts = {
            "transformer": transformer,
            "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True),
            "clip": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True),
            "t5": T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", local_files_only=True),
            "tokenizers": load_tokenizers(path / "tokenizer", path / "tokenizer_2", variant),
            "scheduler": scheduler_for(variant),
        }
    except (OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelFileError(
            f"cannot load this FLUX.1 diffusers folder: {reason}",
            where=path,
            fix="check the model folder is complete and not damaged",
        ) from None
    for part in ("transformer", "vae", "clip", "t5"):
        parts[part].eval()
    return _model(parts, variant, options, path, f"{FLUX_VARIANTS[variant]} diffusers folder")


def flux_options(model_section: Any, training: Any) -> FluxOptions:
    """The FLUX.1 choices of an answers file (`[model]` and `[training]` sections)."""
    return FluxOptions(
        ae=model_section.ae,
        clip_l=model_section.clip_l,
        t5xxl=model_section.t5xxl,
        tokenizer=model_section.tokenizer,
        t5_max_length=model_section.t5_max_length,
        t5_attention_mask=model_section.t5_attention_mask,
        flow=FlowSettings(
            timestep_sampling=training.timestep_sampling,
            discrete_flow_shift=training.discrete_flow_shift,
            sigmoid_scale=training.sigmoid_scale,
            guidance_scale=training.guidance_scale,
        ),
    )


def is_flux_transformer_file(path: Path) -> bool:
    """Whether a .safetensors file's header is a FLUX.1 transformer's (cheap; never raises)."""
    from engine.families.flux_files import identify, read_header

    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return False
    try:
        return identify(read_header(path, "transformer")).kind == "transformer"
    except ModelFileError:
        return False


def is_flux_model(path: Path, options: FluxOptions | None = None) -> bool:
    """A FLUX.1 folder or transformer file, or a path the answers mean as one (they name its other files)."""
    if options is not None and options.names_flux_files and not path.is_dir():
        return True
    return is_flux_folder(path) if path.is_dir() else is_flux_transformer_file(path)


def inspect_flux(path: Path, options: FluxOptions) -> Any:
    """ModelInfo of a FLUX.1 model from headers and configs only: "FLUX.1 dev" or "FLUX.1 schnell"."""
    from engine.families.base import ModelInfo
    from engine.families.flux_load import find_flux_tokenizers
    from engine.families.tokenizers import OWN_TOKENIZERS

    if path.is_dir():
        try:
            config = json.loads((path / "transformer" / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ModelFileError(
                "this FLUX.1 diffusers folder has no readable transformer/config.json",
                where=path,
                fix="copy the complete model folder",
            ) from None
        variant = "dev" if config.get("guidance_embeds") else "schnell"
        layout, tokenizer, note = (
            "diffusers folder",
            path / "tokenizer",
            OWN_TOKENIZERS,
        )
    else:
        for slot in ("ae", "clip_l", "t5xxl"):
            if getattr(options, slot) is None:
                raise missing_part_error(path, slot)
        info = check_flux_files(path, options.ae, options.clip_l, options.t5xxl)
        variant = info.variant
        layout = "single files" + (f", transformer in {info.transformer.fp8}" if info.transformer.fp8 else "")
        try:
            tokenizer, t5_tokenizer = find_flux_tokenizers(path, options.tokenizer)
            note = f"{tokenizer} and {t5_tokenizer}"
        except ModelFileError as exc:
            tokenizer, note = None, exc.message
    family = Flux1(variant)
    return ModelInfo(
        family=family.name,
        label=family.label,
        layout=layout,
        prediction="flow",
        prediction_reason=Message("model.prediction.flux", "FLUX.1 is trained by flow matching (the velocity, kohya's raw prediction)"),
        tokenizer=tokenizer,
        tokenizer_note=note,
        source=path,
    )


PACKED_SIDE = 16  # pixels per packed token side: the VAE's 8x, then FLUX's 2x2 packing


def check_flux_answers(answers: Any, resolution: int) -> None:
    """What FLUX.1 training needs of the answers beyond their schema, before anything loads."""
    from engine.errors import AnswersError

    dataset = answers.dataset
    if resolution % PACKED_SIDE:
        raise AnswersError(
            f"`dataset.resolution = {resolution}`: FLUX.1 packs latents 2x2, so sides must be multiples of {PACKED_SIDE}",
            fix=f"use {resolution - resolution % PACKED_SIDE} or {resolution - resolution % PACKED_SIDE + PACKED_SIDE}",
        )
    if dataset.buckets and dataset.bucket_step % PACKED_SIDE:
        raise AnswersError(
            f"`dataset.bucket_step = {dataset.bucket_step}`: FLUX.1 bucket sides must be multiples of {PACKED_SIDE}",
            fix="use 64 (kohya's default)",
        )
    if answers.network.init_from is not None:
        raise AnswersError(
            "`network.init_from`: starting from an existing LoRA is not supported for FLUX.1 yet",
            fix="remove `init_from` (the LoRA starts fresh)",
        )
