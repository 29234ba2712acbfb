"""Build kohya's folder layout from a flat folder of images, without touching the originals.

    photos/                         ->   train/
      a.png  a.txt  b.jpg                  8_usu bear/    (hard links, or copies)
                                             a.png  a.txt  b.jpg

Files are hard-linked where the file system allows it (no extra space; deleting either name
leaves the other) and copied otherwise. The concept folder is built under a temporary name and
renamed into place, so an interrupted run leaves no half-filled folder. What the dataset check
would refuse (an image that does not decode, a caption file that cannot be read) is left out,
with its image or caption, and listed with why (`left_out`): the result passes the check.

Repeats, when not given: kohya users aim for about 100-200 image repeats per epoch. The rule
here is `repeats = round(150 / images)`, between 1 and 100, so an epoch sees about 150 images:
10 epochs (the seed article's) are then about 1,500 steps at batch size 1.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.checks.dataset import Problem, refused_files
from engine.dataset import is_image, parse_concept_name
from engine.errors import DatasetError

TARGET_ITEMS_PER_EPOCH = 150
MAX_REPEATS = 100
# Characters Windows does not allow in file names, and path separators.
FORBIDDEN_IN_NAMES = set('<>:"/\\|?*')


@dataclass(frozen=True)
class PreparedDataset:
    concept_folder: Path
    repeats: int
    images: int
    captions: int
    linked: int  # files hard-linked
    copied: int  # files copied (no hard links across file systems, or --copy)
    left_behind: tuple[Path, ...]  # files of the source folder that are neither images nor their captions
    # Images the dataset check would refuse (one that does not decode, a caption file that cannot
    # be read), each with why; left out with their caption files, so the result passes the check.
    left_out: tuple[Problem, ...] = ()


def choose_repeats(image_count: int) -> int:
    """Repeats that make an epoch about `TARGET_ITEMS_PER_EPOCH` images."""
    return max(1, min(MAX_REPEATS, round(TARGET_ITEMS_PER_EPOCH / max(1, image_count))))


def prepare_dataset(
    images_dir: str | Path,
    *,
    token: str,
    class_word: str,
    out: str | Path,
    repeats: int | None = None,
    caption_extension: str = ".txt",
    copy: bool = False,
) -> PreparedDataset:
    """Put the images of `images_dir` (and their caption files) into `out/<repeats>_<token> <class>/`."""
    images_dir, out = Path(images_dir), Path(out)
    prompt = f"{_checked_word(token, 'token', single=True)} {_checked_word(class_word, 'class')}"
    images = _source_images(images_dir)
    if repeats is not None and repeats < 1:
        raise DatasetError(f"repeats must be 1 or more, not {repeats}", fix="leave --repeats out to have it chosen")
    if not caption_extension.startswith(".") or len(caption_extension) < 2:
        raise DatasetError(f"the caption extension `{caption_extension}` must start with a dot", fix="e.g. .txt")
    _refuse_existing_concept(out, prompt)
    left_out = tuple(refused_files(images, caption_extension))
    images = _without_refused(images, left_out, caption_extension)
    repeats = choose_repeats(len(images)) if repeats is None else repeats
    wanted = [*images, *(c for c in dict.fromkeys(i.with_suffix(caption_extension) for i in images) if c.is_file())]
    taken = set(wanted) | {problem.path for problem in left_out}
    left_behind = tuple(p for p in sorted(images_dir.iterdir()) if p.is_file() and p not in taken and not p.name.startswith("."))

    final = out / f"{repeats}_{prompt}"
    partial = out / f".{final.name}.partial"
    out.mkdir(parents=True, exist_ok=True)
    if partial.exists():  # left by an interrupted run of this command: only links and copies
        shutil.rmtree(partial)
    partial.mkdir()
    linked = 0
    try:
        for source in wanted:
            linked += _link_or_copy(source, partial / source.name, copy=copy)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    captions = len(wanted) - len(images)
    return PreparedDataset(final, repeats, len(images), captions, linked, len(wanted) - linked, left_behind, left_out)


def _without_refused(images: list[Path], refused: tuple[Problem, ...], caption_extension: str) -> list[Path]:
    """The images neither refused themselves nor through their caption file."""
    refused_paths = {problem.path for problem in refused}
    kept = [i for i in images if i not in refused_paths and i.with_suffix(caption_extension) not in refused_paths]
    if not kept:
        first = refused[0]
        raise DatasetError(
            f"none of the images can be used; {first.path.name}: {first.message}",
            where=first.path.parent,
            fix=first.fix,
        )
    return kept


def _checked_word(text: str, what: str, *, single: bool = False) -> str:
    text = text.strip()
    bad = FORBIDDEN_IN_NAMES & set(text)
    if not text or bad or (single and len(text.split()) > 1):
        rule = "one word" if single else "words"
        shown = f" (not {''.join(sorted(bad))})" if bad else ""
        raise DatasetError(
            f"the {what} `{text}` cannot be used in a folder name: it must be {rule} without path characters{shown}",
            fix="e.g. --token usu --class bear",
        )
    return text


def _source_images(images_dir: Path) -> list[Path]:
    if not images_dir.is_dir():
        raise DatasetError("no such folder of images", where=images_dir, fix="give the folder that holds the images")
    images = sorted(p for p in images_dir.iterdir() if is_image(p))
    if not images:
        nested = any(parse_concept_name(p.name) for p in images_dir.iterdir() if p.is_dir())
        fix = (
            "this looks like a training root already: check it with `lora-wizard dataset check`"
            if nested
            else "give the folder that holds the images themselves (.png .jpg .jpeg .webp .bmp)"
        )
        raise DatasetError("this folder holds no images", where=images_dir, fix=fix)
    return images


def _refuse_existing_concept(out: Path, prompt: str) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError("this is a file, not a folder", where=out, fix="give a folder for the training root")
    if not out.is_dir():
        return
    for folder in out.iterdir():
        parsed = parse_concept_name(folder.name)
        if parsed and parsed[1] == prompt:
            raise DatasetError(
                f"a concept folder for `{prompt}` already exists",
                where=folder,
                fix="remove or rename it first, or give another --out; it is never overwritten",
            )


def _link_or_copy(source: Path, target: Path, *, copy: bool) -> bool:
    """True when hard-linked, False when copied."""
    if not copy:
        try:
            os.link(source, target)
            return True
        except OSError:  # another file system, or one without hard links
            pass
    shutil.copy2(source, target)
    return False
