"""Caption files beside images: found, read, written atomically, and edited across a dataset.

    train/20_usu bear/001.png
    train/20_usu bear/001.txt      "usu, bear, outdoors, sitting"  (comma-separated tags)

kohya reads the first line of `<image stem><caption extension>` (its default extension is
`.caption`; `.txt` when told, as the answers file's `[dataset] caption_extension` tells it here).
A caption is a list of tags; an edit rewrites the whole file through a temporary file, so an
interrupted edit leaves the old caption or the new one, never half of one. A caption left with no
tags is deleted: kohya refuses an empty caption file, and without one the image trains with its
folder's prompt.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.dataset import is_image
from engine.errors import DatasetError
from engine.files import atomic_write_text

SEPARATOR = ", "


def split_tags(caption: str) -> list[str]:
    """`"usu, bear , outdoors"` -> `["usu", "bear", "outdoors"]` (empty pieces dropped)."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def join_tags(tags: list[str]) -> str:
    return SEPARATOR.join(tags)


def tag_key(tag: str) -> str:
    """What two spellings of one tag share: `Long_Hair` and `long hair` are the same tag."""
    return " ".join(tag.replace("_", " ").lower().split())


def unique_tags(tags: list[str]) -> list[str]:
    """The tags in order, each only once (the first spelling wins)."""
    seen: set[str] = set()
    kept = []
    for tag in tags:
        if tag_key(tag) not in seen:
            seen.add(tag_key(tag))
            kept.append(tag)
    return kept


def check_extension(extension: str) -> str:
    if not extension.startswith(".") or len(extension) < 2 or "/" in extension:
        raise DatasetError(f"the caption extension `{extension}` must start with a dot", fix="e.g. .txt or .caption")
    return extension


def find_images(folder: Path) -> list[Path]:
    """The images of a flat folder, a concept folder or a training root (its concept folders:
    one level down, as training reads them). Hidden files are left out."""
    if not folder.is_dir():
        raise DatasetError("no such folder", where=folder, fix="give a folder of images, or a training root")
    try:
        entries = sorted(folder.iterdir())
        images = [p for p in entries if is_image(p) and not p.name.startswith(".")]
        for sub in (p for p in entries if p.is_dir() and not p.name.startswith(".")):
            images += sorted(p for p in sub.iterdir() if is_image(p) and not p.name.startswith("."))
    except OSError as exc:
        raise DatasetError(f"cannot list the folder: {exc.strerror}", where=folder, fix="check its permissions") from None
    if not images:
        raise DatasetError(
            "no images here or in the folders one level down",
            where=folder,
            fix="give the folder that holds the images (.png .jpg .jpeg .webp .bmp), or the training root",
        )
    return images


def caption_path(image: Path, extension: str) -> Path:
    return image.with_suffix(extension)


def read_tags(image: Path, extension: str) -> list[str] | None:
    """The tags of the image's caption (its first line, as kohya reads it); None when there is no
    caption file, [] when it is empty."""
    path = caption_path(image, extension)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        raise DatasetError("the caption file is not UTF-8 text", where=path, fix="save it as UTF-8") from None
    except OSError as exc:
        raise DatasetError(f"cannot read the caption file: {exc.strerror}", where=path) from None
    lines = text.splitlines()
    return split_tags(lines[0]) if lines else []


def write_tags(image: Path, extension: str, tags: list[str]) -> None:
    """Write the caption atomically; no tags deletes the file (see the module's notes)."""
    path = caption_path(image, extension)
    if tags:
        atomic_write_text(path, join_tags(tags) + "\n")
    else:
        path.unlink(missing_ok=True)


@dataclass
class CaptionSet:
    """The captions of a dataset's images, as on disk; every edit is written at once."""

    images: list[Path]
    extension: str
    tags: dict[Path, list[str]] = field(default_factory=dict)  # images with a caption file

    @classmethod
    def load(cls, folder: Path, extension: str) -> CaptionSet:
        images = find_images(folder)
        captions = cls(images, check_extension(extension))
        captions.reload()
        return captions

    def reload(self) -> None:
        self.tags = {image: tags for image in self.images if (tags := read_tags(image, self.extension)) is not None}

    def tags_of(self, image: Path) -> list[str]:
        return list(self.tags.get(image, []))

    def set_tags(self, image: Path, tags: list[str]) -> None:
        tags = unique_tags([tag.strip() for tag in tags if tag.strip()])
        write_tags(image, self.extension, tags)
        if tags:
            self.tags[image] = tags
        else:
            self.tags.pop(image, None)

    def frequency(self) -> list[tuple[str, int]]:
        """Each tag (by its first spelling) with the number of images that have it, most first."""
        counts: Counter[str] = Counter()
        spelling: dict[str, str] = {}
        for tags in self.tags.values():
            for tag in tags:
                counts[tag_key(tag)] += 1
                spelling.setdefault(tag_key(tag), tag)
        return [(spelling[key], n) for key, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]

    def remove_everywhere(self, tag: str) -> list[Path]:
        """Remove a tag from every caption; returns the images whose caption changed."""
        key = tag_key(tag)
        changed = []
        for image, tags in list(self.tags.items()):
            kept = [t for t in tags if tag_key(t) != key]
            if len(kept) != len(tags):
                self.set_tags(image, kept)
                changed.append(image)
        return changed

    def replace_everywhere(self, old: str, new: str) -> list[Path]:
        """Replace a tag by another in every caption, in its place (once, where both were)."""
        key, new = tag_key(old), new.strip()
        if not new:
            return self.remove_everywhere(old)
        changed = []
        for image, tags in list(self.tags.items()):
            if any(tag_key(t) == key for t in tags):
                self.set_tags(image, [new if tag_key(t) == key else t for t in tags])
                changed.append(image)
        return changed
