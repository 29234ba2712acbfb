"""`lora-wizard train FILE`: train headless from an answers file.

On a terminal the progress is a Rich display; otherwise every event is printed as one JSON
line (the first says where the run folder is). `--dry-run` validates and prints the plan only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.config import Answers, load_answers
from engine.plan import TrainingPlan


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a LoRA from an answers file (headless)")
    parser.add_argument("answers", type=Path, metavar="FILE", help="the answers file (TOML) the wizard saved")
    parser.add_argument("--dry-run", action="store_true", help="validate everything and print the plan; train nothing")
    parser.set_defaults(handler=run)


def prepare(answers_path: Path) -> TrainingPlan:
    """Everything checked before torch loads: answers, model files, dataset, output."""
    from engine.dataset import open_image
    from engine.errors import ModelFileError
    from engine.families import inspect_base_model
    from engine.families.sd import FAMILIES
    from engine.plan import plan_training
    from engine.train import check_output_free

    answers = load_answers(answers_path)
    check_output_free(answers)
    info = inspect_base_model(answers.model.path, tokenizer=answers.model.tokenizer)
    if info.tokenizer is None:
        raise ModelFileError(f"no tokenizer found for this model: {info.tokenizer_note}", where=info.source,
                             fix="set `[model] tokenizer` to a folder holding vocab.json and merges.txt")
    family = FAMILIES[info.family]
    plan = plan_training(answers, family_label=info.label, default_resolution=family.default_resolution)
    for example in dict.fromkeys(e.path for e in (*plan.dataset.train_examples, *plan.dataset.reg_examples)):
        open_image(example)
    return plan


def print_plan(plan: TrainingPlan, file=sys.stdout) -> None:
    print("Plan", file=file)
    for key, value in plan.settings().items():
        print(f"  {key:<10} {value}", file=file)
    print("Steps", file=file)
    for line in plan.breakdown():
        print(f"  {line}", file=file)


def run(args: argparse.Namespace) -> int:
    plan = prepare(args.answers)
    if args.dry_run:
        print_plan(plan)
        print("Dry run: nothing was trained or written.")
        return 0
    return start(plan.answers, plan)


def start(answers: Answers, plan: TrainingPlan) -> int:
    from engine.runs import create_run_folder, execute_run

    folder = create_run_folder(answers)
    if sys.stdout.isatty():
        from tui_lora.progress import RichProgress

        print_plan(plan)
        with RichProgress() as progress:
            status = execute_run(plan, folder, [progress.on_event])
        progress.summary()
        return status
    return execute_run(plan, folder, [print_json_line])


def print_json_line(event: dict) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)
