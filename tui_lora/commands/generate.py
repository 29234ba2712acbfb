"""`lora-wizard generate`: images from a base model with LoRAs named the web UI's way.

    lora-wizard generate --model BASE "a photo of usu bear <lora:usu_bear:0.8>" [--lora-dir DIR]
                         [--negative TEXT] [--size WxH] [--steps N] [--cfg X] [--seed N]
                         [--sampler NAME] [--count N] [--out PATH] [--weights 0,0.25,0.5,0.75,1]
                         [--vae PATH]
    lora-wizard generate --answers ANSWERS.toml "a photo of usu bear <lora:usu_bear>" ...

`<lora:NAME:WEIGHT>` tags (several allowed; the weight defaults to 1) load NAME.safetensors from
--lora-dir (default: the current folder, subfolders included) at that weight, in the UNet and the
text encoder alike, as AUTOMATIC1111 does. Weight 0 gives exactly the base model's image.

--weights makes one grid image, like the web UI's X/Y plot: one labelled column per weight of the
first LoRA in the prompt (other LoRAs keep their weights), one row per image of --count.

--answers takes the base model from a run's answers file as training loads it: its tokenizer,
prediction type and `[model] vae` (an fp16-safe VAE in place of the model's own), its clip skip and
its resolution as the image size; options given on the command line win. --vae gives such a VAE
without an answers file.

--out is a .png file for a single image or a grid, or a folder (default `generated/`) where the
images are numbered after those already there: `00000-SEED.png`, `grid-00001-SEED.png`. Each PNG
carries its settings in the web UI's format (its PNG Info tab reads them). Without --seed a random
seed is chosen and printed; image i of --count uses seed + i. docs/samples.md lists the samplers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.image_maker import ImageMaker
    from engine.prompts import SamplePrompt

DEFAULT_OUT = Path("generated")
SEED_RANGE = 2**32


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="make images with a base model and <lora:name:weight> tags, or a grid over a LoRA's weight",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", help='the prompt, with LoRA tags, e.g. "a photo of usu bear <lora:usu_bear:0.8>"')
    parser.add_argument("--model", type=Path, metavar="BASE", help="base model: a diffusers folder or a .safetensors / .ckpt file")
    parser.add_argument(
        "--answers", type=Path, metavar="FILE", help="take the model, its tokenizer and VAE, the clip skip and the size from this answers file"
    )
    parser.add_argument("--vae", type=Path, metavar="PATH", help="a VAE folder or file in place of the model's own (e.g. an fp16-safe one)")
    parser.add_argument("--lora-dir", type=Path, metavar="DIR", help="folder holding the LoRA files (default: the current folder)")
    parser.add_argument("--negative", default="", metavar="TEXT", help="negative prompt")
    parser.add_argument("--size", metavar="WxH", help="image size, e.g. 512x768 or 512 (default: the model's resolution)")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help="sampling steps (default 28)")
    parser.add_argument("--cfg", type=float, default=None, metavar="X", help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the first image (default: random, printed)")
    parser.add_argument("--sampler", default=None, metavar="NAME", help="euler_a (default), dpmpp_2m, dpmpp_2m_karras, euler, heun, ddim, pndm")
    parser.add_argument("--count", type=int, default=1, metavar="N", help="images to make (rows of a grid), seeds seed..seed+N-1")
    parser.add_argument("--out", type=Path, metavar="PATH", help="a .png file (one image or a grid) or a folder (default generated/)")
    parser.add_argument("--weights", metavar="LIST", help="a grid over the first LoRA's weight, e.g. 0,0.25,0.5,0.75,1")
    parser.add_argument("--clip-skip", type=int, metavar="N", help="use the text encoder's N-th last layer (2 for anime models; default 1)")
    parser.add_argument("--tokenizer", type=Path, metavar="DIR", help="tokenizer folder for a single-file model without one beside it")
    parser.add_argument("--device", metavar="DEVICE", help="cuda, mps or cpu (default: the best available)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.config import load_answers
    from engine.errors import UserError
    from engine.lora_tags import parse_lora_tags, resolve_lora_files
    from engine.samplers import sampler_key
    from tui_lora.commands.base_model import base_model

    if args.count < 1:
        raise UserError(f"--count {args.count} must be 1 or more")
    weights = parse_weights(args.weights) if args.weights is not None else None
    single_file = out_is_file(args.out, images=1 if weights is not None else args.count)
    size = parse_size(args.size) if args.size else None
    sampler = sampler_key(args.sampler) if args.sampler else None
    # Check the tags and find the LoRA files before the slow model load.
    _, tags = parse_lora_tags(args.prompt)
    resolve_lora_files([name for name, _ in tags], args.lora_dir or Path.cwd())

    # The dataset need not be here; the model is checked as it loads.
    answers = load_answers(args.answers, check_paths=False) if args.answers else None
    base = base_model(args, answers, no_model_fix="add --model BASE (a diffusers folder or a .safetensors file), or --answers ANSWERS.toml")
    maker = base.load(args.device)
    if size is None and base.resolution is not None:
        size = (base.resolution, base.resolution)
    prompt = request(args, maker, size, sampler)
    first_seed = args.seed if args.seed is not None else _random_seed()
    seeds = [(first_seed + i) % SEED_RANGE for i in range(args.count)]
    if args.seed is None:
        print(f"seed {first_seed}", file=sys.stderr)
    if weights is not None:
        written = [write_grid(maker, args, prompt, weights, seeds, single_file)]
    else:
        written = write_images(maker, args, prompt, seeds, single_file)
    for path in written:
        print(path)
    return 0


def request(args: argparse.Namespace, maker: ImageMaker, size: tuple[int, int] | None, sampler: str | None) -> SamplePrompt:
    """The settings of every image: the options given, the model's resolution and the defaults for the rest."""
    from engine.prompts import DEFAULT_CFG, DEFAULT_STEPS, SamplePrompt
    from engine.samplers import DEFAULT_SAMPLER

    side = maker.model.family.default_resolution
    width, height = size or (side, side)
    return SamplePrompt(
        prompt=args.prompt,
        negative=args.negative,
        width=width,
        height=height,
        steps=args.steps if args.steps is not None else DEFAULT_STEPS,
        cfg=args.cfg if args.cfg is not None else DEFAULT_CFG,
        sampler=sampler or DEFAULT_SAMPLER,
    )


def write_images(maker: ImageMaker, args: argparse.Namespace, prompt: SamplePrompt, seeds: list[int], single_file: bool) -> list[Path]:
    from engine.generate import generate
    from engine.png_files import save_image

    images = generate(maker, args.prompt, prompt, seeds, lora_dir=args.lora_dir)
    if single_file:
        return [save_image(args.out, images[0].image, images[0].parameters)]
    folder = args.out or DEFAULT_OUT
    number = next_number(folder)
    return [save_image(folder / f"{number + i:05d}-{item.seed}.png", item.image, item.parameters) for i, item in enumerate(images)]


def write_grid(
    maker: ImageMaker, args: argparse.Namespace, prompt: SamplePrompt, weights: list[float], seeds: list[int], single_file: bool
) -> Path:
    from engine.generate import weight_grid
    from engine.png_files import image_parameters, save_image

    grid = weight_grid(maker, args.prompt, prompt, weights, seeds, lora_dir=args.lora_dir)
    parameters = image_parameters(prompt, seeds[0], text=args.prompt, model_name=Path(maker.model.source).name)
    parameters += f"\nGrid: {grid.lora} at weights {', '.join(f'{w:g}' for w in weights)}, seeds {seeds[0]}..{seeds[-1]}"
    if single_file:
        return save_image(args.out, grid.image, parameters)
    folder = args.out or DEFAULT_OUT
    return save_image(folder / f"grid-{next_number(folder):05d}-{seeds[0]}.png", grid.image, parameters)


# --- option values -----------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """`512x768` -> (512, 768); `512` -> (512, 512). Sides are multiples of 8, 64 to 4096."""
    from engine.errors import UserError

    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+)\s*)?", text)
    if not match:
        raise UserError(f"--size {text!r} is not WIDTHxHEIGHT", fix="e.g. --size 512x768, or --size 512 for a square")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    for side in (width, height):
        if side % 8 or not 64 <= side <= 4096:
            raise UserError(f"--size {text}: {side} is not a multiple of 8 between 64 and 4096", fix="e.g. --size 512x768")
    return width, height


def parse_weights(text: str) -> list[float]:
    """`0,0.25,0.5` -> [0.0, 0.25, 0.5]."""
    from engine.errors import UserError

    try:
        weights = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--weights {text!r} is not a list of numbers", fix="e.g. --weights 0,0.25,0.5,0.75,1") from None
    if not weights:
        raise UserError("--weights names no weight", fix="e.g. --weights 0,0.25,0.5,0.75,1")
    return weights


def out_is_file(out: Path | None, *, images: int) -> bool:
    """Whether --out names one PNG file (rather than a folder); checked before any work is done."""
    from engine.errors import UserError

    if out is None or out.is_dir() or out.suffix == "":
        return False
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: images are written as PNG", fix="give a .png file name, or a folder")
    if images > 1:
        raise UserError(f"--out {out} is one file, but --count makes {images} images", fix="give a folder as --out")
    return True


def next_number(folder: Path) -> int:
    """The number after the highest `NNNNN-...png` already in the folder, as the web UI numbers its outputs."""
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(?:grid-)?(\d{5})-", p.name))]
    return max(numbers, default=-1) + 1


def _random_seed() -> int:
    import secrets

    return secrets.randbelow(SEED_RANGE)
