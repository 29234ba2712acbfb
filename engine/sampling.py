"""Sample images during training, from the training loop's live, LoRA-wrapped model: their seeds,
their file names, and making them without changing what training does next.

The other jobs around images live beside this one: samplers (engine/samplers.py), prompt lines
(engine/prompts.py), `<lora:>` tags (engine/lora_tags.py), pipelines (engine/pipelines.py),
making images (engine/image_maker.py), PNG files (engine/png_files.py), `generate` and its weight
grid (engine/generate.py), regularization images (engine/reg_images.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.image_maker import ImageMaker
from engine.png_files import image_parameters, save_image
from engine.prompts import SEED_RANGE, SamplePrompt
from engine.seeds import derive_seed

if TYPE_CHECKING:
    from engine.families import LoadedModel


def sample_seed(run_seed: int, index: int, prompt: SamplePrompt) -> int:
    """A prompt's own seed (`--d`), else one derived from the run's seed and the prompt's position."""
    return prompt.seed if prompt.seed is not None else derive_seed(run_seed, "sample", index) % SEED_RANGE


def sample_file_name(name: str, index: int, seed: int, *, step: int, epoch: int | None = None) -> str:
    """kohya's sample name without its timestamp, so a rerun writes the same file:
    `{name}_e000002_00_{seed}.png` at an epoch's end, `{name}_000100_00_{seed}.png` at a step."""
    position = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{name}_{position}_{index:02d}_{seed}.png"


def sample_images(
    model: LoadedModel,
    prompts: list[SamplePrompt],
    out_dir: Path,
    *,
    name: str,
    step: int,
    epoch: int | None = None,
    seed: int = 0,
    clip_skip: int = 1,
    text_encoders_in_use: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> list[Path]:
    """Sample images from the model as it is now (the training loop's live, LoRA-wrapped model).

    Runs under no_grad in eval mode and restores every module's train flag and the global RNG state
    afterwards, so training continues exactly as it would have without samples. The modules stay on
    their devices and dtypes. Returns the files written, one per prompt, in prompt order.

    Every prompt is encoded first, inside `text_encoders_in_use` (the training loop brings frozen
    text encoders from host memory for it), so they need not be on the GPU while the UNet and the
    VAE make the images: for SDXL 1.5 GB less at the VAE's decoding peak.
    """
    import torch

    maker = ImageMaker(model, clip_skip=clip_skip)
    cuda_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    written = []
    with torch.random.fork_rng(devices=cuda_devices):
        with text_encoders_in_use():
            conditioning = [maker.prompt_embeds(prompt) for prompt in prompts]
        for index, (prompt, embeds) in enumerate(zip(prompts, conditioning, strict=True)):
            image_seed = sample_seed(seed, index, prompt)
            image = maker.images(prompt, [image_seed], embeds)[0]
            path = Path(out_dir) / sample_file_name(name, index, image_seed, step=step, epoch=epoch)
            written.append(save_image(path, image, image_parameters(prompt, image_seed, model_name=Path(model.source).name)))
    return written
