"""Image files: PNGs written atomically, with the generation settings in AUTOMATIC1111's
`parameters` text chunk (its PNG Info tab reads it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from engine.files import atomic_write_bytes
from engine.prompts import SamplePrompt
from engine.samplers import SAMPLERS

if TYPE_CHECKING:
    from PIL import Image


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    """The PNG of `image`, with AUTOMATIC1111's `parameters` text chunk (its PNG Info tab reads it)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def image_parameters(prompt: SamplePrompt, seed: int, *, text: str | None = None, model_name: str | None = None) -> str:
    """The generation settings in AUTOMATIC1111's format; `text` is the prompt as typed (with its LoRA tags)."""
    lines = [text if text is not None else prompt.prompt]
    if prompt.negative:
        lines.append(f"Negative prompt: {prompt.negative}")
    settings = [
        f"Steps: {prompt.steps}",
        f"Sampler: {SAMPLERS[prompt.sampler].label}",
        f"CFG scale: {prompt.cfg:g}",
        f"Seed: {seed}",
        f"Size: {prompt.width}x{prompt.height}",
    ]
    if model_name:
        settings.append(f"Model: {model_name}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def save_image(path: Path, image: Image.Image, parameters: str | None = None) -> Path:
    """Write a PNG atomically: a killed process never leaves half an image."""
    atomic_write_bytes(Path(path), png_bytes(image, parameters))
    return Path(path)
