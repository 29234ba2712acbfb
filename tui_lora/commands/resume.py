"""`lora-wizard resume RUN_DIR`: continue a run from its newest valid checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import UserError
from tui_lora.commands.train import add_launcher_options, launcher_args, processes_per_machine


def register(subparsers) -> None:
    parser = subparsers.add_parser("resume", help="continue an interrupted run from its newest checkpoint")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder, <output>/<name>.run")
    parser.add_argument("--detach", action="store_true", help="run the engine in the background")
    add_launcher_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.checkpoint import check_same_dataset, dataset_fingerprint, newest_fingerprint
    from engine.plan import prepare_plan
    from engine.run_folder import RunState, load_run_answers, run_status
    from tui_lora.commands.train import detach, run_here

    folder = args.run_dir
    answers, here = processes_per_machine(args, load_run_answers(folder), frozen=True)
    status = run_status(folder)
    if status.state == RunState.RUNNING:
        raise UserError(
            "this run is already running",
            where=folder,
            fix=f"follow it with `lora-wizard attach {folder}`; stop it with `lora-wizard stop {folder}`",
        )
    if status.state == RunState.FINISHED:
        raise UserError("this run has finished; there is nothing to resume", where=folder, fix=f"its LoRA: {answers.lora_path}")
    plan = prepare_plan(answers, for_resume=True)
    saved = newest_fingerprint(folder)
    if saved is not None:  # refuse a changed dataset before loading anything heavy
        check_same_dataset(saved, dataset_fingerprint(plan.dataset), folder)
    if args.detach:
        return detach(folder, plan, resume=True, launcher=launcher_args(args), here=here)
    return run_here(plan, folder, resume=True, launcher=launcher_args(args), here=here)
