"""One module per `lora-wizard` subcommand; each exposes `register(subparsers)`.

A command's handler takes the parsed arguments and returns the exit status. Heavy imports
(torch, diffusers) happen inside handlers, never at module level.
"""

from __future__ import annotations

import importlib

# The order here is the order of `lora-wizard --help`.
COMMAND_MODULES = ["check", "dataset", "reg", "train", "resume", "attach", "runs", "control", "generate", "demo"]


def register_all(subparsers) -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"tui_lora.commands.{name}")
        module.register(subparsers)
