"""What the scanned folders tell: small, stretched and duplicate images, too few of them, captions
without the instance token, and regularization that does not match training.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from engine.checks.dataset_walk import Problem, ScannedConcept
from engine.dataset import REG_IMAGES_PER_TRAINING_IMAGE
from engine.messages import Message

# The seed article: at least ~20 images of the subject alone, in varied poses and backgrounds.
MIN_IMAGES = 20
# Wider or taller than this is cropped to a sliver of the subject (or, with buckets, a thin bucket).
MAX_ASPECT_RATIO = 3.0


def image_problems(scanned: list[ScannedConcept], resolution: int) -> Iterator[Problem]:
    for concept in scanned:
        for image in concept.decoded:
            width, height = image.width, image.height
            # Training scales each image to cover resolution x resolution: a smaller side is upscaled.
            if min(width, height) < resolution:
                yield Problem(
                    "warning", "image.small", image.path,
                    Message("dataset.image.small", "{size} is smaller than the training resolution ({resolution} px): it is upscaled, which blurs it",
                            size=f"{width}x{height}", resolution=resolution),
                    Message("dataset.image.small.fix", "use a larger original (at least {resolution} px on each side), or remove it", resolution=resolution),
                )
            ratio = max(width, height) / min(width, height)
            if ratio > MAX_ASPECT_RATIO:
                yield Problem(
                    "warning", "image.aspect", image.path,
                    Message("dataset.image.aspect", "{size} has an extreme aspect ratio ({ratio}:1, more than {limit}:1): most of it is cropped away",
                            size=f"{width}x{height}", ratio=f"{ratio:.1f}", limit=f"{MAX_ASPECT_RATIO:g}"),
                    Message("dataset.image.aspect.fix", "crop it around the subject to a ratio under 3:1"),
                )


def duplicate_problems(scanned: list[ScannedConcept]) -> Iterator[Problem]:
    first_seen: dict[str, Path] = {}
    for concept in scanned:
        for image in concept.decoded:
            original = first_seen.setdefault(image.digest, image.path)
            if original != image.path:
                yield Problem(
                    "warning", "image.duplicate", image.path,
                    Message("dataset.image.duplicate", "the same pixels as {original}: this picture counts twice", original=str(original)),
                    Message("dataset.image.duplicate.fix", "delete one of the two"),
                )


def few_images_problems(train: list[ScannedConcept]) -> Iterator[Problem]:
    for concept in train:
        if 0 < len(concept.images) < MIN_IMAGES:
            yield Problem(
                "warning", "concept.few_images", concept.folder,
                Message("dataset.concept.few_images", "only {count} images; at least {minimum} are recommended (the seed article)",
                        count=len(concept.images), minimum=MIN_IMAGES),
                Message("dataset.concept.few_images.fix", "add images of the subject alone, in varied poses and backgrounds"),
            )


def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def caption_token_problems(train: list[ScannedConcept]) -> Iterator[Problem]:
    for concept in train:
        token = concept.instance_token
        if token is None:
            continue
        pattern = _word_pattern(token)
        for caption_file, caption in concept.captions.values():
            if not pattern.search(caption):
                yield Problem(
                    "warning", "caption.no_token", caption_file,
                    Message("dataset.caption.no_token", "the caption does not contain the instance token `{token}`: this image trains without it", token=token),
                    Message("dataset.caption.no_token.fix", "add `{token}` to the caption (a caption replaces the folder's prompt `{prompt}`)",
                            token=token, prompt=concept.prompt),
                )


def reg_problems(train: list[ScannedConcept], reg: list[ScannedConcept], reg_dir: Path, unique_train_images: int) -> Iterator[Problem]:
    train_classes = {c.class_word.lower(): c for c in train if c.class_word}
    reg_classes = {c.prompt.lower() for c in reg}
    if train_classes:
        names = ", ".join(f"`{c.class_word}` ({c.folder.name})" for c in train_classes.values())
        for concept in reg:
            if concept.prompt.lower() not in train_classes:
                first = next(iter(train_classes.values()))
                yield Problem(
                    "warning", "reg.class", concept.folder,
                    Message("dataset.reg.wrong_class", "the regularization class `{prompt}` is not a training class ({names}): it keeps the wrong word's meaning",
                            prompt=concept.prompt, names=names),
                    Message("dataset.reg.wrong_class.fix", "use images of the training class in a folder like `{folder}`, or remove this one",
                            folder=f"{concept.repeats}_{first.class_word}"),
                )
        for name, concept in train_classes.items():
            if name not in reg_classes:
                yield Problem(
                    "warning", "reg.class", concept.folder,
                    Message("dataset.reg.no_class", "no regularization folder for the class `{word}`", word=concept.class_word),
                    Message("dataset.reg.no_class.fix", "add `{folder}` with images made by the base model from the prompt `{word}`",
                            folder=str(reg_dir / ("1_" + concept.class_word)), word=concept.class_word),
                )
    reg_images = sum(len(c.images) for c in reg)
    if reg_images < unique_train_images:
        suggested = REG_IMAGES_PER_TRAINING_IMAGE * unique_train_images
        yield Problem(
            "warning", "reg.few_images", reg_dir,
            Message("dataset.reg.few_images", "{count} regularization images for {unique} unique training images: kohya repeats them to match, so the same few are seen over and over",
                    count=reg_images, unique=unique_train_images),
            Message("dataset.reg.few_images.fix", "add regularization images: about {factor}x the training images ({suggested}), as the seed article suggests",
                    factor=REG_IMAGES_PER_TRAINING_IMAGE, suggested=suggested),
        )
