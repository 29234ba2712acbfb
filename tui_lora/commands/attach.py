"""`lora-wizard attach RUN_DIR`: follow a run's events as plain progress lines until it ends.

Exit status: 0 finished, 1 failed or stopped unexpectedly (the resume command is printed),
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import UserError

EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130, "stopped unexpectedly": 1}


def register(subparsers) -> None:
    parser = subparsers.add_parser("attach", help="follow a running or finished run")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--plain", action="store_true", help="plain progress lines (the default when not a terminal)")
    parser.set_defaults(handler=run)


def describe(event: dict) -> str | None:
    kind = event["kind"]
    if kind == "started":
        return f"started: {event['total_steps']} steps, {event['epochs']} epochs"
    if kind == "ready":
        return f"training on {event['device']} ({event['precision']})"
    if kind == "step":
        return f"step {event['step']}/{event['total_steps']}  epoch {event['epoch']}  loss {event['loss']:.4f}  lr {event['lr']:.2e}"
    if kind == "epoch":
        return f"epoch {event['epoch']}/{event['epochs']} done"
    if kind in ("checkpoint", "saved"):
        return f"{kind}: {event['path']}"
    if kind == "resumed":
        return f"resumed from step {event['step']}"
    if kind == "finished":
        return f"finished: {event['lora']}"
    if kind == "failed":
        return f"failed: {event['message']}\n  remedy: {event.get('remedy', '')}"
    if kind == "interrupted":
        return f"interrupted at step {event['step']} ({event['reason']})"
    return None


def run(args: argparse.Namespace) -> int:
    from engine.events import follow_events
    from engine.runs import engine_running, run_status

    folder = args.run_dir
    if not (folder / "events.jsonl").is_file():
        raise UserError("this run has no events.jsonl", where=folder, fix="give a `<name>.run` folder")
    for event in follow_events(folder / "events.jsonl", keep_going=lambda: engine_running(folder)):
        line = describe(event)
        if line:
            print(line, flush=True)
    status = run_status(folder)
    if status.state == "stopped unexpectedly":
        print(f"the engine stopped unexpectedly at step {status.step}", flush=True)
    if status.state in ("failed", "stopped unexpectedly", "interrupted"):
        print(f"resume with: lora-wizard resume {folder}", file=sys.stderr)
    return EXIT_CODES.get(status.state, 1)
