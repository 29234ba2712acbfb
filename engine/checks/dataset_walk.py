"""The dataset check's walk over the folders: each concept folder listed, each image decoded once
(its size and a hash of its pixels), each caption read, and every problem met on the way.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.dataset import (
    EXAMPLE_FOLDER_NAME,
    IMAGE_EXTENSIONS,
    is_image,
    open_image,
    parse_concept_name,
    read_caption,
)
from engine.errors import DatasetError

Severity = Literal["error", "warning"]


# Caption extensions people use: kohya's default `.caption`, and `.txt` (taggers, most guides).
CAPTION_EXTENSIONS = (".txt", ".caption")
# Image formats training does not read: named so the fix can say "convert it".
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jfif", ".psd", ".svg", ".ico"})
# Files operating systems leave in folders; not worth a warning.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class Problem:
    """One thing to fix (error) or to look at (warning), in one file or folder."""

    severity: Severity
    code: str  # stable id, e.g. "image.decode"; the JSON output and the tests use it
    path: Path
    message: str
    fix: str

    def render(self) -> str:
        return f"{self.path}: {self.message}\n  fix: {self.fix}"


@dataclass(frozen=True)
class ImageFacts:
    path: Path
    width: int
    height: int
    digest: str  # of the decoded pixels


@dataclass
class Listing:
    """A concept folder's entries, sorted by what training does with them."""

    images: list[Path] = field(default_factory=list)
    captions: list[Path] = field(default_factory=list)  # with the extension in use
    other_captions: list[Path] = field(default_factory=list)  # with another caption extension: ignored
    others: list[Path] = field(default_factory=list)  # neither: ignored
    subfolders: list[Path] = field(default_factory=list)  # training does not look inside
    broken_links: list[Path] = field(default_factory=list)


def _list_folder(folder: Path, caption_extension: str) -> Listing:
    """Raises OSError when the folder cannot be listed."""
    listing = Listing()
    for path in sorted(folder.iterdir()):
        hidden = path.name.startswith(".") or path.name.lower() in SYSTEM_FILES
        if path.is_symlink() and not path.exists():
            listing.broken_links.append(path)
        elif is_image(path):  # hidden ones too: training reads them (macOS `._x.png` files)
            listing.images.append(path)
        elif hidden:
            continue
        elif path.is_dir():
            listing.subfolders.append(path)
        elif path.suffix == caption_extension:
            listing.captions.append(path)
        elif path.suffix.lower() in CAPTION_EXTENSIONS:
            listing.other_captions.append(path)
        else:
            listing.others.append(path)
    return listing


@dataclass
class ScannedConcept:
    """A concept folder that follows the naming convention, with what its images gave."""

    folder: Path
    is_reg: bool
    repeats: int
    prompt: str
    images: list[Path]
    decoded: list[ImageFacts]
    captions: dict[Path, tuple[Path, str]]  # image -> (caption file, its text), for images with a usable one

    @property
    def _words(self) -> list[str]:
        return self.prompt.replace(",", " ").split() or [self.prompt]

    @property
    def instance_token(self) -> str | None:
        return None if self.is_reg else self._words[0]

    @property
    def class_word(self) -> str | None:
        return self.prompt if self.is_reg else " ".join(self._words[1:]) or None


def _decode(path: Path) -> ImageFacts | DatasetError:
    try:
        image = open_image(path)
    except DatasetError as exc:
        return exc
    except Exception as exc:  # Pillow's plugins raise more than they document on some damaged files
        return DatasetError(f"the image cannot be decoded ({type(exc).__name__}: {exc})", where=path, fix="re-export the image or remove it")
    with image:
        # The size goes in too: the same bytes in another shape are another picture.
        digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())  # sha256: the fastest hashlib hash on CPUs with SHA extensions
        digest.update(image.tobytes())
        return ImageFacts(path, image.width, image.height, digest.hexdigest())


class Walk:
    """Walks the roots and collects the problems found on the way."""

    def __init__(self, caption_extension: str, pool: ThreadPoolExecutor):
        self.caption_extension = caption_extension
        self.pool = pool
        self.problems: list[Problem] = []
        self.decodes = 0

    def error(self, code: str, path: Path, message: str, fix: str) -> None:
        self.problems.append(Problem("error", code, path, message, fix))

    def warning(self, code: str, path: Path, message: str, fix: str) -> None:
        self.problems.append(Problem("warning", code, path, message, fix))

    def root(self, root: Path, *, is_reg: bool) -> list[ScannedConcept]:
        kind = "regularization" if is_reg else "training"
        example = "1_bear" if is_reg else EXAMPLE_FOLDER_NAME
        if not root.exists():
            self.error("root.missing", root, f"the {kind} folder does not exist", "check the path")
            return []
        if not root.is_dir():
            self.error("root.not_folder", root, f"this is a file; the {kind} folder is expected", f"give the folder that holds folders like `{example}`")
            return []
        try:
            entries = sorted(root.iterdir())
        except OSError as exc:
            self.error("root.unreadable", root, f"cannot list the {kind} folder: {exc.strerror}", "check the folder's permissions")
            return []
        loose_images = [p for p in entries if is_image(p)]
        if parse_concept_name(root.name) and loose_images:
            self.error(
                "root.is_concept", root, f"this is a concept folder, not the {kind} root",
                f"give the parent folder ({root.parent}), which holds folders like `{example}`",
            )
            return []
        for link in (p for p in entries if p.is_symlink() and not p.exists()):
            self.warning("link.broken", link, f"broken link to {os.readlink(link)}: ignored", "fix the link or remove it")
        folders = [p for p in entries if p.is_dir()]
        if not folders:
            self._empty_root(root, kind, example, loose_images)
            return []
        for image in loose_images:
            self.warning(
                "root.loose_image", image, f"this image is directly in the {kind} folder: ignored, only its <repeats>_<prompt> folders are read",
                f"move it into a folder named like `{example}`",
            )
        return [s for s in (self.concept(folder, is_reg=is_reg, example=example) for folder in folders) if s is not None]

    def _empty_root(self, root: Path, kind: str, example: str, loose_images: list[Path]) -> None:
        if loose_images:
            message = f"the {kind} folder holds {len(loose_images)} images but no <repeats>_<prompt> folder"
            fix = f"move the images into a subfolder named like `{example}` and give this parent folder (`lora-wizard dataset prepare` builds it)"
        else:
            message = f"the {kind} folder holds no <repeats>_<prompt> folders"
            fix = f"put the images in a subfolder named like `{example}` and give this parent folder"
        self.error("root.empty", root, message, fix)

    def concept(self, folder: Path, *, is_reg: bool, example: str) -> ScannedConcept | None:
        parsed = self._parse_name(folder, example)
        try:
            listing = _list_folder(folder, self.caption_extension)
        except OSError as exc:
            self.error("folder.unreadable", folder, f"cannot list this folder: {exc.strerror}", "check the folder's permissions")
            return None
        self._listing_problems(listing)
        if not listing.images:
            self.error(
                "folder.no_images", folder, "this concept folder holds no images",
                f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder",
            )
        decoded = self.decode_all(listing.images)
        captions = self.read_captions(listing)
        if parsed is None:
            return None
        repeats, prompt = parsed
        return ScannedConcept(folder, is_reg, repeats, prompt, listing.images, decoded, captions)

    def _parse_name(self, folder: Path, example: str) -> tuple[int, str] | None:
        """(repeats, prompt) when the name follows the convention; else a problem and None."""
        name = folder.name
        parsed = parse_concept_name(name)
        if parsed is not None and parsed[0] >= 1:
            return parsed
        expected = f"rename it like `{example}` (repeats per epoch, underscore, prompt)"
        prefix, underscore, rest = name.partition("_")
        if parsed is not None:
            self.error("folder.repeats", folder, f"folder `{name}` has 0 repeats: it would never be trained", f"use 1 or more, e.g. `{example}`")
        elif underscore and prefix and not prefix.isdigit():
            self.error("folder.repeats", folder, f"folder `{name}`: the repeat count `{prefix}` is not a number", expected)
        elif underscore and prefix.isdigit() and not rest.strip():
            self.error("folder.name", folder, f"folder `{name}` has no prompt after the repeat count", expected)
        else:
            self.error("folder.name", folder, f"folder `{name}` is not named <repeats>_<prompt>", expected)
        return None

    def _listing_problems(self, listing: Listing) -> None:
        extension = self.caption_extension
        for path in listing.broken_links:
            self.warning("link.broken", path, f"broken link to {os.readlink(path)}: ignored", "fix the link or remove it")
        for path in listing.other_captions:
            self.warning(
                "caption.other_extension", path,
                f"caption file ignored: captions are read from `{extension}` files ([dataset] caption_extension)",
                f"rename it to `{path.with_suffix(extension).name}`, or set [dataset] caption_extension = \"{path.suffix}\" (--caption-extension {path.suffix})",
            )
        for path in listing.others:
            if path.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
                fix = f"convert it to PNG or JPEG ({', '.join(sorted(IMAGE_EXTENSIONS))} are read)"
                self.warning("file.ignored", path, f"{path.suffix} images are not read: ignored", fix)
            else:
                self.warning("file.ignored", path, "not an image or a caption: ignored", "nothing to do if that is intended; otherwise move it out")
        for path in listing.subfolders:
            self.warning("file.ignored", path, "a subfolder inside a concept folder: ignored, training does not look inside", "move its images up into the concept folder, or into a concept folder of their own")
        expected = {image.with_suffix(extension) for image in listing.images}
        for path in listing.captions:
            if path not in expected:
                self.warning("caption.orphan", path, "caption file without an image of the same name: unused", "add its image, rename it to match one, or delete it")

    def decode_all(self, images: list[Path]) -> list[ImageFacts]:
        decoded = []
        self.decodes += len(images)
        for result in self.pool.map(_decode, images):
            if isinstance(result, DatasetError):
                self._add_user_error("image.decode", result, "re-export the image or remove it")
            else:
                decoded.append(result)
        return decoded

    def read_captions(self, listing: Listing) -> dict[Path, tuple[Path, str]]:
        """The caption file and text of each image that has one; a bad file is a problem once."""
        captions: dict[Path, tuple[Path, str]] = {}
        available = set(listing.captions)
        failed: set[Path] = set()
        for image in listing.images:
            caption_file = image.with_suffix(self.caption_extension)
            if caption_file not in available or caption_file in failed:
                continue
            try:
                captions[image] = caption_file, read_caption(image, self.caption_extension, "")
            except DatasetError as exc:
                failed.add(caption_file)
                self._add_user_error("caption.invalid", exc, "fix or delete the caption file")
        return captions

    def _add_user_error(self, code: str, exc: DatasetError, default_fix: str) -> None:
        self.error(code, Path(exc.where) if exc.where else Path("."), exc.message, exc.fix or default_fix)
