"""`lora-wizard stop RUN_DIR` and `lora-wizard checkpoint RUN_DIR`: requests to a running engine.

They are files in the run folder that the engine reads between steps: no network listener.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import UserError


def register(subparsers) -> None:
    stop = subparsers.add_parser("stop", help="write a checkpoint, then stop a running engine")
    stop.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    stop.set_defaults(handler=lambda args: send(args, "stop"))
    checkpoint = subparsers.add_parser("checkpoint", help="ask a running engine to write a checkpoint now")
    checkpoint.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    checkpoint.set_defaults(handler=lambda args: send(args, "checkpoint"))


def send(args: argparse.Namespace, what: str) -> int:
    from engine.run_folder import engine_running, request

    folder = args.run_dir
    if not (folder / "answers.toml").is_file():
        raise UserError("this is not a run folder (no answers.toml)", where=folder)
    if not engine_running(folder):
        raise UserError("no engine is running this run", where=folder, fix=f"see `lora-wizard runs {folder.parent}`")
    request(folder, what)
    done = "it will write a checkpoint and stop after the current step" if what == "stop" else "it will write a checkpoint after the current step"
    print(f"asked the engine: {done}")
    return 0
