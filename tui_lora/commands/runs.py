"""`lora-wizard runs [DIR]`: the runs under a folder, with their state and progress."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("runs", help="list training runs and their state")
    parser.add_argument("folder", type=Path, nargs="?", default=Path("."), metavar="DIR", help="an output folder (default: here)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from engine.run_folder import find_runs, run_status

    runs = find_runs(args.folder)
    if not runs:
        print(f"no runs under {args.folder}")
        return 0
    print(f"{'state':<22} {'steps':>13}  run")
    for folder in runs:
        status = run_status(folder)
        print(f"{status.state:<22} {status.progress:>13}  {folder}")
    return 0
