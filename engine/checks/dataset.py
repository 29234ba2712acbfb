"""Dataset pre-flight: every problem of a training root (and a regularization root), in one pass.

Training stops at the first problem it meets (`engine.dataset.plan_dataset`, then each image
decoded); this check walks the same folders by the same rules and collects them all, each with
its file, what is wrong and the fix. Errors are what training refuses; warnings are what trains,
but probably not as the user meant.

    from engine.checks.dataset import check_dataset
    report = check_dataset(Path("train"), Path("reg"), resolution=512)
    report.exit_code    # 2 with errors, else 0
    report.problems     # Problem(severity, code, path, message, fix), errors first

Each image is decoded once, as training decodes it (`open_image`: EXIF rotation applied), and
that one decode gives its size (small images, aspect ratios, the size range, later the buckets)
and a hash of its pixels (exact duplicates, whatever the file format or metadata).

Instance token and class: a training folder `20_usu bear` is read as token `usu`, class `bear`
(the first word, then the rest). kohya has no such split, it trains on the whole text; the split
is this check's convention, to test the token and to compare with the regularization class.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from engine.buckets import BucketSettings
from engine.dataset import (
    EXAMPLE_FOLDER_NAME,
    IMAGE_EXTENSIONS,
    Concept,
    Example,
    is_image,
    match_reg_counts,
    open_image,
    parse_concept_name,
    read_caption,
)
from engine.errors import DatasetError, ModelFileError

Severity = Literal["error", "warning"]
JSON_SCHEMA_VERSION = 1

# The seed article: at least ~20 images of the subject alone, in varied poses and backgrounds.
MIN_IMAGES = 20
# Wider or taller than this is cropped to a sliver of the subject (or, with buckets, a thin bucket).
MAX_ASPECT_RATIO = 3.0
# The seed article: about 5x as many regularization images as training images.
REG_IMAGES_PER_TRAINING_IMAGE = 5
# Caption extensions people use: kohya's default `.caption`, and `.txt` (taggers, most guides).
CAPTION_EXTENSIONS = (".txt", ".caption")
# Image formats training does not read: named so the fix can say "convert it".
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jfif", ".psd", ".svg", ".ico"})
# Files operating systems leave in folders; not worth a warning.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})
# The seed article's instance tokens: short words the model does not know.
SUGGESTED_TOKENS = ("shs", "sts", "scs", "cpc", "coc", "cic", "msm", "nen", "usu", "ici", "lvl")
# CLIP's byte-level BPE vocabulary: the 256 byte characters and the same with `</w>`, then one
# token per merge in the order the merges were learned (most frequent pair first), then the
# special tokens. A whole word whose id falls in the first quarter of the merges is frequent:
# in SD's CLIP that is ids below ~12,700 (dog 1929, bear 4298); ids below 512 are single letters.
BYTE_LEVEL_TOKENS = 512
COMMON_TOKEN_SHARE = 0.25
# Pillow releases the GIL while decoding and hashlib while hashing: threads overlap both.
DECODE_THREADS = min(4, os.cpu_count() or 1)


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
class ConceptReport:
    """One `<repeats>_<prompt>` folder, as training will see it."""

    folder: Path
    is_reg: bool
    repeats: int
    prompt: str  # the text trained with images that have no caption file
    instance_token: str | None  # training folders: the first word of the prompt
    class_word: str | None  # training folders: the rest; regularization folders: the prompt
    images: int  # image files, as training counts them
    captions: int  # images with a usable caption file
    # (width, height) of each image that decodes, as trained (EXIF rotation applied). Aspect-ratio
    # bucketing is computed from these, so reporting buckets needs no second decode.
    sizes: tuple[tuple[int, int], ...]
    items_per_epoch: int  # images x repeats; regularization: as matched to the training items
    steps_per_epoch: int  # these items alone, at the report's batch size
    notes: tuple[str, ...] = ()

    @property
    def size_range(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The smallest and the largest image by area."""
        if not self.sizes:
            return None
        by_area = sorted(self.sizes, key=lambda size: (size[0] * size[1], size))
        return by_area[0], by_area[-1]


@dataclass(frozen=True)
class DatasetReport:
    """What `check_dataset` found.

    `buckets` maps each training size ("768x512") to the items per epoch trained at it, from the
    sizes the one decode gave (kohya's enable_bucket; one square size when buckets are off).
    """

    train_dir: Path
    reg_dir: Path | None
    caption_extension: str
    resolution: int
    batch_size: int
    concepts: tuple[ConceptReport, ...]  # training folders, then regularization folders
    problems: tuple[Problem, ...]  # errors first
    images_decoded: int
    tokenizer_checked: bool
    buckets: dict[str, int] = field(default_factory=dict)

    @property
    def train_concepts(self) -> list[ConceptReport]:
        return [c for c in self.concepts if not c.is_reg]

    @property
    def reg_concepts(self) -> list[ConceptReport]:
        return [c for c in self.concepts if c.is_reg]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def train_items_per_epoch(self) -> int:
        return sum(c.items_per_epoch for c in self.train_concepts)

    @property
    def reg_items_per_epoch(self) -> int:
        return sum(c.items_per_epoch for c in self.reg_concepts)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil((self.train_items_per_epoch + self.reg_items_per_epoch) / self.batch_size)

    @property
    def status(self) -> Literal["error", "warning", "ok"]:
        return "error" if self.errors else "warning" if self.warnings else "ok"

    @property
    def exit_code(self) -> int:
        """2 when something must be fixed before training, else 0 (warnings included)."""
        return 2 if self.errors else 0

    def with_problems(self, *extra: Problem) -> DatasetReport:
        """The report with more problems (e.g. the model's), errors still first."""
        return replace(self, problems=_ordered([*self.problems, *extra]))

    def to_dict(self) -> dict[str, Any]:
        """The `lora-wizard dataset check --json` document."""
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "status": self.status,
            "train_dir": str(self.train_dir),
            "reg_dir": str(self.reg_dir) if self.reg_dir else None,
            "caption_extension": self.caption_extension,
            "resolution": self.resolution,
            "batch_size": self.batch_size,
            "tokenizer_checked": self.tokenizer_checked,
            "images_decoded": self.images_decoded,
            "buckets": self.buckets,
            "concepts": [_concept_dict(c) for c in self.concepts],
            "per_epoch": {
                "train_items": self.train_items_per_epoch,
                "reg_items": self.reg_items_per_epoch,
                "steps": self.steps_per_epoch,
            },
            "problems": [
                {"severity": p.severity, "code": p.code, "path": str(p.path), "message": p.message, "fix": p.fix}
                for p in self.problems
            ],
        }


def _concept_dict(concept: ConceptReport) -> dict[str, Any]:
    size_range = concept.size_range
    return {
        "folder": str(concept.folder),
        "kind": "reg" if concept.is_reg else "train",
        "repeats": concept.repeats,
        "prompt": concept.prompt,
        "instance_token": concept.instance_token,
        "class": concept.class_word,
        "images": concept.images,
        "captions": concept.captions,
        "smallest": list(size_range[0]) if size_range else None,
        "largest": list(size_range[1]) if size_range else None,
        "items_per_epoch": concept.items_per_epoch,
        "steps_per_epoch": concept.steps_per_epoch,
        "notes": list(concept.notes),
    }


def check_dataset(
    train_dir: str | Path,
    reg_dir: str | Path | None = None,
    *,
    caption_extension: str = ".txt",
    resolution: int = 512,
    tokenizer: Any = None,
    batch_size: int = 1,
    buckets: BucketSettings | None = None,
) -> DatasetReport:
    """Every problem of the dataset, never raising for one: a missing folder, a broken image or a
    bad name is a `Problem` in the report. `tokenizer` (a transformers CLIP tokenizer) adds the
    instance-token checks."""
    train_dir = Path(train_dir)
    reg_dir = Path(reg_dir) if reg_dir is not None else None
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        walk = _Walk(caption_extension, pool)
        train = walk.root(train_dir, is_reg=False)
        reg = walk.root(reg_dir, is_reg=True) if reg_dir is not None else []
    problems = walk.problems
    scanned = [*train, *reg]
    problems += _image_problems(scanned, resolution)
    problems += _duplicate_problems(scanned)
    problems += _few_images_problems(train)
    problems += _caption_token_problems(train)
    if tokenizer is not None:
        problems += _token_problems(train, tokenizer)
    if reg_dir is not None and reg:
        unique_train_images = len({facts.digest for s in train for facts in s.decoded})
        problems += _reg_problems(train, reg, reg_dir, unique_train_images)
    return DatasetReport(
        train_dir=train_dir,
        reg_dir=reg_dir,
        caption_extension=caption_extension,
        resolution=resolution,
        batch_size=batch_size,
        concepts=(concepts := tuple(_concept_reports(train, reg, batch_size))),
        problems=_ordered(problems),
        images_decoded=walk.decodes,
        tokenizer_checked=tokenizer is not None,
        buckets=_bucket_counts(concepts, resolution, buckets or BucketSettings()),
    )


def _bucket_counts(concepts: tuple[ConceptReport, ...], resolution: int, settings: BucketSettings) -> dict[str, int]:
    """Items per epoch at each training size. Regularization images count once each, as an
    approximation of kohya's matching (exact counts are in the training plan)."""
    counts: dict[tuple[int, int], int] = {}
    for concept in concepts:
        per_image = 1 if concept.is_reg else concept.repeats
        for size in concept.sizes:
            bucket = settings.bucket_of(size, resolution)
            counts[bucket] = counts.get(bucket, 0) + per_image
    return {f"{w}x{h}": n for (w, h), n in sorted(counts.items())}


def _ordered(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    """Errors first, otherwise in the order found; the same problem twice only once."""
    unique = list(dict.fromkeys(problems))
    return tuple(sorted(unique, key=lambda p: p.severity != "error"))


# ---------------------------------------------------------------------------------------------
# The walk: folders, files, one decode per image


@dataclass(frozen=True)
class _ImageFacts:
    path: Path
    width: int
    height: int
    digest: str  # of the decoded pixels


@dataclass
class _Listing:
    """A concept folder's entries, sorted by what training does with them."""

    images: list[Path] = field(default_factory=list)
    captions: list[Path] = field(default_factory=list)  # with the extension in use
    other_captions: list[Path] = field(default_factory=list)  # with another caption extension: ignored
    others: list[Path] = field(default_factory=list)  # neither: ignored
    subfolders: list[Path] = field(default_factory=list)  # training does not look inside
    broken_links: list[Path] = field(default_factory=list)


def _list_folder(folder: Path, caption_extension: str) -> _Listing:
    """Raises OSError when the folder cannot be listed."""
    listing = _Listing()
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
class _Scanned:
    """A concept folder that follows the naming convention, with what its images gave."""

    folder: Path
    is_reg: bool
    repeats: int
    prompt: str
    images: list[Path]
    decoded: list[_ImageFacts]
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


def _decode(path: Path) -> _ImageFacts | DatasetError:
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
        return _ImageFacts(path, image.width, image.height, digest.hexdigest())


def refused_files(images: list[Path], caption_extension: str = ".txt") -> list[Problem]:
    """The errors this check gives these images and their caption files on their own (an image
    that does not decode, a caption file that cannot be read): `dataset prepare` leaves them out."""
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        walk = _Walk(caption_extension, pool)
        walk.decode_all(images)
    present = [image.with_suffix(caption_extension) for image in images]
    walk.read_captions(_Listing(images=list(images), captions=[c for c in present if c.is_file()]))
    return walk.problems


class _Walk:
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

    def root(self, root: Path, *, is_reg: bool) -> list[_Scanned]:
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

    def concept(self, folder: Path, *, is_reg: bool, example: str) -> _Scanned | None:
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
        return _Scanned(folder, is_reg, repeats, prompt, listing.images, decoded, captions)

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

    def _listing_problems(self, listing: _Listing) -> None:
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

    def decode_all(self, images: list[Path]) -> list[_ImageFacts]:
        decoded = []
        self.decodes += len(images)
        for result in self.pool.map(_decode, images):
            if isinstance(result, DatasetError):
                self._add_user_error("image.decode", result, "re-export the image or remove it")
            else:
                decoded.append(result)
        return decoded

    def read_captions(self, listing: _Listing) -> dict[Path, tuple[Path, str]]:
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


# ---------------------------------------------------------------------------------------------
# What the scanned folders tell


def _image_problems(scanned: list[_Scanned], resolution: int) -> Iterator[Problem]:
    for concept in scanned:
        for image in concept.decoded:
            width, height = image.width, image.height
            # Training scales each image to cover resolution x resolution: a smaller side is upscaled.
            if min(width, height) < resolution:
                yield Problem(
                    "warning", "image.small", image.path,
                    f"{width}x{height} is smaller than the training resolution ({resolution} px): it is upscaled, which blurs it",
                    f"use a larger original (at least {resolution} px on each side), or remove it",
                )
            ratio = max(width, height) / min(width, height)
            if ratio > MAX_ASPECT_RATIO:
                yield Problem(
                    "warning", "image.aspect", image.path,
                    f"{width}x{height} has an extreme aspect ratio ({ratio:.1f}:1, more than {MAX_ASPECT_RATIO:g}:1): most of it is cropped away",
                    "crop it around the subject to a ratio under 3:1",
                )


def _duplicate_problems(scanned: list[_Scanned]) -> Iterator[Problem]:
    first_seen: dict[str, Path] = {}
    for concept in scanned:
        for image in concept.decoded:
            original = first_seen.setdefault(image.digest, image.path)
            if original != image.path:
                yield Problem(
                    "warning", "image.duplicate", image.path,
                    f"the same pixels as {original}: this picture counts twice",
                    "delete one of the two",
                )


def _few_images_problems(train: list[_Scanned]) -> Iterator[Problem]:
    for concept in train:
        if 0 < len(concept.images) < MIN_IMAGES:
            yield Problem(
                "warning", "concept.few_images", concept.folder,
                f"only {len(concept.images)} images; at least {MIN_IMAGES} are recommended (the seed article)",
                "add images of the subject alone, in varied poses and backgrounds",
            )


def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def _caption_token_problems(train: list[_Scanned]) -> Iterator[Problem]:
    for concept in train:
        token = concept.instance_token
        if token is None:
            continue
        pattern = _word_pattern(token)
        for caption_file, caption in concept.captions.values():
            if not pattern.search(caption):
                yield Problem(
                    "warning", "caption.no_token", caption_file,
                    f"the caption does not contain the instance token `{token}`: this image trains without it",
                    f"add `{token}` to the caption (a caption replaces the folder's prompt `{concept.prompt}`)",
                )


# ---------------------------------------------------------------------------------------------
# The instance token, as the model's tokenizer sees it


@dataclass(frozen=True)
class TokenVerdict:
    """How a tokenizer reads one word."""

    word: str
    pieces: tuple[str, ...]
    token_id: int | None  # when the word is one piece
    frequency_rank: float | None  # where that id falls among the merges: 0 most frequent, 1 rarest

    @property
    def is_single(self) -> bool:
        return len(self.pieces) == 1

    @property
    def is_common(self) -> bool:
        return self.frequency_rank is not None and self.frequency_rank < COMMON_TOKEN_SHARE


def judge_token(tokenizer: Any, word: str) -> TokenVerdict:
    """Whether `word` is one token of a CLIP tokenizer, and how frequent that token is."""
    pieces = tuple(tokenizer.tokenize(word))
    if len(pieces) != 1:
        return TokenVerdict(word, pieces, None, None)
    token_id = int(tokenizer.convert_tokens_to_ids(pieces[0]))
    specials = {i for i in tokenizer.all_special_ids if i >= BYTE_LEVEL_TOKENS}
    merges = max(1, tokenizer.vocab_size - BYTE_LEVEL_TOKENS - len(specials))
    rank = min(1.0, max(0.0, (token_id - BYTE_LEVEL_TOKENS) / merges))  # a single letter counts as most frequent
    return TokenVerdict(word, pieces, token_id, rank)


def suggest_tokens(tokenizer: Any = None, *, exclude: str = "") -> list[str]:
    """The seed article's tokens; with a tokenizer, those it keeps whole and rare."""
    candidates = [t for t in SUGGESTED_TOKENS if t != exclude.lower()]
    if tokenizer is None:
        return candidates
    good = [t for t in candidates if (v := judge_token(tokenizer, t)).is_single and not v.is_common]
    return good or candidates


def _token_problems(train: list[_Scanned], tokenizer: Any) -> Iterator[Problem]:
    seen: set[str] = set()
    for concept in train:
        token = concept.instance_token
        if token is None or token.lower() in seen:
            continue
        seen.add(token.lower())
        verdict = judge_token(tokenizer, token)
        fix = f"rename the folder with a short rare token the tokenizer keeps whole, e.g. {' '.join(suggest_tokens(tokenizer, exclude=token))}"
        if not verdict.is_single:
            yield Problem(
                "warning", "token.pieces", concept.folder,
                f"the model's tokenizer splits the instance token `{token}` into {len(verdict.pieces)} pieces ({' '.join(verdict.pieces)}): "
                "what the LoRA learns is spread over them, and each piece keeps its own meaning",
                fix,
            )
        elif verdict.is_common:
            yield Problem(
                "warning", "token.common", concept.folder,
                f"the instance token `{token}` is a frequent token for the model (id {verdict.token_id}, in the most frequent "
                f"{COMMON_TOKEN_SHARE:.0%} of its vocabulary): training changes what it means in every prompt",
                fix,
            )


# ---------------------------------------------------------------------------------------------
# Regularization against training


def _reg_problems(train: list[_Scanned], reg: list[_Scanned], reg_dir: Path, unique_train_images: int) -> Iterator[Problem]:
    train_classes = {c.class_word.lower(): c for c in train if c.class_word}
    reg_classes = {c.prompt.lower() for c in reg}
    if train_classes:
        names = ", ".join(f"`{c.class_word}` ({c.folder.name})" for c in train_classes.values())
        for concept in reg:
            if concept.prompt.lower() not in train_classes:
                first = next(iter(train_classes.values()))
                yield Problem(
                    "warning", "reg.class", concept.folder,
                    f"the regularization class `{concept.prompt}` is not a training class ({names}): it keeps the wrong word's meaning",
                    f"use images of the training class in a folder like `{concept.repeats}_{first.class_word}`, or remove this one",
                )
        for name, concept in train_classes.items():
            if name not in reg_classes:
                yield Problem(
                    "warning", "reg.class", concept.folder,
                    f"no regularization folder for the class `{concept.class_word}`",
                    f"add `{reg_dir / ('1_' + concept.class_word)}` with images made by the base model from the prompt `{concept.class_word}`",
                )
    reg_images = sum(len(c.images) for c in reg)
    if reg_images < unique_train_images:
        suggested = REG_IMAGES_PER_TRAINING_IMAGE * unique_train_images
        yield Problem(
            "warning", "reg.few_images", reg_dir,
            f"{reg_images} regularization images for {unique_train_images} unique training images: "
            "kohya repeats them to match, so the same few are seen over and over",
            f"add regularization images: about {REG_IMAGES_PER_TRAINING_IMAGE}x the training images ({suggested}), as the seed article suggests",
        )


# ---------------------------------------------------------------------------------------------
# The rows: what each folder gives per epoch, with kohya's arithmetic (engine.dataset)


def _concept_reports(train: list[_Scanned], reg: list[_Scanned], batch_size: int) -> list[ConceptReport]:
    def concept(scan: _Scanned) -> Concept:
        examples = tuple(Example(p, scan.captions[p][1] if p in scan.captions else scan.prompt, scan.is_reg) for p in scan.images)
        return Concept(scan.folder, scan.repeats, scan.prompt, examples, scan.is_reg)

    items = [len(s.images) * s.repeats for s in train]
    reg_counts = match_reg_counts([concept(s) for s in reg], sum(items))
    start = 0
    for scan in reg:
        items.append(sum(reg_counts[start : start + len(scan.images)]))
        start += len(scan.images)
    return [_concept_report(scan, n, batch_size) for scan, n in zip([*train, *reg], items, strict=True)]


def _concept_report(scan: _Scanned, items: int, batch_size: int) -> ConceptReport:
    notes = []
    if not scan.is_reg and scan.class_word is None:
        notes.append(
            f"one word: `{scan.instance_token}` is taken as the instance token, with no class "
            "(this check reads `20_usu bear` as token `usu`, class `bear`; kohya trains on the whole name)"
        )
    return ConceptReport(
        folder=scan.folder,
        is_reg=scan.is_reg,
        repeats=scan.repeats,
        prompt=scan.prompt,
        instance_token=scan.instance_token,
        class_word=scan.class_word,
        images=len(scan.images),
        captions=len(scan.captions),
        sizes=tuple((i.width, i.height) for i in scan.decoded),
        items_per_epoch=items,
        steps_per_epoch=math.ceil(items / batch_size),
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# The tokenizer of a base model


def load_model_tokenizer(model: str | Path, tokenizer_dir: str | Path | None = None) -> tuple[Any, int]:
    """The CLIP tokenizer of a base model, read offline without its weights, and the default
    resolution of the model's family. Raises `ModelFileError` when either cannot be read."""
    from transformers import CLIPTokenizer

    from engine.families import inspect_base_model
    from engine.families.sd import FAMILIES

    info = inspect_base_model(model, tokenizer_dir)
    if info.tokenizer is None:
        raise ModelFileError(
            f"no tokenizer found for this model: {info.tokenizer_note}",
            where=info.source,
            fix="set `[model] tokenizer` to a folder holding vocab.json and merges.txt",
        )
    try:
        tokenizer = CLIPTokenizer.from_pretrained(info.tokenizer)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"the tokenizer cannot be read: {exc}", where=info.tokenizer, fix="copy the complete model folder") from None
    family = FAMILIES.get(info.family)
    return tokenizer, family.default_resolution if family else 512
