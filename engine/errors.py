"""Errors that are the user's to fix.

A `UserError` is caught by the command line and shown as one short message (no traceback),
with exit status 2. Everything else is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input: names what is wrong, where, and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | Path | None = None, fix: str | None = None, key: str | None = None):
        self.message = message
        self.where = str(where) if where is not None else None
        self.fix = fix
        # The answers-file key the fix is about ("model.path"): `fix` names it as the file does,
        # the wizard words the fix for its own field instead (tui_lora/remedies.py).
        self.key = key
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        lines.append(f"{self.where}: {self.message}" if self.where else self.message)
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class AnswersError(UserError):
    """The answers file is not valid (syntax, unknown key, wrong type, out of range, missing path)."""


class ModelFileError(UserError):
    """The base model (or a LoRA to start from) cannot be read or is not what it claims to be."""


class DatasetError(UserError):
    """The dataset folders do not follow the kohya convention, or hold unusable files."""
