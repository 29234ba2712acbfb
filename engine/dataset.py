"""The dataset in kohya's DreamBooth convention, and the images as the model sees them.

    train/                 the training root (given to the tool)
      20_usu bear/         <repeats>_<instance token> <class>: 20 passes per epoch, prompt "usu bear"
        001.png
        001.txt            optional caption; replaces the folder's prompt
    reg/                   the regularization root
      1_bear/              <repeats>_<class>

An epoch sees every training image `repeats` times, plus as many regularization images as that
(kohya repeats or cuts them to match). This module only plans and reads; it imports no torch
until images are turned into tensors.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import DatasetError
from engine.messages import Message

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CONCEPT_FOLDER = re.compile(r"^(\d+)_(.+)$")
EXAMPLE_FOLDER_NAME = "20_usu bear"
REEXPORT_FIX = Message("dataset.image.decode.fix", "re-export the image or remove it")
# The seed article: about 5x as many regularization images as training images (the check suggests
# it, `reg generate` and the Dataset step default to it).
REG_IMAGES_PER_TRAINING_IMAGE = 5


@dataclass(frozen=True)
class Example:
    """One image with the caption it is trained with."""

    path: Path
    caption: str
    is_reg: bool


@dataclass(frozen=True)
class Concept:
    """One `<repeats>_<prompt>` folder."""

    folder: Path
    repeats: int
    prompt: str
    examples: tuple[Example, ...]
    is_reg: bool


def dataset_name(concept: Concept, example: Example) -> str:
    """An image's name relative to its training or regularization root, with which of the two."""
    return f"{'reg' if concept.is_reg else 'train'}/{concept.folder.name}/{example.path.name}"


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def parse_concept_name(name: str) -> tuple[int, str] | None:
    """`"20_usu bear"` -> `(20, "usu bear")`; None when the name does not follow the convention."""
    match = CONCEPT_FOLDER.match(name)
    if not match or not match.group(2).strip():
        return None
    return int(match.group(1)), match.group(2).strip()


def read_caption(image: Path, extension: str, default: str) -> str:
    """The first line of the caption file next to `image`, or `default` when there is none."""
    caption_file = image.with_suffix(extension)
    if not caption_file.is_file():
        return default
    try:
        text = caption_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(
            Message("dataset.caption.not_utf8", "the caption file is not UTF-8 text"), where=caption_file, fix=Message("dataset.caption.not_utf8.fix", "save it as UTF-8"),
        ) from None
    except OSError as exc:
        raise DatasetError(Message("dataset.caption.unreadable", "cannot read the caption file: {error}", error=exc.strerror), where=caption_file) from None
    first_line = text.lstrip("\ufeff").splitlines()[0].strip() if text.strip() else ""
    if not first_line:
        raise DatasetError(
            Message("dataset.caption.empty", "the caption file is empty"),
            where=caption_file,
            fix=Message("dataset.caption.empty.fix", "write the caption on its first line, or delete the file to use the folder's prompt"),
        )
    return first_line


def _list(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DatasetError(f"cannot list this folder: {exc.strerror}", where=folder, fix="check its permissions") from None


def scan_root(root: Path, *, is_reg: bool, caption_extension: str = ".txt") -> list[Concept]:
    """The concept folders under a training or regularization root."""
    kind = "regularization" if is_reg else "training"
    example = "1_bear" if is_reg else EXAMPLE_FOLDER_NAME
    if not root.is_dir():
        raise DatasetError(f"the {kind} folder does not exist", where=root, fix="check the path")
    if parse_concept_name(root.name) and any(is_image(p) for p in _list(root)):
        raise DatasetError(
            f"this is a concept folder, not the {kind} root",
            where=root,
            fix=f"give the parent folder ({root.parent}), which holds folders like `{example}`",
        )
    concepts = []
    for folder in sorted(p for p in _list(root) if p.is_dir()):
        parsed = parse_concept_name(folder.name)
        if parsed is None:
            raise DatasetError(
                f"folder `{folder.name}` is not named <repeats>_<prompt>",
                where=folder,
                fix=f"rename it like `{example}` (repeats per epoch, underscore, prompt)",
            )
        repeats, prompt = parsed
        if repeats < 1:
            raise DatasetError(f"folder `{folder.name}` has 0 repeats", where=folder, fix=f"use 1 or more, e.g. `{example}`")
        images = sorted(p for p in _list(folder) if is_image(p))
        if not images:
            raise DatasetError(
                "this concept folder holds no images",
                where=folder,
                fix=f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder",
            )
        examples = tuple(Example(p, read_caption(p, caption_extension, prompt), is_reg) for p in images)
        concepts.append(Concept(folder, repeats, prompt, examples, is_reg))
    if not concepts:
        raise DatasetError(
            f"the {kind} folder holds no <repeats>_<prompt> folders",
            where=root,
            fix=f"put the images in a subfolder named like `{example}` and give this parent folder",
        )
    return concepts


@dataclass(frozen=True)
class DatasetPlan:
    """What one epoch trains on, with kohya's step arithmetic."""

    concepts: tuple[Concept, ...]
    reg_concepts: tuple[Concept, ...]
    reg_counts: tuple[int, ...]  # how often each regularization image appears per epoch

    def image_names(self) -> dict[Path, str]:
        """Each image's name within its dataset (`train/10_usu bear/01.png`, `reg/1_bear/01.png`):
        what the randomness of its latent is keyed by, so that a moved or copied dataset trains the
        same LoRA."""
        return {e.path: dataset_name(c, e) for c in (*self.concepts, *self.reg_concepts) for e in c.examples}

    @property
    def train_examples(self) -> list[Example]:
        return [e for c in self.concepts for e in c.examples]

    @property
    def reg_examples(self) -> list[Example]:
        return [e for c in self.reg_concepts for e in c.examples]

    @property
    def num_train_items(self) -> int:
        """Training images times their repeats: kohya's `num_train_images`."""
        return sum(len(c.examples) * c.repeats for c in self.concepts)

    @property
    def num_reg_items(self) -> int:
        return sum(self.reg_counts)

    @property
    def items_per_epoch(self) -> int:
        return self.num_train_items + self.num_reg_items

    def epoch_examples(self) -> list[Example]:
        """Every image as often as one epoch sees it, in a fixed order (the loop shuffles)."""
        items = [e for c in self.concepts for e in c.examples for _ in range(c.repeats)]
        items += [e for e, n in zip(self.reg_examples, self.reg_counts, strict=True) for _ in range(n)]
        return items

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.items_per_epoch / batch_size)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: per folder, how often each comma-separated tag occurs."""
        frequency: dict[str, dict[str, int]] = {}
        for concept in (*self.concepts, *self.reg_concepts):
            counts = Counter(tag.strip() for e in concept.examples for tag in e.caption.split(",") if tag.strip())
            frequency[concept.folder.name] = dict(counts)
        return frequency

    def dataset_dirs(self, *, reg: bool = False) -> dict[str, dict[str, int]]:
        """kohya's ss_dataset_dirs / ss_reg_dataset_dirs."""
        concepts = self.reg_concepts if reg else self.concepts
        return {c.folder.name: {"n_repeats": c.repeats, "img_count": len(c.examples)} for c in concepts}


def match_reg_counts(reg_concepts: list[Concept], num_train_items: int) -> list[int]:
    """kohya's rule: regularization images are repeated or cut so an epoch sees about as many of
    them as training items. A first pass takes each image with its folder's repeats; later passes
    add one repetition at a time until the training count is reached."""
    repeats = [c.repeats for c in reg_concepts for _ in c.examples]
    counts = [0] * len(repeats)
    if not repeats:
        return counts
    total, first_pass = 0, True
    while total < num_train_items:
        for i, folder_repeats in enumerate(repeats):
            step = folder_repeats if first_pass else 1
            counts[i] += step
            total += step
            if total >= num_train_items:
                break
        first_pass = False
    return counts


def plan_dataset(train_dir: Path, reg_dir: Path | None = None, *, caption_extension: str = ".txt") -> DatasetPlan:
    concepts = scan_root(train_dir, is_reg=False, caption_extension=caption_extension)
    reg_concepts = scan_root(reg_dir, is_reg=True, caption_extension=caption_extension) if reg_dir else []
    num_train_items = sum(len(c.examples) * c.repeats for c in concepts)
    return DatasetPlan(tuple(concepts), tuple(reg_concepts), tuple(match_reg_counts(reg_concepts, num_train_items)))


def open_image(path: Path, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image fully: EXIF rotation applied, transparency flattened onto white, RGB.
    `draft` lets a JPEG decode at a reduced scale no smaller than that size (the tagger's input
    is 448 px: decoding a 4000 px photo whole would cost more than tagging it)."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if draft is not None:
                    opened.draft("RGB", draft)
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DatasetError(
            Message("dataset.image.bomb", "the image is too large to decode safely (decompression bomb)"), where=path,
            fix=Message("dataset.image.bomb.fix", "resize it below 89 megapixels"),
        ) from None
    except PermissionError as exc:
        raise DatasetError(
            Message("dataset.image.unreadable", "cannot read the image: {error}", error=exc.strerror), where=path,
            fix=Message("dataset.image.unreadable.fix", "give yourself read permission, or remove the file"),
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(Message("dataset.image.decode", "the image cannot be decoded ({error})", error=str(exc)), where=path, fix=REEXPORT_FIX) from None
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")  # already a copy: no second one


def resize_and_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers width x height, then crop the centre."""
    from PIL import Image

    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))
