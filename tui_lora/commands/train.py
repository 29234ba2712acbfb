"""`lora-wizard train FILE`: train headless from an answers file.

On a terminal the progress is a Rich display; otherwise every event is printed as one JSON
line (the first says where the run folder is). `--dry-run` validates and prints the plan only;
`--detach` starts the engine as its own process and returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.config import load_answers
from engine.plan import TrainingPlan


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a LoRA from an answers file (headless)")
    parser.add_argument("answers", type=Path, metavar="FILE", help="the answers file (TOML) the wizard saved")
    parser.add_argument("--dry-run", action="store_true", help="validate everything and print the plan; train nothing")
    parser.add_argument("--detach", action="store_true", help="run the engine in the background, immune to the terminal closing")
    parser.set_defaults(handler=run)


def print_plan(plan: TrainingPlan, file=sys.stdout) -> None:
    print("Plan", file=file)
    for key, value in plan.settings().items():
        print(f"  {key:<10} {value}", file=file)
    print("Steps", file=file)
    for line in plan.breakdown():
        print(f"  {line}", file=file)


def run(args: argparse.Namespace) -> int:
    from engine.plan import prepare_plan
    from engine.runs import create_run_folder

    plan = prepare_plan(load_answers(args.answers))
    if args.dry_run:
        print_plan(plan)
        print("Dry run: nothing was trained or written.")
        return 0
    folder = create_run_folder(plan.answers)
    if args.detach:
        return detach(folder)
    return run_here(plan, folder)


def detach(folder: Path, *, resume: bool = False) -> int:
    from engine.runs import spawn_detached

    pid = spawn_detached(folder, resume=resume)
    print(folder)
    print(f"engine running in the background (pid {pid}); follow it with: lora-wizard attach {folder}", file=sys.stderr)
    return 0


def run_here(plan: TrainingPlan, folder: Path, *, resume: bool = False) -> int:
    """Train in this process, holding the run's lock, with progress on this terminal."""
    from engine.runs import RunLock, execute_run

    with RunLock(folder):
        if sys.stdout.isatty():
            from tui_lora.progress import RichProgress

            print_plan(plan)
            with RichProgress() as progress:
                status = execute_run(plan, folder, [progress.on_event], resume=resume)
            progress.summary()
            return status
        return execute_run(plan, folder, [print_json_line], resume=resume)


def print_json_line(event: dict) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)
