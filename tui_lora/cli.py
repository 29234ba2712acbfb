"""The `lora-wizard` command: the wizard with no arguments, or a subcommand.

A `UserError` from the engine is the user's to fix: it is printed as one short message and the
command exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from tui_lora.commands import register_all

    parser = argparse.ArgumentParser(
        prog="lora-wizard",
        description="Train Stable Diffusion LoRAs, DreamBooth style, from a keyboard-only terminal wizard.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_all(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            from tui_lora.app import run_app  # the app's imports only when it is opened

            return run_app()
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
