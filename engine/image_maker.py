"""Images from a base model, with or without LoRAs: one code path makes every image (samples during
training, `generate`, regularization images).

A diffusers pipeline on the model's own modules (engine/pipelines.py), the prompt encoded by the
model family (so clip skip works as in training), the initial noise and every sampler draw from a
CPU `torch.Generator` seeded per image (the same bytes on a rerun, whatever the device), and the
latents decoded by the VAE in its own dtype. LoRAs load with diffusers' `load_lora_weights`, or for
LoHa, LoKr and DoRA files (which diffusers does not read) by engine.network.readback into peft
layers of their type.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelFileError
from engine.pipelines import build_pipeline, build_scheduler, is_flux, no_progress_bars, quiet_libraries
from engine.prompts import SamplePrompt

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from engine.families import LoadedModel


def inference_device(requested: str | None = None) -> torch.device:
    """The device to generate on: `requested`, else CUDA, else Apple's MPS, else the CPU."""
    import torch

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA; fp32 elsewhere (CPUs have no fast fp16, and MPS fp16 is not reliable for every op)."""
    import torch

    return torch.float16 if device.type == "cuda" else torch.float32


class ImageMaker:
    """Makes images with a LoadedModel's own modules, and the LoRAs loaded into them.

    Works on whatever devices and dtypes the modules are on, so the training loop can sample from its
    live, LoRA-wrapped model. For a model loaded only to make images, use `ImageMaker.from_path`.
    """

    def __init__(self, model: LoadedModel, *, clip_skip: int = 1):
        self.model = model
        self.clip_skip = clip_skip
        self.flux = is_flux(model)  # FluxPipeline: packed latents, no negative prompt, its flow scheduler
        self.pipeline = build_pipeline(model)
        self.adapters: dict[str, str] = {}  # LoRA name -> peft adapter name
        self.own_adapters: set[str] = set()  # adapters of LyCORIS / DoRA files, loaded by engine.network.readback
        self._loads = 0  # adapters ever loaded: each gets a new name, even after a failed load

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        tokenizer: str | Path | None = None,
        prediction: str = "auto",
        clip_skip: int = 1,
        vae: str | Path | None = None,
        flux: Any = None,
    ) -> ImageMaker:
        """Load a base model (diffusers folder or single file) for inference: eval mode, fp16 on CUDA.
        `vae` (a folder or file, as `[model] vae`) replaces the model's own VAE."""
        import torch

        from engine.families import load_base_model

        with no_progress_bars():
            model = load_base_model(path, prediction=prediction, tokenizer=tokenizer, vae=vae, flux=flux)
        target = inference_device(device)
        dtype = inference_dtype(target)
        # The base model's VAE stays fp32 (SD's, SDXL's above all, can overflow in fp16); a VAE given
        # in its place is taken to be fp16-safe, as training takes it.
        vae_dtype = dtype if vae is not None else torch.float32
        with quiet_libraries():  # diffusers warns about any dtype cast, even of models with nothing to keep in fp32
            for module in (model.denoiser, *model.text_encoders):
                module.to(target, dtype=dtype).eval().requires_grad_(False)
            model.vae.to(target, dtype=vae_dtype).eval().requires_grad_(False)
        return cls(model, clip_skip=clip_skip)

    # --- LoRAs

    def load_loras(self, files: dict[str, Path]) -> None:
        """Load kohya-format LoRA files (name -> path) as separate adapters, all inactive until weighted."""
        from engine.network.readback import diffusers_reads, load_network_file

        for name, path in files.items():
            if name in self.adapters:
                continue
            adapter = f"lora{self._loads}"  # peft adapter names may not contain dots; file names may
            self._loads += 1
            try:
                with quiet_libraries(logging.CRITICAL), no_progress_bars(), warnings.catch_warnings():
                    # peft warns that a second adapter makes several adapters: that is the point here.
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    if diffusers_reads(path):
                        self.pipeline.load_lora_weights(self._lora_source(path), adapter_name=adapter)
                    else:  # LoHa, LoKr, DoRA: diffusers does not read them; peft layers of their own type do
                        load_network_file(self.model, path, adapter)
                        self.own_adapters.add(adapter)
            except ModelFileError:
                self._discard(adapter)
                raise
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                self._discard(adapter)
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                raise ModelFileError(
                    f"this LoRA does not load into the base model: {' '.join(lines[:2])[:300]}", where=path, fix=LORA_FAMILY_FIX
                ) from None
            self.adapters[name] = adapter
            self._check_every_layer_loaded(path, adapter)
        self.set_lora_weights({})

    def _lora_source(self, path: Path) -> Any:
        """What `load_lora_weights` reads: the file, or for FLUX.1 the file split back onto diffusers'
        layers (diffusers' kohya FLUX converter only knows FLUX.1's full width)."""
        if not self.flux:
            return str(path)
        from safetensors.torch import load_file

        from engine.families.flux_sampling import kohya_to_diffusers

        converted, unmatched = kohya_to_diffusers(load_file(path), self.model.denoiser, self.model.text_encoders[0])
        if unmatched:
            raise ValueError(f"{len(unmatched)} of its modules name nothing in this model, e.g. {unmatched[0]}")
        return converted

    def _check_every_layer_loaded(self, path: Path, adapter: str) -> None:
        """diffusers silently drops kohya layers that name no module of the model; count them instead."""
        from peft.tuners.lora import LoraLayer

        expected = _kohya_layer_count(path)
        parts = (self.model.denoiser, *self.model.text_encoders)
        loaded = sum(isinstance(m, LoraLayer) and adapter in m.lora_A for part in parts for m in part.modules())
        if expected is not None and loaded < expected:
            self._discard(adapter)
            raise ModelFileError(
                f"only {loaded} of the {expected} layers of this LoRA match the base model; the rest would be ignored",
                where=path,
                fix=LORA_FAMILY_FIX,
            )

    def _discard(self, adapter: str) -> None:
        """Take a LoRA that failed to load fully back out of the model, so the images stay right."""
        self.adapters = {name: a for name, a in self.adapters.items() if a != adapter}
        if adapter in self.own_adapters:
            from engine.network.readback import remove_adapter

            self.own_adapters.discard(adapter)
            remove_adapter(self.model, adapter)
            return
        if any(adapter in names for names in self.pipeline.get_list_adapters().values()):
            self.pipeline.delete_adapters(adapter)

    def set_lora_weights(self, weights: dict[str, float]) -> None:
        """Activate the named LoRAs at their weights; every other loaded LoRA is off.

        A LoRA at weight 0 is switched off rather than scaled by 0, so it gives exactly the base
        model's output (no rounding from adding a zero delta).
        """
        if not self.adapters:
            return
        active = {self.adapters[name]: weight for name, weight in weights.items() if weight != 0}
        own = {adapter: weight for adapter, weight in active.items() if adapter in self.own_adapters}
        active = {adapter: weight for adapter, weight in active.items() if adapter not in own}
        if set(self.adapters.values()) - self.own_adapters:  # diffusers' adapters (its calls reach every peft layer)
            if not active:
                self.pipeline.disable_lora()
            else:
                self.pipeline.enable_lora()
                self.pipeline.set_adapters(list(active), adapter_weights=list(active.values()))
        if self.own_adapters:
            self._weigh_own_adapters(own)

    def _weigh_own_adapters(self, weights: dict[str, float]) -> None:
        """Activate the readback adapters in `weights` at their weights (peft's set_scale); the rest are off."""
        from engine.network.adapters import adapter_layers

        for adapter in self.own_adapters:
            for part in (self.model.denoiser, *self.model.text_encoders):
                for _, layer in adapter_layers(part, adapter):
                    on = [name for name in weights if name in layer.r]
                    layer.enable_adapters(bool(on))
                    layer.set_adapter(on or [adapter])
                    for name in on:
                        layer.set_scale(name, weights[name])

    # --- images

    def images(self, prompt: SamplePrompt, seeds: list[int], embeds: dict[str, torch.Tensor] | None = None) -> list[Image.Image]:
        """One image per seed (a batch), each from its own CPU generator: the same seed gives the same image.
        `embeds`: the prompt's conditioning from `prompt_embeds`, when the text encoders ran earlier."""
        import torch

        model = self.model
        pipeline = self.pipeline
        if not self.flux:  # FLUX.1 keeps its own flow-matching scheduler
            pipeline.scheduler = build_scheduler(model, prompt.sampler)
        with torch.no_grad(), _eval_mode(model):
            embeds = embeds if embeds is not None else self._prompt_embeds(prompt)
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
            latents = pipeline(
                **embeds,
                num_images_per_prompt=len(seeds),
                width=prompt.width,
                height=prompt.height,
                num_inference_steps=prompt.steps,
                guidance_scale=prompt.cfg,
                generator=generators,
                output_type="latent",
                return_dict=False,
            )[0]
            if self.flux:
                from engine.families.flux_sampling import decode

                return decode(pipeline, latents, prompt.width, prompt.height)
            return self._decode(latents)

    def prompt_embeds(self, prompt: SamplePrompt) -> dict[str, torch.Tensor]:
        """The prompt's conditioning for `images`: the text encoders' whole share of the work."""
        import torch

        with torch.no_grad(), _eval_mode(self.model):
            return self._prompt_embeds(prompt)

    def _encode(self, text: str) -> dict[str, torch.Tensor]:
        """The UNet's text conditioning, as the training loop computes it (the family's clip skip)."""
        model = self.model
        return model.family.encode(model, model.family.tokenize(model, [text]), self.clip_skip)

    def _prompt_embeds(self, prompt: SamplePrompt) -> dict[str, torch.Tensor]:
        """The pipeline's prompt arguments: the context of both prompts, and for SDXL the pooled text
        (the pipeline adds SDXL's size conditioning for an uncropped image of the requested size)."""
        unet_dtype = _dtype_of(self.model.denoiser)
        if self.flux:
            from engine.families.flux_sampling import pipeline_embeds

            return pipeline_embeds(self._encode(prompt.prompt), _dtype_of(self.model.text_encoders[0]))
        positive, negative = self._encode(prompt.prompt), self._encode(prompt.negative)
        embeds = {
            "prompt_embeds": positive["encoder_hidden_states"].to(unet_dtype),
            "negative_prompt_embeds": negative["encoder_hidden_states"].to(unet_dtype),
        }
        if "text_embeds" in positive:
            embeds["pooled_prompt_embeds"] = positive["text_embeds"].to(unet_dtype)
            embeds["negative_pooled_prompt_embeds"] = negative["text_embeds"].to(unet_dtype)
        return embeds

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.model.vae
        latents = latents.to(device=_device_of(vae), dtype=_dtype_of(vae)) / vae.config.scaling_factor
        pixels = vae.decode(latents, return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(pixels.float(), output_type="pil")


LORA_FAMILY_FIX = "use a LoRA trained for this model family (SD 1.x LoRAs for SD 1.x models, and so on)"


def _kohya_layer_count(path: Path) -> int | None:
    """How many layers a kohya-format file adapts (its `.lora_down.weight` keys); None for other formats."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    if not keys or not all(key.startswith(("lora_unet_", "lora_te")) for key in keys):
        return None
    return sum(key.endswith(".lora_down.weight") for key in keys)


def _dtype_of(module: Any) -> torch.dtype:
    return next(module.parameters()).dtype


def _device_of(module: Any) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: LoadedModel) -> Iterator[None]:
    """Eval mode for every module while images are made; each module's own train flag restored after."""
    modules = [m for part in (model.denoiser, model.vae, *model.text_encoders) for m in part.modules()]
    flags = [m.training for m in modules]
    for module in modules:
        module.training = False
    try:
        yield
    finally:
        for module, flag in zip(modules, flags, strict=True):
            module.training = flag
