"""`lora-wizard dataset check | prepare`: the dataset, checked and laid out before any GPU time.

    lora-wizard dataset check TRAIN_ROOT [--reg REG_ROOT] [--resolution N] [--model BASE]
                              [--caption-extension .txt] [--batch-size N] [--json]
    lora-wizard dataset check ANSWERS_FILE [--json]
    lora-wizard dataset prepare IMAGES_DIR --token usu --class bear [--repeats N] --out TRAIN_ROOT
    lora-wizard dataset caption DIR|ANSWERS_FILE [--model REPO|FOLDER] ...   (see its --help)

`check` reads every file once and prints, per concept folder, its repeats, instance token and
class, images, captions, size range and steps per epoch; then every problem with its file, what
is wrong and the fix. With an answers file (.toml) the folders, caption extension, resolution,
batch size and model come from it; options given as well override it. With a model, the instance
token is also checked against the model's tokenizer. Exit status: 0 when there are only warnings,
2 on errors. `--json` prints the report as one JSON document (the keys of
`engine.checks.dataset.DatasetReport.to_dict`).

`prepare` builds kohya's layout from a flat folder of images: `TRAIN_ROOT/<repeats>_<token> <class>/`
with hard links to the images (copies where links are impossible) and their caption files. The
originals are never moved or changed; an existing concept folder is never overwritten. Without
--repeats, an epoch is made about 150 images (repeats = 150 / images, 1 to 100), what kohya users
aim for (100-200): 10 epochs are then about 1,500 steps at batch size 1.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.buckets import BucketSettings

if TYPE_CHECKING:
    from rich.console import Console

    from engine.checks.dataset import ConceptReport, DatasetReport, Problem

# Problems of one kind in one folder beyond this many are summed up in one line (--json lists all).
SHOWN_PER_KIND = 5
MARKERS = {"error": "[bold red]ERROR[/]", "warning": "[yellow]warn [/]"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "dataset",
        help="check a dataset before training, or lay out a folder of images for kohya",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    check = actions.add_parser("check", help="report every problem of a training (and regularization) folder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("source", type=Path, metavar="TRAIN_ROOT|ANSWERS_FILE", help="the training root (holds `20_usu bear/`), or an answers file")
    check.add_argument("--reg", type=Path, metavar="REG_ROOT", help="the regularization root (holds `1_bear/`)")
    check.add_argument("--resolution", type=int, metavar="N", help="training resolution in pixels (default: the model's, else 512)")
    check.add_argument("--model", type=Path, metavar="BASE", help="base model: also check the instance token with its tokenizer")
    check.add_argument("--caption-extension", metavar=".EXT", help="extension of caption files (default .txt)")
    check.add_argument("--batch-size", type=int, metavar="N", help="for the steps per epoch (default 1)")
    check.add_argument("--buckets", action="store_true", help="report aspect-ratio buckets (kohya's defaults: 256-1024, step 64)")
    check.add_argument("--json", action="store_true", help="print the report as one JSON document")
    check.set_defaults(handler=run_check)

    prepare = actions.add_parser("prepare", help="build `TRAIN_ROOT/<repeats>_<token> <class>/` from a flat folder of images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prepare.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="a folder holding the images (and caption files)")
    prepare.add_argument("--token", required=True, help="the instance token, one rare word (e.g. usu)")
    prepare.add_argument("--class", dest="class_word", required=True, help="the class the subject belongs to (e.g. bear)")
    prepare.add_argument("--repeats", type=int, metavar="N", help="repeats per epoch (default: about 150 images per epoch)")
    prepare.add_argument("--out", type=Path, required=True, metavar="TRAIN_ROOT", help="the training root to create or add to")
    prepare.add_argument("--caption-extension", default=".txt", metavar=".EXT", help="caption files that come along (default .txt)")
    prepare.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    prepare.set_defaults(handler=run_prepare)

    from tui_lora.commands.caption import register_caption

    register_caption(actions)


# ---------------------------------------------------------------------------------------------
# check


@dataclass
class CheckSettings:
    train_dir: Path
    reg_dir: Path | None = None
    caption_extension: str = ".txt"
    resolution: int | None = None
    batch_size: int = 1
    model: Path | None = None
    tokenizer_dir: Path | None = None
    buckets: BucketSettings | None = None


def check_settings(args: argparse.Namespace) -> CheckSettings:
    """What to check: from an answers file when one is given, then the options on top."""
    from engine.config import load_answers
    from engine.errors import UserError

    source: Path = args.source
    if source.suffix.lower() == ".toml" and source.is_file():
        answers = load_answers(source, check_paths=False)
        settings = CheckSettings(
            train_dir=answers.dataset.train_dir,
            reg_dir=answers.dataset.reg_dir,
            caption_extension=answers.dataset.caption_extension,
            resolution=answers.dataset.resolution,
            batch_size=answers.training.batch_size,
            model=answers.model.path,
            tokenizer_dir=answers.model.tokenizer,
            buckets=answers.dataset.bucket_settings,
        )
    else:
        settings = CheckSettings(train_dir=source)
    if args.reg is not None:
        settings.reg_dir = args.reg
    if args.caption_extension is not None:
        if not args.caption_extension.startswith(".") or len(args.caption_extension) < 2:
            raise UserError(f"--caption-extension {args.caption_extension!r} must start with a dot", fix="e.g. --caption-extension .txt")
        settings.caption_extension = args.caption_extension
    if args.resolution is not None:
        if not 64 <= args.resolution <= 4096:
            raise UserError(f"--resolution {args.resolution} is out of range", fix="use 64 to 4096, e.g. 512")
        settings.resolution = args.resolution
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UserError(f"--batch-size {args.batch_size} must be 1 or more")
        settings.batch_size = args.batch_size
    if args.model is not None:
        settings.model, settings.tokenizer_dir = args.model, None
    if args.buckets:
        settings.buckets = BucketSettings(enabled=True)
    return settings


def run_check(args: argparse.Namespace) -> int:
    from engine.checks.dataset import Problem, check_dataset
    from engine.checks.tokens import load_model_tokenizer
    from engine.errors import UserError

    settings = check_settings(args)
    tokenizer, model_resolution, model_problem = None, None, None
    if settings.model is not None:
        try:
            tokenizer, model_resolution = load_model_tokenizer(settings.model, settings.tokenizer_dir)
        except UserError as exc:
            where = Path(exc.where) if exc.where else settings.model
            model_problem = Problem(
                "warning", "model.tokenizer", where, f"{exc.message}: the instance token is not checked",
                exc.fix or "give a base model whose tokenizer can be read (--model)",
            )
    report = check_dataset(
        settings.train_dir,
        settings.reg_dir,
        caption_extension=settings.caption_extension,
        resolution=settings.resolution or model_resolution or 512,
        tokenizer=tokenizer,
        batch_size=settings.batch_size,
        buckets=settings.buckets,
    )
    if model_problem is not None:
        report = report.with_problems(model_problem)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report)
    return report.exit_code


def print_report(report: DatasetReport, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(highlight=False, soft_wrap=True)
    reg = f" · reg {report.reg_dir}" if report.reg_dir else ""
    console.print(
        f"[bold]lora-wizard dataset check[/] · {escape(str(report.train_dir))}{escape(reg)} · "
        f"{report.resolution} px · captions {escape(report.caption_extension)} · batch {report.batch_size}"
    )
    for title, concepts in (("Training folders", report.train_concepts), ("Regularization folders", report.reg_concepts)):
        if concepts:
            console.print(f"\n[bold]{title}[/]")
            _print_concepts(concepts, console)
    if report.concepts:
        reg_items = f" + {report.reg_items_per_epoch} regularization" if report.reg_concepts else ""
        console.print(
            f"\nPer epoch: {report.train_items_per_epoch} training{reg_items} items = "
            f"{report.steps_per_epoch} steps at batch size {report.batch_size}"
        )
    if report.buckets:
        console.print(f"Training sizes (items per epoch): {', '.join(f'{size}: {n}' for size, n in report.buckets.items())}")
    if not report.tokenizer_checked:
        console.print("[dim]Instance token not checked against a tokenizer: give --model BASE for that.[/]")
    if report.problems:
        console.print("\n[bold]Problems[/]")
        for line in problem_lines(report.problems):
            console.print(line)
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "fix the errors before training" if errors else "ready to train" + (" (see the warnings)" if warnings else "")
    console.print(
        f"\nResult: {errors} {'error' if errors == 1 else 'errors'}, {warnings} {'warning' if warnings == 1 else 'warnings'}, "
        f"{report.images_decoded} images read: {verdict} (exit {report.exit_code})"
    )


def _print_concepts(concepts: list[ConceptReport], console: Console) -> None:
    from rich.markup import escape

    for concept in concepts:
        facts = [f"repeats {concept.repeats}"]
        if not concept.is_reg:
            facts.append(f"token {concept.instance_token}")
        facts += [
            f"class {concept.class_word or '-'}",
            _count(concept.images, "image"),
            _count(concept.captions, "caption"),
            _size_range(concept),
            f"{concept.items_per_epoch} items/epoch = {_count(concept.steps_per_epoch, 'step')}",
        ]
        console.print(f"  [bold]{escape(concept.folder.name)}[/]")
        console.print(f"    {escape(' · '.join(facts))}")
        for note in concept.notes:
            console.print(f"    [dim]note: {escape(note)}[/]")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _size_range(concept: ConceptReport) -> str:
    size_range = concept.size_range
    if size_range is None:
        return "no readable image"
    (w1, h1), (w2, h2) = size_range
    return f"{w1}x{h1} px" if (w1, h1) == (w2, h2) else f"{w1}x{h1} to {w2}x{h2} px"


def problem_lines(problems: tuple[Problem, ...] | list[Problem]) -> list[str]:
    """Rich markup lines: each problem with its fix. Past `SHOWN_PER_KIND` problems of one kind in
    one folder, the rest are summed up in one line."""
    from rich.markup import escape

    totals = Counter((p.code, p.path.parent) for p in problems)
    seen: Counter[tuple[str, Path]] = Counter()
    lines = []
    for problem in problems:
        key = (problem.code, problem.path.parent)
        seen[key] += 1
        if totals[key] > SHOWN_PER_KIND and seen[key] >= SHOWN_PER_KIND:
            if seen[key] == SHOWN_PER_KIND:
                rest = totals[key] - SHOWN_PER_KIND + 1
                lines.append(
                    f"  {MARKERS[problem.severity]}  … and {rest} more in {escape(str(problem.path.parent))}: "
                    f"the same problem ({problem.code}; --json lists them all)"
                )
            continue
        lines.append(f"  {MARKERS[problem.severity]}  {escape(str(problem.path))}: {escape(problem.message)}")
        lines.append(f"         [dim]fix: {escape(problem.fix)}[/]")
    return lines


# ---------------------------------------------------------------------------------------------
# prepare


def run_prepare(args: argparse.Namespace) -> int:
    from engine.dataset_prepare import TARGET_ITEMS_PER_EPOCH, prepare_dataset

    result = prepare_dataset(
        args.images_dir,
        token=args.token,
        class_word=args.class_word,
        out=args.out,
        repeats=args.repeats,
        caption_extension=args.caption_extension,
        copy=args.copy,
    )
    how = f"{result.linked} hard-linked, {result.copied} copied" if result.linked else f"{result.copied} copied"
    chosen = "" if args.repeats else f" (chosen: about {TARGET_ITEMS_PER_EPOCH} images per epoch)"
    print(f"Prepared {result.concept_folder}")
    print(f"  {_count(result.images, 'image')} and {_count(result.captions, 'caption file')} ({how}); the originals are unchanged")
    print(f"  {result.repeats} repeats{chosen}: {result.images * result.repeats} images per epoch, "
          f"{result.images * result.repeats * 10:,} steps in 10 epochs at batch size 1")
    if result.left_behind:
        names = ", ".join(p.name for p in result.left_behind[:5]) + (" ..." if len(result.left_behind) > 5 else "")
        print(f"  left behind (not images or {args.caption_extension} captions): {names}")
    for problem in result.left_out:
        print(f"  left out: {problem.path.name}: {problem.message} (fix: {problem.fix})")
    print(f"Next: lora-wizard dataset check {args.out}")
    return 0
