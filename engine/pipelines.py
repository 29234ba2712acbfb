"""diffusers pipelines assembled from a `LoadedModel`'s own components (no second load from disk),
one builder per model family (PIPELINE_BUILDERS: a new family adds its own), the scheduler of each
sampler, and the libraries' chatter kept out of the user's terminal.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from engine.errors import UserError
from engine.samplers import DEFAULT_SAMPLER, SAMPLERS, sampler_key

if TYPE_CHECKING:
    from engine.families import LoadedModel


def build_scheduler(model: LoadedModel, sampler: str) -> Any:
    """A fresh diffusers scheduler for `sampler`, built from the model's own scheduler config
    (its betas, timestep count and prediction type), so v-prediction models sample correctly."""
    import diffusers

    spec = SAMPLERS[sampler_key(sampler)]
    scheduler_class = getattr(diffusers, spec.scheduler)
    with quiet_libraries():  # the training scheduler's extra config keys are reported, not needed
        return scheduler_class.from_config(model.objective.scheduler.config, **spec.options)


def is_flux(model: LoadedModel) -> bool:
    from engine.families.flux import Flux1

    return isinstance(model.family, Flux1)


def build_pipeline(model: LoadedModel) -> Any:
    """The model family's diffusers pipeline on the model's own modules, progress bars off."""
    builder = _build_flux_pipeline if is_flux(model) else PIPELINE_BUILDERS.get(model.family.name)
    if builder is None:
        raise UserError(f"making images with {model.family.label} models is not supported yet", where=model.source)
    pipeline = builder(model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _build_flux_pipeline(model: LoadedModel) -> Any:
    """FLUX.1's pipeline, every variant (engine/families/flux_sampling.py)."""
    from engine.families.flux_sampling import build_flux_pipeline

    with quiet_libraries():
        return build_flux_pipeline(model)


def _build_sd_pipeline(model: LoadedModel) -> Any:
    """diffusers' StableDiffusionPipeline (SD 1.x and 2.x) on the model's own modules, without the
    safety checker."""
    from accelerate.utils import extract_model_from_parallel

    with quiet_libraries():
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=extract_model_from_parallel(model.text_encoders[0]),
            tokenizer=model.tokenizers[0],
            unet=extract_model_from_parallel(model.denoiser),
            scheduler=build_scheduler(model, DEFAULT_SAMPLER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def _build_sdxl_pipeline(model: LoadedModel) -> Any:
    """diffusers' StableDiffusionXLPipeline on the model's own modules, without the invisible watermark
    (it needs the extra invisible-watermark package, which the project does not install)."""
    from accelerate.utils import extract_model_from_parallel

    with quiet_libraries():
        from diffusers import StableDiffusionXLPipeline

        first, second = (extract_model_from_parallel(encoder) for encoder in model.text_encoders)
        return StableDiffusionXLPipeline(
            vae=model.vae,
            text_encoder=first,
            text_encoder_2=second,
            tokenizer=model.tokenizers[0],
            tokenizer_2=model.tokenizers[1],
            unet=extract_model_from_parallel(model.denoiser),
            scheduler=build_scheduler(model, DEFAULT_SAMPLER),
            add_watermarker=False,
        )


# The pipeline of each model family by the family's name (FLUX.1's variants: `is_flux`); a family
# without one cannot make images yet.
PIPELINE_BUILDERS: dict[str, Callable[[LoadedModel], Any]] = {
    "sd1": _build_sd_pipeline,
    "sd2": _build_sd_pipeline,
    "sdxl": _build_sdxl_pipeline,
}


@contextlib.contextmanager
def quiet_libraries(level: int = logging.ERROR) -> Iterator[None]:
    """diffusers and transformers report ignored config keys and base weights missing from a LoRA file at
    warning level; neither is a problem here, and neither belongs in the user's terminal."""
    import diffusers
    import transformers

    old = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(old[0])
        transformers.utils.logging.set_verbosity(old[1])


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers draws a progress bar for every model it loads; the engine prints nothing of its own."""
    import transformers

    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()
