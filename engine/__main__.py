"""`python -m engine run RUN_DIR [--resume]`: the engine process of a prepared run folder.

This is what a detached run executes, and what torchrun starts once per process for a
data-parallel run. The main process takes the run's lock first (so the run shows as running from
its first second) and alone writes events and outputs; the others only train.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from engine.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train in a prepared run folder")
    run.add_argument("run_dir", type=Path)
    run.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    args = parser.parse_args(argv)
    if int(os.environ.get("RANK", "0")) == 0:
        return run_main_process(args.run_dir, resume=args.resume)
    return run_other_process(args.run_dir, resume=args.resume)


def run_main_process(run_dir: Path, *, resume: bool) -> int:
    from engine.events import EventLog, Failed
    from engine.launch import execute_run
    from engine.plan import prepare_plan
    from engine.run_folder import RunLock, load_run_answers

    try:
        with RunLock(run_dir):
            try:
                plan = prepare_plan(load_run_answers(run_dir), for_resume=resume)
            except UserError as exc:
                with EventLog(run_dir / "events.jsonl") as events:
                    events.emit(Failed(message=exc.render(), remedy=exc.fix or ""))
                raise
            return exit_status_for_launcher(execute_run(plan, run_dir, resume=resume))
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code


def exit_status_for_launcher(status: int) -> int:
    """The main process's exit status; under torchrun a stop ends it with 0.

    torchrun takes any other status for a crash: it prints a ChildFailedError traceback and
    terminates the other processes while they are still exiting. The run's `interrupted` event
    records the stop, and `lora-wizard train` / `resume` (engine.launch.run_launched) turn that
    event into the 130 / 143 a one-process run exits with."""
    from engine.run_folder import INTERRUPTED_EXIT

    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    return 0 if under_torchrun and status in INTERRUPTED_EXIT.values() else status


def run_other_process(run_dir: Path, *, resume: bool) -> int:
    """A data-parallel helper process: trains its share, writes nothing but its RNG state."""
    from engine.controls import Interrupted, TrainingFailed
    from engine.events import EventLog
    from engine.plan import prepare_plan
    from engine.run_folder import load_run_answers
    from engine.train import train

    # Signals reach every process; the main one decides when to stop and tells the others.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    plan = prepare_plan(load_run_answers(run_dir), for_resume=True)
    try:
        train(plan, EventLog(None), run_dir=run_dir, resume=resume)
    except (Interrupted, TrainingFailed):
        return 0  # the main process records why
    return 0


if __name__ == "__main__":
    sys.exit(main())
