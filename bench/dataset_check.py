"""Speed of `lora-wizard dataset check`: images per second on 2,000 small generated images.

Every image is decoded fully (as training decodes it), hashed for duplicates and measured; the
figure is the engine's check (`check_dataset`) on a warm file cache, best of `--runs`.

    python bench/dataset_check.py [--images 2000] [--size 128] [--runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_images(folder: Path, count: int, size: int) -> None:
    """`count` different PNGs: a coloured background with a rectangle, like a simple photo set."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (size, size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        x, y = rng.randrange(size // 2), rng.randrange(size // 2)
        ImageDraw.Draw(image).rectangle((x, y, x + size // 3, y + size // 3), fill=(i % 256, (i // 256) % 256, 255))
        image.save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128, help="side of each square image in pixels")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="decode threads (default: the check's own)")
    args = parser.parse_args()

    import engine.checks.dataset as check

    if args.threads:
        check.DECODE_THREADS = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        write_images(root / "1_usu bear", args.images, args.size)
        best = float("inf")
        for _ in range(args.runs):
            started = time.perf_counter()
            report = check.check_dataset(root, resolution=args.size)
            best = min(best, time.perf_counter() - started)
        assert report.images_decoded == args.images and not report.errors, report.problems[:3]
    print(
        f"dataset check: {args.images} images of {args.size}x{args.size} px in {best:.2f} s = "
        f"{args.images / best:,.0f} images/s ({check.DECODE_THREADS} decode threads, best of {args.runs})"
    )


if __name__ == "__main__":
    main()
