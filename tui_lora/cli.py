"""The `lora-wizard` command: the wizard with no arguments, or a subcommand.

A `UserError` from the engine is the user's to fix: it is printed as one short message and the
command exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.errors import UserError
from tui_lora.follow_up import AppExit, FollowUp


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

            return finish(AppExit(0, run_app()))
        return finish(args.handler(args))
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def finish(result: int | AppExit | None) -> int:
    """A handler's exit status; after the app, the commands it left for run first."""
    if not isinstance(result, AppExit):
        return int(result or 0)
    return run_follow_up(result.follow_up) if result.follow_up else result.status


def run_follow_up(commands: FollowUp) -> int:
    """Run `lora-wizard` commands one after the other, stopping at the first that fails."""
    for command in commands:
        status = main(command)
        if status != 0:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
