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
    REEXPORT_FIX,
    is_image,
    open_image,
    parse_concept_name,
    read_caption,
)
from engine.errors import DatasetError
from engine.messages import Message

Severity = Literal["error", "warning"]


# Caption extensions people use: kohya's default `.caption`, and `.txt` (taggers, most guides).
CAPTION_EXTENSIONS = (".txt", ".caption")
# Image formats training does not read: named so the fix can say "convert it".
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jfif", ".psd", ".svg", ".ico"})
# Files operating systems leave in folders; not worth a warning.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})
TRAINING = Message("dataset.kind.training", "training")
REGULARIZATION = Message("dataset.kind.regularization", "regularization")
FOLDER_PERMISSIONS_FIX = Message("dataset.folder.permissions.fix", "check the folder's permissions")


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
        return DatasetError(Message("dataset.image.decode", "the image cannot be decoded ({error})", error=f"{type(exc).__name__}: {exc}"), where=path, fix=REEXPORT_FIX)
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
        kind = REGULARIZATION if is_reg else TRAINING
        example = "1_bear" if is_reg else EXAMPLE_FOLDER_NAME
        if not root.exists():
            self.error("root.missing", root, Message("dataset.root.missing", "the {kind} folder does not exist", kind=kind), Message("dataset.root.missing.fix", "check the path"))
            return []
        if not root.is_dir():
            self.error(
                "root.not_folder", root, Message("dataset.root.not_folder", "this is a file; the {kind} folder is expected", kind=kind),
                Message("dataset.root.not_folder.fix", "give the folder that holds folders like `{example}`", example=example),
            )
            return []
        try:
            entries = sorted(root.iterdir())
        except OSError as exc:
            self.error(
                "root.unreadable", root, Message("dataset.root.unreadable", "cannot list the {kind} folder: {error}", kind=kind, error=exc.strerror),
                FOLDER_PERMISSIONS_FIX,
            )
            return []
        loose_images = [p for p in entries if is_image(p)]
        if parse_concept_name(root.name) and loose_images:
            self.error(
                "root.is_concept", root, Message("dataset.root.is_concept", "this is a concept folder, not the {kind} root", kind=kind),
                Message("dataset.root.is_concept.fix", "give the parent folder ({parent}), which holds folders like `{example}`", parent=str(root.parent), example=example),
            )
            return []
        for link in (p for p in entries if p.is_symlink() and not p.exists()):
            self.warning("link.broken", link, *_broken_link(link))
        folders = [p for p in entries if p.is_dir()]
        if not folders:
            self._empty_root(root, kind, example, loose_images)
            return []
        for image in loose_images:
            self.warning(
                "root.loose_image", image,
                Message("dataset.root.loose_image", "this image is directly in the {kind} folder: ignored, only its <repeats>_<prompt> folders are read", kind=kind),
                Message("dataset.root.loose_image.fix", "move it into a folder named like `{example}`", example=example),
            )
        return [s for s in (self.concept(folder, is_reg=is_reg, example=example) for folder in folders) if s is not None]

    def _empty_root(self, root: Path, kind: str, example: str, loose_images: list[Path]) -> None:
        if loose_images:
            message = Message("dataset.root.only_images", "the {kind} folder holds {count} images but no <repeats>_<prompt> folder", kind=kind, count=len(loose_images))
            fix = Message(
                "dataset.root.only_images.fix",
                "move the images into a subfolder named like `{example}` and give this parent folder (`lora-wizard dataset prepare` builds it)", example=example,
            )
        else:
            message = Message("dataset.root.empty", "the {kind} folder holds no <repeats>_<prompt> folders", kind=kind)
            fix = Message("dataset.root.empty.fix", "put the images in a subfolder named like `{example}` and give this parent folder", example=example)
        self.error("root.empty", root, message, fix)

    def concept(self, folder: Path, *, is_reg: bool, example: str) -> ScannedConcept | None:
        parsed = self._parse_name(folder, example)
        try:
            listing = _list_folder(folder, self.caption_extension)
        except OSError as exc:
            self.error("folder.unreadable", folder, Message("dataset.folder.unreadable", "cannot list this folder: {error}", error=exc.strerror), FOLDER_PERMISSIONS_FIX)
            return None
        self._listing_problems(listing)
        if not listing.images:
            self.error(
                "folder.no_images", folder, Message("dataset.folder.no_images", "this concept folder holds no images"),
                Message("dataset.folder.no_images.fix", "add images ({extensions}) or remove the folder", extensions=", ".join(sorted(IMAGE_EXTENSIONS))),
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
        expected = Message("dataset.folder.name.fix", "rename it like `{example}` (repeats per epoch, underscore, prompt)", example=example)
        prefix, underscore, rest = name.partition("_")
        if parsed is not None:
            self.error(
                "folder.repeats", folder, Message("dataset.folder.zero_repeats", "folder `{name}` has 0 repeats: it would never be trained", name=name),
                Message("dataset.folder.zero_repeats.fix", "use 1 or more, e.g. `{example}`", example=example),
            )
        elif underscore and prefix and not prefix.isdigit():
            self.error("folder.repeats", folder, Message("dataset.folder.repeats", "folder `{name}`: the repeat count `{prefix}` is not a number", name=name, prefix=prefix), expected)
        elif underscore and prefix.isdigit() and not rest.strip():
            self.error("folder.name", folder, Message("dataset.folder.no_prompt", "folder `{name}` has no prompt after the repeat count", name=name), expected)
        else:
            self.error("folder.name", folder, Message("dataset.folder.name", "folder `{name}` is not named <repeats>_<prompt>", name=name), expected)
        return None

    def _listing_problems(self, listing: Listing) -> None:
        extension = self.caption_extension
        for path in listing.broken_links:
            self.warning("link.broken", path, *_broken_link(path))
        for path in listing.other_captions:
            self.warning(
                "caption.other_extension", path,
                Message("dataset.caption.other_extension", "caption file ignored: captions are read from `{extension}` files ([dataset] caption_extension)", extension=extension),
                Message(
                    "dataset.caption.other_extension.fix", "rename it to `{renamed}`, or set [dataset] caption_extension = \"{suffix}\" (--caption-extension {suffix})",
                    renamed=path.with_suffix(extension).name, suffix=path.suffix,
                ),
            )
        for path in listing.others:
            if path.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
                fix = Message("dataset.file.unsupported_image.fix", "convert it to PNG or JPEG ({extensions} are read)", extensions=", ".join(sorted(IMAGE_EXTENSIONS)))
                self.warning("file.ignored", path, Message("dataset.file.unsupported_image", "{suffix} images are not read: ignored", suffix=path.suffix), fix)
            else:
                self.warning(
                    "file.ignored", path, Message("dataset.file.ignored", "not an image or a caption: ignored"),
                    Message("dataset.file.ignored.fix", "nothing to do if that is intended; otherwise move it out"),
                )
        for path in listing.subfolders:
            self.warning(
                "file.ignored", path, Message("dataset.file.subfolder", "a subfolder inside a concept folder: ignored, training does not look inside"),
                Message("dataset.file.subfolder.fix", "move its images up into the concept folder, or into a concept folder of their own"),
            )
        expected = {image.with_suffix(extension) for image in listing.images}
        for path in listing.captions:
            if path not in expected:
                self.warning(
                    "caption.orphan", path, Message("dataset.caption.orphan", "caption file without an image of the same name: unused"),
                    Message("dataset.caption.orphan.fix", "add its image, rename it to match one, or delete it"),
                )

    def decode_all(self, images: list[Path]) -> list[ImageFacts]:
        decoded = []
        self.decodes += len(images)
        for result in self.pool.map(_decode, images):
            if isinstance(result, DatasetError):
                self._add_user_error("image.decode", result, REEXPORT_FIX)
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
                self._add_user_error("caption.invalid", exc, Message("dataset.caption.invalid.fix", "fix or delete the caption file"))
        return captions

    def _add_user_error(self, code: str, exc: DatasetError, default_fix: str) -> None:
        self.error(code, Path(exc.where) if exc.where else Path("."), exc.message, exc.fix or default_fix)


def _broken_link(link: Path) -> tuple[Message, Message]:
    return (
        Message("dataset.link.broken", "broken link to {target}: ignored", target=os.readlink(link)),
        Message("dataset.link.broken.fix", "fix the link or remove it"),
    )
