"""`python -m engine run RUN_DIR [--resume]`: the engine process of a prepared run folder.

This is what a detached run executes: it takes the run's lock first (so the run shows as running
from its first second), then trains, writing only to the run folder.
"""

from __future__ import annotations

import argparse
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

    from engine.events import EventLog
    from engine.plan import prepare_plan
    from engine.runs import RunLock, execute_run, load_run_answers

    try:
        with RunLock(args.run_dir):
            try:
                plan = prepare_plan(load_run_answers(args.run_dir), for_resume=args.resume)
            except UserError as exc:
                with EventLog(args.run_dir / "events.jsonl") as events:
                    events.emit("failed", message=exc.render(), remedy=exc.fix or "")
                raise
            return execute_run(plan, args.run_dir, resume=args.resume)
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
