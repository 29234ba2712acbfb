"""Dataset pre-flight: every problem of a training root (and a regularization root), in one pass.

Training stops at the first problem it meets (`engine.dataset.plan_dataset`, then each image
decoded); this check walks the same folders by the same rules and collects them all, each with
its file, what is wrong and the fix. Errors are what training refuses; warnings are what trains,
but probably not as the user meant.

    from engine.checks.dataset import check_dataset
    report = check_dataset(Path("train"), Path("reg"), resolution=512)
    report.exit_code    # 2 with errors, else 0
    report.problems     # Problem(severity, code, path, message, fix), errors first

The walk (engine.checks.dataset_walk) decodes each image once, as training decodes it
(`open_image`: EXIF rotation applied), and that one decode gives its size (small images, aspect
ratios, the size range, later the buckets) and a hash of its pixels (exact duplicates, whatever
the file format or metadata). What the scanned folders tell is in engine.checks.dataset_findings,
the instance token's checks in engine.checks.tokens.

Instance token and class: a training folder `20_usu bear` is read as token `usu`, class `bear`
(the first word, then the rest). kohya has no such split, it trains on the whole text; the split
is this check's convention, to test the token and to compare with the regularization class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from engine.buckets import BucketSettings
from engine.checks.dataset_findings import (
    caption_token_problems,
    duplicate_problems,
    few_images_problems,
    image_problems,
    reg_problems,
)
from engine.checks.dataset_walk import Listing, Problem, ScannedConcept, Walk
from engine.checks.tokens import token_problems
from engine.cpu_threads import allowed_cores
from engine.dataset import Concept, Example, match_reg_counts

JSON_SCHEMA_VERSION = 1
# Pillow releases the GIL while decoding and hashlib while hashing: threads overlap both.
DECODE_THREADS = min(4, allowed_cores())


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
        walk = Walk(caption_extension, pool)
        train = walk.root(train_dir, is_reg=False)
        reg = walk.root(reg_dir, is_reg=True) if reg_dir is not None else []
    problems = walk.problems
    scanned = [*train, *reg]
    problems += image_problems(scanned, resolution)
    problems += duplicate_problems(scanned)
    problems += few_images_problems(train)
    problems += caption_token_problems(train)
    if tokenizer is not None:
        problems += token_problems(train, tokenizer)
    if reg_dir is not None and reg:
        unique_train_images = len({facts.digest for s in train for facts in s.decoded})
        problems += reg_problems(train, reg, reg_dir, unique_train_images)
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


def refused_files(images: list[Path], caption_extension: str = ".txt") -> list[Problem]:
    """The errors this check gives these images and their caption files on their own (an image
    that does not decode, a caption file that cannot be read): `dataset prepare` leaves them out."""
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        walk = Walk(caption_extension, pool)
        walk.decode_all(images)
    present = [image.with_suffix(caption_extension) for image in images]
    walk.read_captions(Listing(images=list(images), captions=[c for c in present if c.is_file()]))
    return walk.problems


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
# The rows: what each folder gives per epoch, with kohya's arithmetic (engine.dataset)


def _concept_reports(train: list[ScannedConcept], reg: list[ScannedConcept], batch_size: int) -> list[ConceptReport]:
    def concept(scan: ScannedConcept) -> Concept:
        examples = tuple(Example(p, scan.captions[p][1] if p in scan.captions else scan.prompt, scan.is_reg) for p in scan.images)
        return Concept(scan.folder, scan.repeats, scan.prompt, examples, scan.is_reg)

    items = [len(s.images) * s.repeats for s in train]
    reg_counts = match_reg_counts([concept(s) for s in reg], sum(items))
    start = 0
    for scan in reg:
        items.append(sum(reg_counts[start : start + len(scan.images)]))
        start += len(scan.images)
    return [_concept_report(scan, n, batch_size) for scan, n in zip([*train, *reg], items, strict=True)]


def _concept_report(scan: ScannedConcept, items: int, batch_size: int) -> ConceptReport:
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
