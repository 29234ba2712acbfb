"""Aspect-ratio buckets, as kohya's `--enable_bucket`.

Instead of cropping every image to a square, each image goes to the bucket whose aspect ratio is
nearest its own: bucket sizes are multiples of `step` between `min_size` and `max_size` with an
area of at most resolution x resolution. An image is scaled to cover its bucket and the centre is
cropped, so the only cropping is the rounding to the bucket. Each batch comes from one bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

Size = tuple[int, int]  # (width, height)


def bucket_resolutions(resolution: int, min_size: int = 256, max_size: int = 1024, step: int = 64) -> list[Size]:
    """kohya's make_bucket_resolutions: the square, then every width with the largest height that fits."""
    max_area = resolution * resolution
    square = int(math.sqrt(max_area) // step) * step
    sizes = {(square, square)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // step) * step)
        if height >= min_size:
            sizes.add((width, height))
            sizes.add((height, width))
        width += step
    return sorted(sizes)


def image_size(path: Path) -> Size:
    """Width and height as displayed (EXIF rotation applied), read from the header only."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def nearest_bucket(size: Size, resolutions: list[Size]) -> Size:
    aspect = size[0] / size[1]
    return min(resolutions, key=lambda r: (abs(r[0] / r[1] - aspect), -r[0] * r[1]))


def no_upscale_bucket(size: Size, resolution: int, step: int) -> Size:
    """kohya's bucket_no_upscale for an image smaller than the training area: its own size,
    rounded down to the step."""
    width, height = size
    return max(step, width // step * step), max(step, height // step * step)


@dataclass(frozen=True)
class BucketSettings:
    """The `[dataset]` bucket keys of the answers file."""

    enabled: bool = False
    min_size: int = 256
    max_size: int = 1024
    step: int = 64
    no_upscale: bool = False

    def bucket_of(self, size: Size, resolution: int) -> Size:
        """The training size of an image of `size`: its bucket, or the square when buckets are off."""
        if not self.enabled:
            return resolution, resolution
        if self.no_upscale and size[0] * size[1] < resolution * resolution:
            return no_upscale_bucket(size, resolution, self.step)
        return nearest_bucket(size, bucket_resolutions(resolution, self.min_size, max(self.max_size, resolution), self.step))


def assign_buckets(paths: Iterable[Path], resolution: int, settings: BucketSettings) -> dict[Path, Size]:
    """The training size of each image (its header is read only when buckets are on)."""
    paths = list(dict.fromkeys(paths))
    if not settings.enabled:
        return {path: (resolution, resolution) for path in paths}
    return {path: settings.bucket_of(image_size(path), resolution) for path in paths}


def batch_count(sizes: Iterable[Size], batch_size: int) -> int:
    """Batches in an epoch when every batch comes from one bucket."""
    counts: dict[Size, int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return sum(math.ceil(n / batch_size) for n in counts.values())


def crop_top_left(original: Size, target: Size) -> tuple[int, int]:
    """Where the centre crop of `resize_and_crop` starts, as (top, left) in the resized image."""
    scale = max(target[0] / original[0], target[1] / original[1])
    resized = (max(target[0], round(original[0] * scale)), max(target[1], round(original[1] * scale)))
    return (resized[1] - target[1]) // 2, (resized[0] - target[0]) // 2
