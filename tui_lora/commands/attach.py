"""`lora-wizard attach RUN_DIR`: follow a run. On a terminal, the dashboard; otherwise (or with
`--plain`) plain progress lines until the run ends.

Exit status: 0 finished, 1 failed or stopped unexpectedly (the resume command is printed),
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import UserError
from tui_lora.follow_up import AppExit


def register(subparsers) -> None:
    parser = subparsers.add_parser("attach", help="follow a running or finished run")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--plain", action="store_true", help="plain progress lines (the default when not a terminal)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int | AppExit:
    folder = args.run_dir
    if not (folder / "events.jsonl").is_file():
        raise UserError("this run has no events.jsonl", where=folder, fix="give a `<name>.run` folder")
    if not args.plain and sys.stdin.isatty() and sys.stdout.isatty():
        from tui_lora.app import run_dashboard

        follow_up = run_dashboard(folder)
        return AppExit(dashboard_exit_status(folder), follow_up)
    return follow_plain(folder)


def dashboard_exit_status(folder: Path) -> int:
    """The run's exit status once the dashboard has closed, as plain `attach` gives it; a run left
    training in the background is no failure."""
    from engine.run_folder import run_status

    return run_status(folder).exit_code


def follow_plain(folder: Path) -> int:
    from engine.events import follow_events
    from engine.run_folder import RunState, engine_running, run_status
    from tui_lora.run_view import describe

    for event in follow_events(folder / "events.jsonl", keep_going=lambda: engine_running(folder)):
        line = describe(event)
        if line:
            print(line, flush=True)
    status = run_status(folder)
    if status.state == RunState.STOPPED_UNEXPECTEDLY:
        print(f"the engine stopped unexpectedly at step {status.step}", flush=True)
    if status.state.resumable:
        print(f"resume with: lora-wizard resume {folder}", file=sys.stderr)
    return status.exit_code
