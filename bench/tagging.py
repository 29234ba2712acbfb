"""Tagging throughput on the CPU: images per second of `lora-wizard dataset caption`'s engine.

Two stand-in taggers built with onnx's helper API (engine/tiny_tagger.py), both with the real
models' input (448 x 448 NHWC BGR float32): the tiny one (a reduce and a MatMul: the cost is
decoding and preprocessing) and a ViT-B/16-sized one with random weights (about the compute of
SmilingWolf/wd-vit-tagger-v3, ~80 GMAC an image). For each: the whole job (`tag_folder`: decode,
pad, resize, run, write the captions) and the model alone (`Tagger.predict` on a ready batch).
The images are JPEG photos-to-be of `--image-size` pixels, generated here.

    python bench/tagging.py [--images 64] [--image-size 1024] [--batch-size 8] [--threads N]
                            [--blocks 12] [--width 768] [--tags 10861] [--skip-vit] [--json]

Run it alone on the machine: the figures are meaningless next to other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_photos(folder: Path, count: int, size: int) -> None:
    """`count` JPEGs with a gradient and shapes (JPEG decoding is what a photo set costs)."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x, y = rng.randrange(size), rng.randrange(size)
            draw.ellipse((x, y, x + size // 5, y + size // 4), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        image.save(folder / f"{i:05d}.jpg", quality=90)


def vit_gmac(size: int, patch: int, width: int, blocks: int, tags: int) -> float:
    """Multiply-accumulates of one image through build_vit_like_tagger's graph."""
    tokens = (size // patch) ** 2
    per_block = 4 * tokens * width * width + 2 * tokens * tokens * width + 8 * tokens * width * width
    return (tokens * width * 3 * patch * patch + blocks * per_block + width * tags) / 1e9


def measure(model_dir: Path, photos: Path, args: argparse.Namespace) -> dict:
    import numpy as np

    from engine.autotag import TagOptions, tag_folder
    from engine.tagger import Tagger

    tagger = Tagger.load(model_dir, device="cpu", threads=args.threads)
    options = TagOptions(existing="replace", batch_size=args.batch_size, general_threshold=0.0)
    tag_folder(photos, tagger, TagOptions(existing="replace", batch_size=args.batch_size))  # warm-up: file cache, ORT arenas
    started = time.perf_counter()
    result = tag_folder(photos, tagger, options)
    whole = time.perf_counter() - started
    assert len(result.written) == args.images and not result.failed, result.failed[:3]

    batch = np.random.default_rng(0).uniform(0, 255, (args.batch_size, tagger.size, tagger.size, 3)).astype(np.float32)
    tagger.predict(batch)
    rounds = max(1, args.images // args.batch_size)
    started = time.perf_counter()
    for _ in range(rounds):
        tagger.predict(batch)
    model_only = time.perf_counter() - started
    return {
        "input": tagger.size,
        "images": args.images,
        "whole_s": round(whole, 3),
        "images_per_s": round(args.images / whole, 2),
        "model_only_images_per_s": round(rounds * args.batch_size / model_only, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=1024, help="side of each generated JPEG")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: one per core)")
    parser.add_argument("--blocks", type=int, default=12, help="ViT-like model: blocks (12 as ViT-B)")
    parser.add_argument("--width", type=int, default=768, help="ViT-like model: width (768 as ViT-B)")
    parser.add_argument("--tags", type=int, default=10861, help="ViT-like model: tags (10861 as the v3 taggers)")
    parser.add_argument("--skip-vit", action="store_true", help="only the tiny model")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    from engine.tiny_tagger import build_tiny_tagger, build_vit_like_tagger

    results: dict = {"cpu_cores": os.cpu_count(), "threads": args.threads, "batch_size": args.batch_size, "image_size": args.image_size}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = work / "train" / "1_usu bear"
        write_photos(photos, args.images, args.image_size)
        results["tiny"] = measure(build_tiny_tagger(work / "tiny"), photos, args)
        if not args.skip_vit:
            model = build_vit_like_tagger(work / "vit", blocks=args.blocks, width=args.width, tags=args.tags)
            results["vit_like"] = measure(model, photos, args)
            results["vit_like"]["gmac_per_image"] = round(vit_gmac(448, 16, args.width, args.blocks, args.tags), 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name in ("tiny", "vit_like"):
        if name in results:
            r = results[name]
            extra = f", {r['gmac_per_image']} GMAC/image" if "gmac_per_image" in r else ""
            print(
                f"{name}: {r['images']} JPEGs of {args.image_size} px -> {r['input']} px input{extra}: "
                f"{r['images_per_s']} images/s whole job, {r['model_only_images_per_s']} images/s model alone "
                f"(batch {args.batch_size}, {args.threads or 'all'} threads of {results['cpu_cores']} cores)"
            )


if __name__ == "__main__":
    main()
