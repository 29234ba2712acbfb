"""LoRA adapters on a base model, and kohya's .safetensors format for the result.

Training uses peft's LoRA layers, injected through the models' own `add_adapter` on exactly the
modules kohya's `networks.lora` targets by default: every Linear and 1x1 Conv2d inside the UNet's
Transformer2DModel blocks, and the Linear layers of the text encoder's CLIPAttention and CLIPMLP.
peft's lora_A / lora_B / alpha are kohya's lora_down / lora_up / alpha (same shapes, same
alpha / rank scale), so the export is a renaming: the model family gives kohya's key stems
(`lora_unet_...`, `lora_te_text_model_...`), which AUTOMATIC1111, ComfyUI and diffusers all map.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelFileError, UserError
from engine.files import atomic_write_bytes

if TYPE_CHECKING:
    import torch

    from engine.config import Answers
    from engine.families import LoadedModel, ModelFamily

ADAPTER = "default"  # peft's adapter name; a model carries one LoRA while it trains
NETWORK_MODULE = "networks.lora"  # kohya's ss_network_module for a plain LoRA
SUFFIX_DOWN = "lora_down.weight"
SUFFIX_UP = "lora_up.weight"
SUFFIX_ALPHA = "alpha"

# kohya's ss_optimizer is the optimizer class's `module.name`.
KOHYA_OPTIMIZER_NAMES = {
    "adamw": "torch.optim.adamw.AdamW",
    "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "prodigy": "prodigyopt.prodigy.Prodigy",
}
# modelspec.implementation as sd-scripts' sai_model_spec writes it for a LoRA.
MODELSPEC_IMPLEMENTATION_SGM = "https://github.com/Stability-AI/generative-models"
MODELSPEC_IMPLEMENTATION_DIFFUSERS = "diffusers"

# Legacy hash window of sd-webui-additional-networks: 64 KiB at offset 1 MiB.
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000


# --- which modules get a LoRA ---------------------------------------------------------------------


def _is_linear_or_pointwise_conv(module: Any) -> bool:
    from torch import nn

    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


def _targets_inside(model: Any, container_types: tuple[type, ...]) -> list[str]:
    """Paths of the Linear / 1x1-conv modules inside every module of `container_types`, in model order."""
    targets = []
    for container_path, container in model.named_modules():
        if not isinstance(container, container_types):
            continue
        for child_path, child in container.named_modules():
            if child_path and _is_linear_or_pointwise_conv(child):
                targets.append(f"{container_path}.{child_path}")
    return targets


def unet_lora_targets(unet: Any) -> list[str]:
    """kohya's default UNet targets: Linear and 1x1 Conv2d inside each Transformer2DModel.

    Call it on a UNet without adapters. 192 modules for SD 1.5 (16 blocks x 12).
    """
    from diffusers.models import Transformer2DModel

    return _targets_inside(unet, (Transformer2DModel,))


def text_encoder_lora_targets(text_encoder: Any) -> list[str]:
    """kohya's default text-encoder targets: q/k/v/out_proj of CLIPAttention, fc1/fc2 of CLIPMLP.

    Call it on a text encoder without adapters. 72 modules for SD 1.5's 12 layers.
    """
    from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention

    return _targets_inside(text_encoder, (CLIPAttention, CLIPMLP))


def kohya_module_stems(family: ModelFamily, unet: Any, text_encoders: list[Any]) -> list[str]:
    """kohya's key stems for every default target of these (adapter-free) models: UNet, then text encoders."""
    stems = [family.kohya_unet_name(path) for path in unet_lora_targets(unet)]
    for index, text_encoder in enumerate(text_encoders):
        stems += [family.kohya_text_encoder_name(index, path) for path in text_encoder_lora_targets(text_encoder)]
    return stems


# --- adding LoRA and reading its parameters --------------------------------------------------------


def add_lora(model: LoadedModel, *, dim: int, alpha: float, train_text_encoder: bool) -> None:
    """Freeze every base weight, then add one LoRA adapter (rank `dim`, `alpha`) on kohya's default targets.

    The UNet always gets one; each text encoder only when `train_text_encoder`. lora_B starts at zero
    (peft's and kohya's default), so the adapted model starts out identical to the base.
    """
    for part in (model.denoiser, model.vae, *model.text_encoders):
        part.requires_grad_(False)
    targets = model.family.lora_targets(model.denoiser)
    _inject(model.denoiser, unet_lora_targets(model.denoiser) if targets is None else targets, dim=dim, alpha=alpha)
    if train_text_encoder:
        for text_encoder in model.family.trainable_text_encoders(model):
            _inject(text_encoder, text_encoder_lora_targets(text_encoder), dim=dim, alpha=alpha)
    lora_parameters(model)  # makes sure the new LoRA weights are float32 whatever the base's dtype


def _inject(module: Any, targets: list[str], *, dim: int, alpha: float) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=dim, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
    # peft directly, not the models' add_adapter: transformers 5's add_adapter refuses peft < 0.22.
    inject_adapter_in_model(config, module, adapter_name=ADAPTER)


def _lora_layers(module: Any) -> Iterator[tuple[str, Any]]:
    """(path, peft LoRA layer) for every layer carrying our adapter, in model order."""
    from peft.tuners.lora import LoraLayer

    for path, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A:
            yield path, layer


def _lora_weights(module: Any) -> list[torch.nn.Parameter]:
    weights = []
    for _, layer in _lora_layers(module):
        weights += [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
    return weights


def _keep_float32(weights: list[torch.nn.Parameter]) -> None:
    """Bring LoRA weights back to float32 in place (same Parameter objects), e.g. after `unet.half()`."""
    import torch

    for weight in weights:
        if weight.dtype != torch.float32:
            weight.data = weight.data.float()


def lora_parameters(model: LoadedModel) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(UNet LoRA weights, text-encoder LoRA weights), each lora_A then lora_B per layer, in model order.

    They are always float32: if the base was cast to half after `add_lora` (which casts the adapter
    with it), the LoRA weights are brought back to float32 here, keeping the same Parameter objects.
    Call it after casting and before building the optimizer. The text-encoder list is empty when
    the text encoders carry no LoRA.
    """
    unet_weights = _lora_weights(model.denoiser)
    text_weights = [weight for text_encoder in model.text_encoders for weight in _lora_weights(text_encoder)]
    _keep_float32(unet_weights + text_weights)
    return unet_weights, text_weights


def text_encoder_parameters(model: LoadedModel) -> list[list[torch.nn.Parameter]]:
    """The LoRA weights of each text encoder (SDXL has two, trained with their own learning rates)."""
    return [_lora_weights(text_encoder) for text_encoder in model.text_encoders]


def _named_lora_layers(model: LoadedModel) -> Iterator[tuple[str, Any]]:
    """(kohya stem, LoRA layer) for every adapted layer: UNet first, then each text encoder."""
    family = model.family
    for path, layer in _lora_layers(model.denoiser):
        yield family.kohya_unet_name(path), layer
    for index, text_encoder in enumerate(model.text_encoders):
        for path, layer in _lora_layers(text_encoder):
            yield family.kohya_text_encoder_name(index, path), layer


# --- kohya's file format ---------------------------------------------------------------------------


def kohya_state_dict(model: LoadedModel, *, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The adapter as kohya writes it: `<stem>.lora_down.weight`, `<stem>.lora_up.weight`, `<stem>.alpha`.

    Shapes are kohya's ([r, in] / [out, r], or [r, in, 1, 1] / [out, r, 1, 1] for 1x1 convs), alpha is
    a 0-dim tensor; every tensor is a contiguous CPU copy in `dtype`. Nothing else is in the dict:
    diffusers refuses a kohya file with any other key.
    """
    import torch

    def trained(module: Any) -> list[tuple[str, Any, Any, float]]:
        return [(path, layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight, float(layer.lora_alpha[ADAPTER])) for path, layer in _lora_layers(module)]

    family_tensors = model.family.kohya_tensors(trained(model.denoiser), [layer for encoder in model.text_encoders for layer in trained(encoder)], dtype)
    if family_tensors is not None:
        return family_tensors
    tensors: dict[str, torch.Tensor] = {}
    for stem, layer in _named_lora_layers(model):
        down = layer.lora_A[ADAPTER].weight
        up = layer.lora_B[ADAPTER].weight
        tensors[f"{stem}.{SUFFIX_DOWN}"] = _cpu_copy(down, dtype)
        tensors[f"{stem}.{SUFFIX_UP}"] = _cpu_copy(up, dtype)
        tensors[f"{stem}.{SUFFIX_ALPHA}"] = torch.tensor(float(layer.lora_alpha[ADAPTER]), dtype=dtype)
    return tensors


def _cpu_copy(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()


def kohya_metadata(*, model: LoadedModel, answers: Answers, stats: dict[str, Any]) -> dict[str, str]:
    """kohya's `ss_*` training metadata and the `modelspec.*` keys, as sd-scripts' train_network.py writes them.

    Values are strings formatted as kohya does (`str()` of the Python value: "True", "None", "0.0001",
    "(512, 512)"; JSON for the dataset tables). `stats` carries what only the run knows:

    - started_at: float, epoch seconds when training started (ss_training_started_at)
    - finished_at: float or None, epoch seconds of this save; None = now (ss_training_finished_at, modelspec.date)
    - steps: optimizer steps done; epoch: epochs done (ss_steps, ss_epoch)
    - max_train_steps: planned optimizer steps (ss_max_train_steps; ss_num_epochs is derived from it as kohya does)
    - num_train_images: training images times repeats; num_reg_images: regularization images used
    - num_batches_per_epoch: batches in one epoch, before gradient accumulation
    - resolution: int, training size in pixels (ss_resolution "(512, 512)", modelspec.resolution "512x512")
    - dataset_dirs / reg_dataset_dirs: {"10_usu bear": {"n_repeats": 10, "img_count": 4}}
    - tag_frequency: {"10_usu bear": {"usu bear": 4}}
    - session_id: int, random id of this run (ss_session_id)
    - mixed_precision: "no", "fp16" or "bf16", as actually used
    """
    training = answers.training
    network = answers.network
    finished_at = stats["finished_at"] if stats["finished_at"] is not None else time.time()
    resolution = int(stats["resolution"])
    updates_per_epoch = max(1, math.ceil(stats["num_batches_per_epoch"] / training.gradient_accumulation))
    kohya_values: dict[str, Any] = {
        "ss_session_id": stats["session_id"],
        "ss_training_started_at": stats["started_at"],
        "ss_output_name": answers.output.name,
        "ss_learning_rate": training.unet_lr,  # kohya's base learning rate; the UNet uses it
        "ss_text_encoder_lr": training.text_encoder_lr,
        "ss_unet_lr": training.unet_lr,
        "ss_num_train_images": stats["num_train_images"],
        "ss_num_reg_images": stats["num_reg_images"],
        "ss_num_batches_per_epoch": stats["num_batches_per_epoch"],
        "ss_num_epochs": math.ceil(stats["max_train_steps"] / updates_per_epoch),
        "ss_gradient_checkpointing": training.gradient_checkpointing,
        "ss_gradient_accumulation_steps": training.gradient_accumulation,
        "ss_max_train_steps": stats["max_train_steps"],
        "ss_lr_warmup_steps": training.warmup_steps,
        "ss_lr_scheduler": training.lr_scheduler,
        "ss_network_module": model.family.network_module,
        "ss_network_dim": network.dim,
        "ss_network_alpha": network.effective_alpha,
        "ss_network_dropout": None,
        "ss_network_args": json.dumps({}),
        "ss_mixed_precision": stats["mixed_precision"],
        "ss_full_fp16": False,  # LoRA weights train in float32
        "ss_v2": model.family.name == "sd2",
        "ss_base_model_version": _base_model_version(model),
        "ss_clip_skip": training.clip_skip,
        "ss_max_token_length": None,  # kohya's None: one 75-token chunk
        "ss_cache_latents": training.cache_latents != "off",
        "ss_seed": training.seed,
        "ss_noise_offset": training.noise_offset or None,  # kohya writes None when it is off
        "ss_min_snr_gamma": training.min_snr_gamma,
        "ss_max_grad_norm": training.max_grad_norm,
        "ss_optimizer": KOHYA_OPTIMIZER_NAMES[training.optimizer],
        "ss_prior_loss_weight": answers.dataset.prior_loss_weight,
        "ss_batch_size_per_device": training.batch_size,
        "ss_total_batch_size": training.batch_size * training.gradient_accumulation,  # one process
        "ss_resolution": (resolution, resolution),
        "ss_dataset_dirs": json.dumps(stats["dataset_dirs"]),
        "ss_reg_dataset_dirs": json.dumps(stats["reg_dataset_dirs"]),
        "ss_tag_frequency": json.dumps(stats["tag_frequency"]),
        "ss_sd_model_name": Path(answers.model.path).name,
        **({"ss_vae_name": Path(answers.model.vae).name} if answers.model.vae else {}),  # kohya's, with --vae
        "ss_training_finished_at": finished_at,
        "ss_steps": stats["steps"],
        "ss_epoch": stats["epoch"],
    }
    metadata = {key: str(value) for key, value in kohya_values.items()}
    metadata.update(model.family.lora_metadata(answers))
    metadata.update(_modelspec(model, answers, resolution=resolution, saved_at=finished_at))
    return metadata


def _is_v2_v_prediction(model: LoadedModel) -> bool:
    return model.family.name == "sd2" and model.objective.prediction_type == "v_prediction"


def _base_model_version(model: LoadedModel) -> str:
    # kohya tells SD 2.x v-prediction (768-v) apart from SD 2.x epsilon (512-base).
    return "sd_v2_v" if _is_v2_v_prediction(model) else model.family.base_model_version


def _modelspec(model: LoadedModel, answers: Answers, *, resolution: int, saved_at: float) -> dict[str, str]:
    """The `modelspec.*` keys as sd-scripts' library/sai_model_spec.py writes them for a LoRA."""
    architecture = model.family.modelspec_architecture
    if _is_v2_v_prediction(model):
        architecture = "stable-diffusion-v2-768-v/lora"
    sgm = model.family.name == "sdxl"  # kohya names SDXL LoRAs after the SGM implementation
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture,
        "modelspec.implementation": MODELSPEC_IMPLEMENTATION_SGM if sgm else MODELSPEC_IMPLEMENTATION_DIFFUSERS,
        "modelspec.title": answers.output.name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(saved_at)).isoformat(),
        "modelspec.prediction_type": "v" if model.objective.prediction_type == "v_prediction" else "epsilon",
        "modelspec.implementation_version": f"lora-wizard/{_own_version()}",
    }
    if model.family.modelspec_implementation:  # FLUX.1: BFL's implementation, and no prediction type (kohya's)
        spec["modelspec.implementation"] = model.family.modelspec_implementation
        del spec["modelspec.prediction_type"]
    if answers.training.clip_skip > 1:
        spec["modelspec.encoder_layer"] = str(answers.training.clip_skip)
    return spec


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lora-wizard")
    except PackageNotFoundError:
        return "unknown"


# --- hashes and the file itself --------------------------------------------------------------------


def safetensors_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts' precalculate_safetensors_hashes computes them.

    Both are taken on a serialization that carries only the `ss_*` metadata, so editing other
    metadata later does not change them: the model hash is the sha256 of everything after the
    header, the legacy hash the first 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB.
    """
    from safetensors.torch import save

    training_metadata = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    data = save(tensors, training_metadata)
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length :]).hexdigest()
    legacy_hash = hashlib.sha256(data[LEGACY_HASH_OFFSET : LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, overwrite: bool = False) -> Path:
    """Write a kohya-format LoRA atomically, with sd-scripts' `sshs_*` hashes added to `metadata`.

    An existing file is kept (UserError) unless `overwrite`.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(
            "a LoRA file of this name already exists",
            where=path,
            fix="set `[output] overwrite = true` in the answers file, or choose another `[output] name`",
        )
    model_hash, legacy_hash = safetensors_hashes(tensors, metadata)
    full_metadata = {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}
    atomic_write_bytes(path, save(tensors, full_metadata))
    return path


# --- starting from an existing LoRA ([network] init_from) ------------------------------------------


@dataclass(eq=False)
class LoraPart:
    """One part of the model as a LoRA file names it: the UNet or one text encoder."""

    label: str  # for people: "the UNet (`lora_unet_*`)"
    stems: frozenset[str]  # kohya's stems of every default target of the part
    layers: dict[str, Any]  # stem -> LoRA layer, in model order; empty when this run does not adapt the part

    @property
    def adapted(self) -> bool:
        return bool(self.layers)


@dataclass(frozen=True)
class InitFromResult:
    """What `load_lora_file_into` did with each part of the model (labels of `LoraPart`s)."""

    loaded: tuple[str, ...]  # parts whose LoRA layers now hold the file's weights
    kept_fresh: tuple[str, ...]  # trained parts the file has nothing for: they keep their fresh initialisation
    ignored: tuple[str, ...]  # parts the file has but this run does not adapt (`train_text_encoder = false`)

    @property
    def notes(self) -> list[str]:
        """One line per way the file and the run differ, for the user; empty when the file fits exactly."""
        notes = []
        if self.kept_fresh:
            notes.append(
                f"the `[network] init_from` file has no layers for {_and_list(self.kept_fresh)}: "
                "those LoRA layers start fresh, as in a new run"
            )
        if self.ignored:
            notes.append(
                f"the `[network] init_from` file's layers for {_and_list(self.ignored)} are ignored: "
                "this run does not train the text encoders (`[network] train_text_encoder = false`)"
            )
        return notes


def _and_list(labels: tuple[str, ...]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def lora_parts(model: LoadedModel) -> list[LoraPart]:
    """The UNet and each text encoder, with kohya's stems of all their default targets and their LoRA layers."""
    family = model.family
    unet_layers = {family.kohya_unet_name(path): layer for path, layer in _lora_layers(model.denoiser)}
    parts = [LoraPart("the UNet (`lora_unet_*`)", frozenset(unet_layers), unet_layers)]
    several = len(model.text_encoders) > 1
    for index, text_encoder in enumerate(model.text_encoders):
        layers = {family.kohya_text_encoder_name(index, path): layer for path, layer in _lora_layers(text_encoder)}
        stems = frozenset(layers)
        if not layers:  # a text encoder without LoRA still names its targets: a file's keys for it are known
            stems = frozenset(family.kohya_text_encoder_name(index, path) for path in text_encoder_lora_targets(text_encoder))
        name = f"text encoder {index + 1}" if several else "the text encoder"
        parts.append(LoraPart(f"{name} (`{family.text_encoder_prefixes[index]}_*`)", stems, layers))
    return parts


def load_lora_file_into(model: LoadedModel, path: Path) -> InitFromResult:
    """Copy a kohya-format LoRA file into the adapter `add_lora` injected (for `[network] init_from`).

    Whole parts, as kohya's --network_weights: for the UNet and each text encoder, the file holds
    either all of that part's layers (down and up; alpha optional) or none. A part the run trains
    that the file lacks keeps its fresh initialisation; a text encoder the run does not adapt
    (`train_text_encoder = false`) has its file keys ignored. The result says which parts were
    loaded, kept fresh or ignored, so the run can tell the user.

    A ModelFileError names the file and the first key that does not fit when: a key names no LoRA
    layer of this model, a part is partly present, a layer has another rank or shape, or the file
    has nothing for the parts the run trains. A file trained with another alpha is rescaled (its up
    weights times file alpha / adapter alpha), so its effect is unchanged; a file without alpha keys
    counts as alpha = rank, as the web UIs read it.
    """
    import torch

    path = Path(path)
    file_tensors = _read_lora_file(path)
    parts = lora_parts(model)
    in_file = _parts_in_file(path, file_tensors, parts, model.family.label)
    loaded = [part for part in in_file if part.adapted]
    for part in loaded:
        _check_whole_part(path, file_tensors, part)
    if not loaded:
        raise _nothing_to_load(path, parts, in_file)
    # Check every layer before changing any, so a bad file leaves the adapter as it was.
    weights = [
        (layer, *_file_weights(path, file_tensors, stem, layer)) for part in loaded for stem, layer in part.layers.items()
    ]
    with torch.no_grad():
        for layer, down, up in weights:
            layer.lora_A[ADAPTER].weight.copy_(down)
            layer.lora_B[ADAPTER].weight.copy_(up)
    return InitFromResult(
        loaded=tuple(part.label for part in loaded),
        kept_fresh=tuple(part.label for part in parts if part.adapted and part not in in_file),
        ignored=tuple(part.label for part in in_file if not part.adapted),
    )


def _file_weights(path: Path, file_tensors: dict[str, torch.Tensor], stem: str, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for one layer from the file, shape-checked, up rescaled to the adapter's alpha."""
    down_weight = layer.lora_A[ADAPTER].weight
    up_weight = layer.lora_B[ADAPTER].weight
    down = _fitting_tensor(path, file_tensors, f"{stem}.{SUFFIX_DOWN}", down_weight)
    up = _fitting_tensor(path, file_tensors, f"{stem}.{SUFFIX_UP}", up_weight)
    alpha_key = f"{stem}.{SUFFIX_ALPHA}"
    file_alpha = file_tensors[alpha_key].item() if alpha_key in file_tensors else down.shape[0]
    adapter_alpha = float(layer.lora_alpha[ADAPTER])
    # delta = up @ down * alpha / rank: keep it when the adapter's alpha differs from the file's.
    up = up.double() * (file_alpha / adapter_alpha)
    return down.to(down_weight.dtype), up.to(up_weight.dtype)


def _read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    fix = "give a LoRA .safetensors file written by lora-wizard or kohya sd-scripts, or remove `[network] init_from`"
    if not path.is_file():
        raise ModelFileError("no LoRA file here", where=path, fix=fix)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read this LoRA file: {exc}", where=path, fix=fix) from None


NOT_THIS_MODEL_FIX = "start from a LoRA trained on this model family with kohya's default LoRA layers, or remove `[network] init_from`"


def _stem_of(key: str) -> str | None:
    """The layer stem of a kohya key (`<stem>.lora_down.weight`, ...); None for any other key."""
    for suffix in (SUFFIX_DOWN, SUFFIX_UP, SUFFIX_ALPHA):
        if key.endswith(f".{suffix}"):
            return key.removesuffix(f".{suffix}")
    return None


def _parts_in_file(path: Path, file_tensors: dict[str, torch.Tensor], parts: list[LoraPart], family_label: str) -> list[LoraPart]:
    """The parts the file has keys for, in model order; a key naming no LoRA layer of any part is an error."""
    stems_in_file = {_stem_of(key) for key in file_tensors}
    known_stems = frozenset().union(*(part.stems for part in parts))
    unexpected = sorted(key for key in file_tensors if _stem_of(key) not in known_stems)
    if unexpected:
        raise ModelFileError(
            f"this LoRA does not fit the model: key `{unexpected[0]}` names no LoRA layer of this {family_label} model "
            f"({len(unexpected)} such keys)",
            where=path,
            fix=NOT_THIS_MODEL_FIX,
        )
    return [part for part in parts if part.stems & stems_in_file]


def _check_whole_part(path: Path, file_tensors: dict[str, torch.Tensor], part: LoraPart) -> None:
    """A part the file has keys for has the down and up weights of every one of its layers."""
    expected = {f"{stem}.{suffix}" for stem in part.layers for suffix in (SUFFIX_DOWN, SUFFIX_UP)}
    missing = sorted(expected - set(file_tensors))
    if missing:
        raise ModelFileError(
            f"this LoRA does not fit the model: it has layers for {part.label} but key `{missing[0]}` is missing "
            f"({len(missing)} missing keys; a part is loaded whole or not at all)",
            where=path,
            fix=NOT_THIS_MODEL_FIX,
        )


def _nothing_to_load(path: Path, parts: list[LoraPart], in_file: list[LoraPart]) -> ModelFileError:
    """The error for a file with no layers of any part this run trains."""
    trained = _and_list(tuple(part.label for part in parts if part.adapted))
    if not in_file:
        return ModelFileError(
            f"this LoRA holds no LoRA layers, nothing to start {trained} from",
            where=path,
            fix="give a LoRA .safetensors file written by lora-wizard or kohya sd-scripts, or remove `[network] init_from`",
        )
    return ModelFileError(
        f"this LoRA has layers only for {_and_list(tuple(part.label for part in in_file))}, "
        f"none for what this run trains: {trained}",
        where=path,
        fix="set `[network] train_text_encoder = true` to train the parts it has, "
        "start from a LoRA with UNet layers, or remove `[network] init_from`",
    )


def _fitting_tensor(path: Path, file_tensors: dict[str, torch.Tensor], key: str, weight: torch.Tensor) -> torch.Tensor:
    tensor = file_tensors[key]
    if tuple(tensor.shape) == tuple(weight.shape):
        return tensor
    rank_axis = 1 if key.endswith(SUFFIX_UP) else 0
    if tensor.ndim == weight.ndim and tensor.shape[rank_axis] != weight.shape[rank_axis]:
        raise ModelFileError(
            f"this LoRA has rank {tensor.shape[rank_axis]} but `[network] dim` is {weight.shape[rank_axis]} "
            f"(first differing key `{key}`)",
            where=path,
            fix=f"set `[network] dim = {tensor.shape[rank_axis]}` to continue from this file, or remove `[network] init_from`",
        )
    raise ModelFileError(
        f"this LoRA does not fit the model: key `{key}` has shape {list(tensor.shape)}, the model needs {list(weight.shape)}",
        where=path,
        fix="start from a LoRA trained on this base model family, or remove `[network] init_from`",
    )
