"""Tag a folder of images and write their caption files (`lora-wizard dataset caption`).

    result = tag_folder(Path("train"), Tagger.load(), TagOptions(first_tags=("usu", "bear")))

Each caption is: the tags always added first (the instance token and class; by default, for an
image in a `<repeats>_<token> <class>` folder, that folder's token and class), then the
character tags the model scores at or above their threshold, then the general ones, highest
first; tags to drop left out, every tag once.

An existing caption is kept unless asked otherwise: `existing="replace"` writes the new tags in
its place, `existing="append"` adds the new tags after the old ones. Images are decoded in
threads while the model runs on the previous batch; an image that cannot be decoded is named in
the result and skipped, and the rest are tagged.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.caption_files import check_extension, find_images, read_tags, tag_key, unique_tags, write_tags
from engine.dataset import open_image, parse_concept_name
from engine.errors import DatasetError, UserError
from engine.tagger import ScoredTag, Tagger, tag_text

if TYPE_CHECKING:
    import numpy as np

Existing = Literal["keep", "replace", "append"]
EXISTING_CHOICES: tuple[Existing, ...] = ("keep", "replace", "append")
DEFAULT_GENERAL_THRESHOLD = 0.35
DEFAULT_CHARACTER_THRESHOLD = 0.85
DEFAULT_BATCH_SIZE = 8
DECODE_THREADS = 4

Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class TagOptions:
    general_threshold: float = DEFAULT_GENERAL_THRESHOLD
    character_threshold: float = DEFAULT_CHARACTER_THRESHOLD
    first_tags: tuple[str, ...] = ()  # empty: each concept folder's token and class
    drop_tags: tuple[str, ...] = ()
    underscores_to_spaces: bool = True
    caption_extension: str = ".txt"
    existing: Existing = "keep"
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"the {name.replace('_', ' ')} {value} is not between 0 and 1", fix="e.g. 0.35 (general), 0.85 (character)")
        if self.existing not in EXISTING_CHOICES:
            raise UserError(f"existing captions: `{self.existing}` is not one of {', '.join(EXISTING_CHOICES)}")
        if self.batch_size < 1:
            raise UserError(f"the batch size {self.batch_size} must be 1 or more")
        check_extension(self.caption_extension)


@dataclass
class TagResult:
    images: int = 0  # found
    written: list[Path] = field(default_factory=list)  # caption files written (new, replaced or appended to)
    kept: list[Path] = field(default_factory=list)  # images whose existing caption was kept
    untagged: list[Path] = field(default_factory=list)  # images given no tag at all: no file written
    failed: list[DatasetError] = field(default_factory=list)  # images that could not be decoded


def folder_first_tags(image: Path) -> tuple[str, ...]:
    """`train/20_usu bear/a.png` -> ("usu", "bear"): the token, then the class (the check's reading
    of a concept folder's prompt); () outside a concept folder."""
    parsed = parse_concept_name(image.parent.name)
    if parsed is None:
        return ()
    words = parsed[1].split()
    return (words[0], " ".join(words[1:])) if len(words) > 1 else (words[0],)


def caption_tags(scored: list[ScoredTag], first: tuple[str, ...], options: TagOptions) -> list[str]:
    """The caption's tags: the first ones, then the chosen ones, without the dropped ones."""
    dropped = {tag_key(tag) for tag in options.drop_tags}
    chosen = [tag_text(tag.name, underscores_to_spaces=options.underscores_to_spaces) for tag in scored]
    return unique_tags([tag for tag in (*first, *chosen) if tag_key(tag) not in dropped])


def merged(existing: list[str] | None, new: list[str], how: Existing) -> list[str]:
    if how == "append" and existing:
        return unique_tags([*existing, *new])
    return new


def tag_folder(folder: Path, tagger: Tagger, options: TagOptions, progress: Progress | None = None) -> TagResult:
    """Tag every image of `folder` (flat, a concept folder or a training root)."""
    images = find_images(folder)
    result = TagResult(images=len(images))
    todo = []
    for image in images:
        existing = read_tags(image, options.caption_extension)
        if existing and options.existing == "keep":
            result.kept.append(image)
        else:
            todo.append((image, existing))
    done = len(result.kept)
    if progress:
        progress(done, len(images))
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        batches = [todo[i : i + options.batch_size] for i in range(0, len(todo), options.batch_size)]
        pending = _decode_batch(pool, tagger, batches[0]) if batches else []
        for index, batch in enumerate(batches):
            decoded, pending = pending, _decode_batch(pool, tagger, batches[index + 1]) if index + 1 < len(batches) else []
            _tag_batch(batch, [f.result() for f in decoded], tagger, options, result)
            done += len(batch)
            if progress:
                progress(done, len(images))
    return result


def _decode_batch(pool: ThreadPoolExecutor, tagger: Tagger, batch: list[tuple[Path, list[str] | None]]) -> list[Future]:
    return [pool.submit(_model_input, tagger, image) for image, _ in batch]


def _model_input(tagger: Tagger, image: Path) -> np.ndarray | DatasetError:
    try:
        with open_image(image, draft=(tagger.size, tagger.size)) as decoded:
            return tagger.preprocess(decoded)
    except DatasetError as exc:
        return exc
    except Exception as exc:  # Pillow's plugins raise more than they document on damaged files
        return DatasetError(f"the image cannot be decoded ({type(exc).__name__}: {exc})", where=image, fix="re-export the image or remove it")


def _tag_batch(batch: list[tuple[Path, list[str] | None]], inputs: list, tagger: Tagger, options: TagOptions, result: TagResult) -> None:
    import numpy as np

    good = [(item, array) for item, array in zip(batch, inputs, strict=True) if not isinstance(array, DatasetError)]
    result.failed += [array for array in inputs if isinstance(array, DatasetError)]
    if not good:
        return
    scores = tagger.predict(np.stack([array for _, array in good]))
    for ((image, existing), _), image_scores in zip(good, scores, strict=True):
        scored = tagger.vocabulary.select(image_scores, general=options.general_threshold, character=options.character_threshold)
        first = options.first_tags or folder_first_tags(image)
        tags = merged(existing, caption_tags(scored, first, options), options.existing)
        if not tags:  # nothing scored high enough: an existing caption stays, no empty file is made
            result.untagged.append(image)
            continue
        write_tags(image, options.caption_extension, tags)
        result.written.append(image.with_suffix(options.caption_extension))
