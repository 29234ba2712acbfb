"""A path entry with completion from the file system, as in a shell.

Typing the start of a name suggests the first entry of that folder that begins with it (folders
end with `/`); → or Tab takes the suggestion. With nothing to complete, Tab moves on as usual,
so the field never traps the focus.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

from textual.binding import Binding
from textual.suggester import Suggester
from textual.widgets import Input

# Entries listed per folder at most: a completion must stay instant on a huge folder.
MAX_ENTRIES = 2000


def complete_path(value: str, *, suffixes: tuple[str, ...] = (), folders_only: bool = False, cwd: Path | None = None) -> str | None:
    """The completion of a partly typed path, or None. `suffixes` limits files to those
    extensions (folders are always offered, to walk into)."""
    if not value or value.endswith(("/", os.sep)):
        return None  # nothing typed after the folder: Tab moves on
    typed = Path(value).expanduser()
    folder = typed.parent if typed.is_absolute() else (cwd or Path.cwd()) / typed.parent
    prefix = typed.name
    try:
        with os.scandir(folder) as listing:
            entries = sorted(islice(listing, MAX_ENTRIES), key=lambda entry: entry.name)
    except OSError:
        return None
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.name == prefix or entry.name.startswith("."):
            continue
        is_dir = entry.is_dir()
        if not is_dir and (folders_only or (suffixes and not entry.name.lower().endswith(suffixes))):
            continue
        return value[: len(value) - len(prefix)] + entry.name + ("/" if is_dir else "")
    return None


class PathSuggester(Suggester):
    def __init__(self, *, suffixes: tuple[str, ...] = (), folders_only: bool = False) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes = suffixes
        self.folders_only = folders_only

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value, suffixes=self.suffixes, folders_only=self.folders_only)


class PathInput(Input):
    """An Input for a file or folder path; Tab completes when there is something to complete."""

    BINDINGS = [Binding("tab", "complete_or_next", show=False)]

    def __init__(self, value: str = "", *, suffixes: tuple[str, ...] = (), folders_only: bool = False, **kwargs) -> None:
        super().__init__(value, suggester=PathSuggester(suffixes=suffixes, folders_only=folders_only), compact=True, **kwargs)
        self.suffixes = suffixes
        self.folders_only = folders_only

    def action_complete_or_next(self) -> None:
        # Completed from the value as it is now (the shown suggestion may lag a fast typist).
        completion = complete_path(self.value, suffixes=self.suffixes, folders_only=self.folders_only) if self.cursor_at_end else None
        if completion:
            self.value = completion
            self.cursor_position = len(self.value)
        else:
            self.screen.focus_next()
