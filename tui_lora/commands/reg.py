"""`lora-wizard reg generate`: regularization images from the base model, resumable.

    lora-wizard reg generate --model BASE --class bear [--train TRAIN_ROOT] [--count N] --out REG_ROOT [--vae PATH]
    lora-wizard reg generate ANSWERS_FILE --class bear [--count N]

Regularization images keep the class word's meaning while the instance token learns the subject:
the base model draws the class prompt alone (`bear`), about 5 images per training image (the
default with --train; an answers file gives its training folder). They go to
`REG_ROOT/1_<class>/0000.png ...`, kohya's `<repeats>_<class>` folder, so REG_ROOT is what the
answers file's `[dataset] reg_dir` names. With an answers file, the model (with its tokenizer,
prediction type and `[model] vae`, as training loads it), the folders, the resolution, the seed and
the clip skip come from it; options given as well override it. --vae gives a VAE in place of the
model's own (e.g. an fp16-safe one) without an answers file.

Each image is seeded by (seed, its number) and written whole or not at all: after an interruption,
the same command again keeps the images already there and makes only the missing ones. Raising
--count later adds images. Progress is shown on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tui_lora.commands.base_model import BaseModel, base_model


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reg",
        help="make regularization images of the class with the base model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="reg_command", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate", help="make (or complete) REG_ROOT/1_<class>/ from the class prompt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    generate.add_argument("answers", type=Path, nargs="?", metavar="ANSWERS_FILE", help="take the model, folders, resolution and seed from this answers file")
    generate.add_argument("--model", type=Path, metavar="BASE", help="base model: a diffusers folder or a .safetensors / .ckpt file")
    generate.add_argument("--class", dest="class_prompt", required=True, metavar="CLASS", help="the class prompt alone, e.g. bear")
    generate.add_argument("--vae", type=Path, metavar="PATH", help="a VAE folder or file in place of the model's own (e.g. an fp16-safe one)")
    generate.add_argument("--train", type=Path, metavar="TRAIN_ROOT", help="training root: --count defaults to 5 x its images")
    generate.add_argument("--count", type=int, metavar="N", help="number of images (default: 5 x the training images)")
    generate.add_argument("--out", type=Path, metavar="REG_ROOT", help="regularization root; the images go to REG_ROOT/1_<class>/")
    generate.add_argument("--size", type=int, metavar="N", help="square image side (default: the training resolution, else the model's)")
    generate.add_argument("--steps", type=int, metavar="N", help="sampling steps (default 28)")
    generate.add_argument("--cfg", type=float, metavar="X", help="guidance scale (default 7.5)")
    generate.add_argument("--sampler", metavar="NAME", help="euler_a (default), dpmpp_2m, dpmpp_2m_karras, euler, heun, ddim, pndm")
    generate.add_argument("--negative", default="", metavar="TEXT", help="negative prompt")
    generate.add_argument("--seed", type=int, metavar="N", help="seed (default: the answers file's, else 0)")
    generate.add_argument("--batch-size", type=int, default=1, metavar="N", help="images made at once (faster on a GPU)")
    generate.add_argument("--device", metavar="DEVICE", help="cuda, mps or cpu (default: the best available)")
    generate.set_defaults(handler=run_generate)


@dataclass
class RegSettings:
    base: BaseModel
    out: Path
    train: Path | None = None
    size: int | None = None
    seed: int = 0


def reg_settings(args: argparse.Namespace) -> RegSettings:
    """Model, folders, size and seed: from the answers file when one is given, then the options on top."""
    from engine.config import load_answers
    from engine.errors import UserError

    answers = load_answers(args.answers, check_paths=False) if args.answers else None  # the reg folder may not exist yet
    base = base_model(args, answers, no_model_fix="add --model BASE (a diffusers folder or a .safetensors file), or give an answers file")
    out = args.out or (answers.dataset.reg_dir if answers else None)
    if out is None:
        fix = "add --out REG_ROOT, or set `[dataset] reg_dir` in the answers file" if args.answers else "add --out REG_ROOT (e.g. --out reg)"
        raise UserError("no regularization folder given", fix=fix)
    result = RegSettings(base=base, out=out, size=base.resolution)
    if answers is not None:
        result.train, result.seed = answers.dataset.train_dir, answers.training.seed
    if args.train is not None:
        result.train = args.train
    if args.size is not None:
        if args.size % 8 or not 64 <= args.size <= 4096:
            raise UserError(f"--size {args.size} is not a multiple of 8 between 64 and 4096", fix="e.g. --size 512")
        result.size = args.size
    if args.seed is not None:
        result.seed = args.seed
    return result


def image_count(args: argparse.Namespace, settings: RegSettings) -> int:
    from engine.dataset import REG_IMAGES_PER_TRAINING_IMAGE
    from engine.errors import UserError
    from engine.reg_images import default_reg_count

    if args.count is not None:
        if args.count < 1:
            raise UserError(f"--count {args.count} must be 1 or more")
        return args.count
    if settings.train is None:
        raise UserError("how many images?", fix=f"add --count N, or --train TRAIN_ROOT for {REG_IMAGES_PER_TRAINING_IMAGE} per training image")
    return default_reg_count(settings.train)


def run_generate(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.prompts import DEFAULT_CFG, DEFAULT_STEPS
    from engine.reg_images import generate_regularization, reg_folder, reg_image_path
    from engine.samplers import DEFAULT_SAMPLER, sampler_key

    settings = reg_settings(args)
    count = image_count(args, settings)
    sampler = sampler_key(args.sampler or DEFAULT_SAMPLER)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be 1 or more")
    folder = reg_folder(settings.out, args.class_prompt)
    missing = sum(not reg_image_path(folder, i).exists() for i in range(count))
    print(f"reg: {count} images of `{args.class_prompt.strip()}` in {folder}: {count - missing} there, {missing} to make", file=sys.stderr)
    maker = None
    if missing:
        print(f"reg: loading {settings.base.path}", file=sys.stderr)
        maker = settings.base.load(args.device)
    result = generate_regularization(
        maker or settings.base.path,
        args.class_prompt,
        settings.out,
        count,
        seed=settings.seed,
        size=settings.size,
        steps=args.steps if args.steps is not None else DEFAULT_STEPS,
        cfg=args.cfg if args.cfg is not None else DEFAULT_CFG,
        sampler=sampler,
        negative=args.negative,
        batch_size=args.batch_size,
        progress=ProgressLine(missing),
    )
    print(f"{len(result.written)} images written, {len(result.kept)} kept: {result.folder}")
    return 0


class ProgressLine:
    """`reg: 12/100 0011.png  1.3 s/image, about 2 min left` on stderr, one line an image (fine over SSH and in logs)."""

    def __init__(self, to_make: int):
        self.to_make = to_make
        self.made = 0
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, path: Path) -> None:
        self.made += 1
        per_image = (time.monotonic() - self.started) / self.made
        left = per_image * (self.to_make - self.made)
        print(f"reg: {done}/{total} {path.name}  {per_image:.1f} s/image, {_duration(left)} left", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"
