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
from engine.errors import UserError
from engine.plan import TrainingPlan


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a LoRA from an answers file (headless)")
    parser.add_argument("answers", type=Path, metavar="FILE", help="the answers file (TOML) the wizard saved")
    parser.add_argument("--dry-run", action="store_true", help="validate everything and print the plan; train nothing")
    parser.add_argument("--detach", action="store_true", help="run the engine in the background, immune to the terminal closing")
    add_launcher_options(parser)
    parser.set_defaults(handler=run)


def add_launcher_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several GPUs (data parallel, through torchrun)")
    group.add_argument("--processes", type=int, metavar="N", help="processes (GPUs) on this machine; overrides [training] processes")
    group.add_argument("--nnodes", type=int, metavar="N", help="machines taking part (torchrun --nnodes), each with --processes processes")
    group.add_argument("--node-rank", metavar="R", help="this machine's rank (torchrun --node-rank)")
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous address (torchrun --rdzv-endpoint)")


def launcher_args(args: argparse.Namespace) -> list[str]:
    """torchrun's multi-node options, passed through as given."""
    if not args.nnodes:
        return []
    options = [f"--nnodes={args.nnodes}", "--rdzv-backend=c10d"]
    if args.node_rank is not None:
        options.append(f"--node-rank={args.node_rank}")
    if args.rdzv_endpoint:
        options.append(f"--rdzv-endpoint={args.rdzv_endpoint}")
    return options


def processes_per_machine(args: argparse.Namespace, answers, *, frozen: bool = False):
    """(answers, processes to start here). With several machines (`--nnodes`), `--processes` (or
    `[training] processes`) counts this machine's processes, and the run's answers count them all,
    as the engine and the step arithmetic do (the world size). `frozen`: a run's answers, which
    already count them all."""
    machines = args.nnodes or 1
    if machines < 1:
        raise UserError(f"--nnodes {machines}: give 1 or more machines", fix="e.g. --nnodes 2")
    if args.processes:
        here = args.processes
    else:
        here = answers.training.processes // machines if frozen else answers.training.processes
    if here < 1:
        raise UserError(f"{answers.training.processes} processes cannot be shared by {machines} machines", fix="give --processes, the processes on each machine")
    total = here * machines
    if total != answers.training.processes:
        answers = answers.model_copy(update={"training": answers.training.model_copy(update={"processes": total})})
    return answers, here


def print_plan(plan: TrainingPlan, file=sys.stdout) -> None:
    print("Plan", file=file)
    for key, value in plan.settings().items():
        print(f"  {key:<10} {value}", file=file)
    print("Steps", file=file)
    for line in plan.breakdown():
        print(f"  {line}", file=file)


def run(args: argparse.Namespace) -> int:
    from engine.launch import prepare_run, spawn_detached, start_run
    from engine.plan import prepare_plan

    answers, here = processes_per_machine(args, load_answers(args.answers))
    if args.dry_run:
        print_plan(prepare_plan(answers))
        print("Dry run: nothing was trained or written.")
        return 0
    launcher = launcher_args(args)
    if args.detach:  # the wizard's Start does the same (engine.launch.start_run)
        folder, pid = start_run(answers, spawn=lambda folder: spawn_detached(folder, processes=here, launcher_args=launcher))
        return announce_detached(folder, pid)
    plan, folder = prepare_run(answers)
    return run_here(plan, folder, launcher=launcher, here=here)


def detach(folder: Path, plan: TrainingPlan, *, resume: bool = False, launcher: list[str] | None = None, here: int | None = None) -> int:
    """`here`: the processes to start on this machine (default: all the run's)."""
    from engine.launch import spawn_detached

    pid = spawn_detached(folder, resume=resume, processes=here or plan.answers.training.processes, launcher_args=launcher)
    return announce_detached(folder, pid)


def announce_detached(folder: Path, pid: int) -> int:
    print(folder)
    print(f"engine running in the background (pid {pid}); follow it with: lora-wizard attach {folder}", file=sys.stderr)
    return 0


def run_here(plan: TrainingPlan, folder: Path, *, resume: bool = False, launcher: list[str] | None = None, here: int | None = None) -> int:
    """Train from this terminal, with its progress here: in this process, or, for several
    processes, in torchrun's children whose events are relayed."""
    if sys.stdout.isatty():
        from tui_lora.progress import RichProgress

        print_plan(plan)
        with RichProgress() as progress:
            status = train_with(plan, folder, progress.on_event, resume=resume, launcher=launcher, here=here)
        progress.summary()
        return status
    return train_with(plan, folder, print_json_line, resume=resume, launcher=launcher, here=here)


def train_with(plan: TrainingPlan, folder: Path, listener, *, resume: bool, launcher: list[str] | None, here: int | None = None) -> int:
    from engine.launch import execute_run, run_launched
    from engine.run_folder import RunLock

    processes = here or plan.answers.training.processes
    if processes > 1 or launcher:
        return run_launched(folder, [listener], resume=resume, processes=processes, launcher_args=launcher)
    with RunLock(folder):
        return execute_run(plan, folder, [listener], resume=resume)


def print_json_line(event: dict) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)
