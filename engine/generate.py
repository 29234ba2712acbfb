"""`lora-wizard generate`'s images: a prompt whose `<lora:name:weight>` tags name the LoRAs, one
image a seed; or the web UI's X/Y plot over one LoRA's weight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import UserError
from engine.image_maker import ImageMaker
from engine.lora_tags import LORA_TAG_EXAMPLE, parse_lora_tags, resolve_lora_files
from engine.png_files import image_parameters
from engine.prompts import SamplePrompt

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    parameters: str  # AUTOMATIC1111's PNG info


def generate(
    maker: ImageMaker, text: str, prompt: SamplePrompt, seeds: list[int], *, lora_dir: Path | None = None
) -> list[GeneratedImage]:
    """Images for a prompt that may name LoRAs with `<lora:name:weight>` tags, one per seed.

    `text` is the prompt as typed; `prompt` carries the other settings (its own `prompt` is replaced
    by `text` without the tags). LoRA names are looked up in `lora_dir` (default: the current folder).
    """
    clean, tags = parse_lora_tags(text)
    maker.load_loras(resolve_lora_files([name for name, _ in tags], lora_dir or Path.cwd()))
    maker.set_lora_weights(dict(tags))
    prompt = replace(prompt, prompt=clean)
    model_name = Path(maker.model.source).name
    return [
        GeneratedImage(image, seed, image_parameters(prompt, seed, text=text, model_name=model_name))
        for seed, image in zip(seeds, maker.images(prompt, seeds), strict=True)
    ]


@dataclass
class WeightGrid:
    image: Image.Image  # the whole grid: a label row, then one row of cells per seed
    lora: str
    weights: list[float]
    seeds: list[int]
    cells: list[list[Image.Image]]  # cells[row][column]: the unlabelled image of seed `row` at weight `column`
    label_height: int


def weight_grid(
    maker: ImageMaker, text: str, prompt: SamplePrompt, weights: list[float], seeds: list[int], *, lora_dir: Path | None = None
) -> WeightGrid:
    """The web UI's X/Y plot over a LoRA's weight: one column per weight, labelled, one row per seed.

    The first LoRA tag of `text` is the one varied; any other tags keep their weights. Each cell is an
    image at the prompt's size, exactly as `generate` makes it at that weight.
    """
    clean, tags = parse_lora_tags(text)
    if not tags:
        raise UserError("a weight grid needs a LoRA in the prompt", fix=f"add a tag like `{LORA_TAG_EXAMPLE}` to the prompt")
    if not weights:
        raise UserError("a weight grid needs at least one weight", fix="e.g. --weights 0,0.25,0.5,0.75,1")
    maker.load_loras(resolve_lora_files([name for name, _ in tags], lora_dir or Path.cwd()))
    varied, fixed = tags[0][0], dict(tags[1:])
    prompt = replace(prompt, prompt=clean)
    cells: list[list[Image.Image]] = [[] for _ in seeds]
    for weight in weights:
        maker.set_lora_weights({**fixed, varied: weight})
        for row, seed in enumerate(seeds):  # one image a call: a batch would round differently from `generate`
            cells[row].append(maker.images(prompt, [seed])[0])
    labels = [f"{varied}: {weight:g}" for weight in weights]
    image, label_height = _grid_image(cells, labels, prompt.width, prompt.height)
    return WeightGrid(image, varied, list(weights), list(seeds), cells, label_height)


def _grid_image(cells: list[list[Image.Image]], labels: list[str], width: int, height: int) -> tuple[Image.Image, int]:
    """Cells side by side under a row of labels (one per column), as the web UI's X/Y plot lays them out."""
    from PIL import Image, ImageDraw, ImageFont

    font_size = max(10, min(width, 512) // 16)
    font = ImageFont.load_default(size=font_size)
    label_height = font_size * 2
    grid = Image.new("RGB", (width * len(labels), label_height + height * len(cells)), "white")
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(labels):
        draw.text((column * width + width // 2, label_height // 2), label, fill="black", font=font, anchor="mm")
    for row, images in enumerate(cells):
        for column, image in enumerate(images):
            grid.paste(image, (column * width, label_height + row * height))
    return grid, label_height
