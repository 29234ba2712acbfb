"""Regularization images: the class prompt alone, made by the base model into kohya's `1_<class>`
folder, resumable image by image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.image_maker import ImageMaker
from engine.png_files import image_parameters, save_image
from engine.prompts import DEFAULT_CFG, DEFAULT_STEPS, SEED_RANGE, SamplePrompt
from engine.samplers import DEFAULT_SAMPLER
from engine.seeds import derive_seed

REG_REPEATS = 1  # kohya's `1_<class>`: reg images are repeated to match the training count anyway


@dataclass
class RegResult:
    folder: Path  # out_dir / 1_<class>
    written: list[Path]
    kept: list[Path]  # images already there, from an earlier (interrupted) call


def reg_folder(out_dir: Path, class_prompt: str) -> Path:
    """`out_dir/1_<class>`, kohya's regularization folder for the class."""
    class_prompt = class_prompt.strip()
    if not class_prompt or any(c in class_prompt for c in '/\\:*?"<>|') or class_prompt in (".", ".."):
        raise UserError(
            f"`{class_prompt}` cannot be a folder name",
            fix="give the class as a plain word or words, e.g. --class bear",
        )
    return Path(out_dir) / f"{REG_REPEATS}_{class_prompt}"


def reg_image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:04d}.png"


def default_reg_count(train_dir: Path) -> int:
    """The article's rule: 5 regularization images per training image (not counting repeats)."""
    from engine.dataset import REG_IMAGES_PER_TRAINING_IMAGE, plan_dataset

    return REG_IMAGES_PER_TRAINING_IMAGE * len(plan_dataset(Path(train_dir)).train_examples)


def generate_regularization(
    model: str | Path | ImageMaker,
    class_prompt: str,
    out_dir: Path,
    count: int,
    *,
    seed: int = 0,
    size: int | None = None,
    steps: int = DEFAULT_STEPS,
    cfg: float = DEFAULT_CFG,
    sampler: str = DEFAULT_SAMPLER,
    negative: str = "",
    batch_size: int = 1,
    device: str | None = None,
    tokenizer: str | Path | None = None,
    progress: Callable[[int, int, Path], None] | None = None,
) -> RegResult:
    """Regularization images of the class prompt alone, `out_dir/1_<class>/0000.png` ... `count`-1.

    Image `i` is seeded by (seed, i) and written atomically, so an interrupted call is resumed by
    calling again: the images already there are kept untouched and only the missing ones are made.
    `progress(done, total, path)` is called after each image written. `model` is a base model path, or
    an ImageMaker already holding one. `size` None: the model family's default resolution.
    """
    if count < 1:
        raise UserError(f"the number of regularization images must be at least 1 (got {count})", fix="e.g. --count 100")
    folder = reg_folder(out_dir, class_prompt)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(folder)
    paths = [reg_image_path(folder, index) for index in range(count)]
    missing = [index for index, path in enumerate(paths) if not path.exists()]
    kept = [path for path in paths if path.exists()]
    result = RegResult(folder, [], kept)
    if not missing:
        return result
    maker = model if isinstance(model, ImageMaker) else ImageMaker.from_path(model, device=device, tokenizer=tokenizer)
    side = size or maker.model.family.default_resolution
    prompt = SamplePrompt(class_prompt.strip(), negative, side, side, steps, cfg, None, sampler)
    model_name = Path(maker.model.source).name
    for start in range(0, len(missing), max(1, batch_size)):
        batch = missing[start : start + max(1, batch_size)]
        seeds = [derive_seed(seed, "reg", index) % SEED_RANGE for index in batch]
        for index, image_seed, image in zip(batch, seeds, maker.images(prompt, seeds), strict=True):
            path = save_image(reg_image_path(folder, index), image, image_parameters(prompt, image_seed, model_name=model_name))
            result.written.append(path)
            if progress:
                progress(len(kept) + len(result.written), count, path)
    return result


def _remove_stale_temp_files(folder: Path) -> None:
    """Temp files of atomic writes from a killed call (`.0003.png.<random>.tmp`): never complete images."""
    for path in folder.glob(".*.png.*.tmp"):
        path.unlink(missing_ok=True)
