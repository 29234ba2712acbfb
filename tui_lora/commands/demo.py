"""`lora-wizard demo [DIR] [--sdxl | --flux]`: a tiny model, dataset and answers file, built offline in seconds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import load_answers
from tui_lora.follow_up import AppExit


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="build a tiny offline demo (model, dataset, answers) and open the wizard on it")
    parser.add_argument("folder", type=Path, nargs="?", default=None, metavar="DIR",
                        help="where to build it (default: lora-wizard-demo, lora-wizard-sdxl-demo with --sdxl, lora-wizard-flux-demo with --flux)")
    parser.add_argument("--headless", action="store_true", help="train it straight away, without the wizard")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--sdxl", action="store_true", help="a tiny SDXL-shaped model instead of an SD 1.x one")
    kind.add_argument("--flux", action="store_true", help="a tiny FLUX.1 dev model in kohya's four single files")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int | AppExit:
    from engine.demo import create_demo

    default = "lora-wizard-flux-demo" if args.flux else "lora-wizard-sdxl-demo" if args.sdxl else "lora-wizard-demo"
    answers_path = create_demo(args.folder or Path(default), sdxl=args.sdxl, flux=args.flux)
    if args.headless:
        from engine.plan import prepare_plan
        from engine.run_folder import create_run_folder
        from tui_lora.commands.train import run_here

        plan = prepare_plan(load_answers(answers_path))
        return run_here(plan, create_run_folder(plan.answers))
    if sys.stdin.isatty() and sys.stdout.isatty():
        from tui_lora.app import run_app

        return AppExit(0, run_app(answers_path))  # the wizard, on the demo's answers
    print(f"demo ready: {answers_path}")
    print(f"train it with:  lora-wizard train {answers_path}")
    return 0
