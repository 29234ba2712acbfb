"""`lora-wizard dataset caption`: tag images with a WD14-style tagger and write their captions.

    lora-wizard dataset caption DIR|ANSWERS_FILE [--model REPO|FOLDER] [--device auto|cpu|cuda]
        [--general 0.35] [--character 0.85] [--first "usu, bear"] [--drop "tag, tag"]
        [--keep-underscores] [--caption-extension .txt] [--existing keep|replace|append]
        [--batch-size 8]

DIR is a folder of images, a concept folder (`20_usu bear/`) or a training root. With an answers
file (.toml), its training root and caption extension are used, so the files written are the
ones training reads. The tagger (default SmilingWolf/wd-vit-tagger-v3) is downloaded into the
Hugging Face cache on first use, or read from a folder holding model.onnx and selected_tags.csv;
it needs onnxruntime: pip install 'lora-wizard[captions]'.

Each caption: the --first tags (default: the concept folder's instance token and class), then
character tags scoring at least --character, then general tags scoring at least --general,
highest first, without the --drop tags. Existing captions are kept unless --existing replace or
append is given. kohya reads `.caption` files unless told otherwise; this tool's answers file
says `.txt` by default ([dataset] caption_extension). Exit status 2 when an image could not be
decoded (it is named; the others are tagged) or on a user error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.autotag import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHARACTER_THRESHOLD,
    DEFAULT_GENERAL_THRESHOLD,
    EXISTING_CHOICES,
)
from engine.tagger import DEFAULT_TAGGER


def register_caption(actions) -> None:
    caption = actions.add_parser(
        "caption",
        help="tag the images with a WD14 tagger and write their caption files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    caption.add_argument("source", type=Path, metavar="DIR|ANSWERS_FILE", help="images, a concept folder, a training root, or an answers file")
    caption.add_argument("--model", default=DEFAULT_TAGGER, metavar="REPO|FOLDER", help=f"tagger: a Hugging Face repository or a local folder (default {DEFAULT_TAGGER})")
    caption.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="onnxruntime provider (auto: CUDA when available)")
    caption.add_argument("--general", type=float, default=DEFAULT_GENERAL_THRESHOLD, metavar="P", help=f"general tag threshold (default {DEFAULT_GENERAL_THRESHOLD})")
    caption.add_argument("--character", type=float, default=DEFAULT_CHARACTER_THRESHOLD, metavar="P", help=f"character tag threshold (default {DEFAULT_CHARACTER_THRESHOLD})")
    caption.add_argument("--first", metavar="TAGS", help="comma-separated tags put first in every caption (default: the folder's token and class)")
    caption.add_argument("--drop", default="", metavar="TAGS", help="comma-separated tags never written")
    caption.add_argument("--keep-underscores", action="store_true", help="write `long_hair`, not `long hair`")
    caption.add_argument("--caption-extension", metavar=".EXT", help="caption files to write (default .txt, or the answers file's)")
    caption.add_argument("--existing", choices=EXISTING_CHOICES, default="keep", help="what to do with an existing caption (default keep)")
    caption.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help=f"images per model call (default {DEFAULT_BATCH_SIZE})")
    caption.set_defaults(handler=run_caption)


def caption_target(source: Path, extension: str | None) -> tuple[Path, str]:
    """The folder to tag and the caption extension: from an answers file when one is given."""
    from engine.config import load_answers
    from engine.errors import UserError

    if source.suffix.lower() == ".toml" and source.is_file():
        dataset = load_answers(source, check_paths=False).dataset
        if extension is not None and extension != dataset.caption_extension:
            raise UserError(
                f"--caption-extension {extension} differs from the answers file's {dataset.caption_extension}: training would not read these captions",
                where=source,
                fix=f'leave --caption-extension out, or set [dataset] caption_extension = "{extension}" in the answers file first',
            )
        return dataset.train_dir, dataset.caption_extension
    return source, extension or ".txt"


def split_list(text: str | None) -> tuple[str, ...]:
    return tuple(tag.strip() for tag in (text or "").split(",") if tag.strip())


def run_caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.autotag import TagOptions, tag_folder
    from engine.tagger import Tagger

    folder, extension = caption_target(args.source, args.caption_extension)
    options = TagOptions(
        general_threshold=args.general,
        character_threshold=args.character,
        first_tags=split_list(args.first),
        drop_tags=split_list(args.drop),
        underscores_to_spaces=not args.keep_underscores,
        caption_extension=extension,
        existing=args.existing,
        batch_size=args.batch_size,
    )
    tagger = Tagger.load(args.model, device=args.device)
    print(f"Tagger {tagger.source}: {tagger.size} px input, {len(tagger.vocabulary.names)} tags, {tagger.provider}")
    with tqdm(unit="image", desc="tagging", file=sys.stderr, disable=None) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = tag_folder(folder, tagger, options, progress)
    print(f"{len(result.written)} caption files written ({extension}) for {result.images} images in {folder}")
    if result.kept:
        print(f"  {len(result.kept)} existing captions kept (--existing replace or append to change them)")
    if result.untagged:
        print(f"  {len(result.untagged)} images got no tag above the thresholds: no caption written for them")
    for error in result.failed:
        print(f"  skipped: {error.render()}", file=sys.stderr)
    if extension != ".caption":
        print(f"Training reads them with [dataset] caption_extension = \"{extension}\" (kohya's own default is .caption).")
    print(f"Next: {next_command(folder, extension)}")
    return 2 if result.failed else 0


def next_command(folder: Path, extension: str) -> str:
    """Check a training root (or a concept folder's root); lay out a flat folder first."""
    from engine.dataset import parse_concept_name

    if parse_concept_name(folder.name):
        folder = folder.parent
    elif not any(parse_concept_name(p.name) for p in folder.iterdir() if p.is_dir()):
        return f"lora-wizard dataset prepare {folder} --token TOKEN --class CLASS --out TRAIN_ROOT --caption-extension {extension}"
    return f"lora-wizard dataset check {folder} --caption-extension {extension}"
