"""A path entry with completion from the file system, as in a shell.

Tab completes as bash does: as far as every matching entry agrees (a single match in full, a
folder with its `/`), never past what the user typed when that is an entry itself (`photos` with
`photos/` and `photos_bad/` beside it stays `photos`). When the matches go separate ways the
first Tab lists them under the field; a second Tab moves on, as does Tab with nothing to
complete, so the field never traps the focus. The completion shows greyed at the end of the
text as it is typed; → takes it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from textual.binding import Binding
from textual.suggester import Suggester
from textual.widgets import Input

from tui_lora.i18n import t
from tui_lora.widgets.form import FormRow

# Entries listed per folder at most: a completion must stay instant on a huge folder.
MAX_ENTRIES = 2000
# Candidates listed under the field at most.
MAX_SHOWN = 8


@dataclass(frozen=True)
class Completion:
    value: str | None  # the completed text, when Tab has something to add
    candidates: tuple[str, ...] = ()  # the entries that match, when they go separate ways


def path_completion(value: str, *, suffixes: tuple[str, ...] = (), folders_only: bool = False, cwd: Path | None = None) -> Completion:
    """What Tab does with a partly typed path. `suffixes` limits files to those extensions
    (folders are always offered, to walk into)."""
    if not value or value.endswith(("/", os.sep)):
        return Completion(None)  # nothing typed after the folder: Tab moves on
    typed = Path(value).expanduser()
    folder = typed.parent if typed.is_absolute() else (cwd or Path.cwd()) / typed.parent
    prefix = typed.name
    try:
        with os.scandir(folder) as listing:
            entries = sorted(islice(listing, MAX_ENTRIES), key=lambda entry: entry.name)
    except OSError:
        return Completion(None)
    matches: dict[str, bool] = {}  # name -> is a folder
    for entry in entries:
        if not entry.name.startswith(prefix) or (entry.name.startswith(".") and not prefix.startswith(".")):
            continue
        is_dir = entry.is_dir()
        if not is_dir and (folders_only or (suffixes and not entry.name.lower().endswith(suffixes))):
            continue
        matches[entry.name] = is_dir
    head = value[: len(value) - len(prefix)]
    if len(matches) == 1:
        (name, is_dir), = matches.items()
        return Completion(None if name == prefix else head + name + ("/" if is_dir else ""))
    common = os.path.commonprefix(list(matches))
    if len(common) > len(prefix):
        return Completion(head + common)
    return Completion(None, tuple(name + ("/" if is_dir else "") for name, is_dir in matches.items()))


def complete_path(value: str, *, suffixes: tuple[str, ...] = (), folders_only: bool = False, cwd: Path | None = None) -> str | None:
    """The completed text of a partly typed path, or None when Tab has nothing to add."""
    return path_completion(value, suffixes=suffixes, folders_only=folders_only, cwd=cwd).value


def candidates_line(candidates: tuple[str, ...]) -> str:
    shown = "  ".join(candidates[:MAX_SHOWN])
    more = len(candidates) - MAX_SHOWN
    return t("path.candidates", names=shown) + (" " + t("path.more", count=more) if more > 0 else "")


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
        self.listed_for: str | None = None  # the value whose candidates are listed under the field
        super().__init__(value, suggester=PathSuggester(suffixes=suffixes, folders_only=folders_only), compact=True, **kwargs)
        self.suffixes = suffixes
        self.folders_only = folders_only

    def action_complete_or_next(self) -> None:
        # Completed from the value as it is now (the shown suggestion may lag a fast typist).
        completion = path_completion(self.value, suffixes=self.suffixes, folders_only=self.folders_only) if self.cursor_at_end else Completion(None)
        if completion.value:
            self.value = completion.value
            self.cursor_position = len(self.value)
        elif completion.candidates and self.listed_for != self.value:
            self.listed_for = self.value
            self.show_candidates(candidates_line(completion.candidates))
        else:
            self.screen.focus_next()

    def show_candidates(self, line: str) -> None:
        """Under the field in place of its help, until the text changes (in a form's row);
        else as a notification."""
        row = self.form_row
        if row is not None:
            row.show_note(line)
        else:
            self.notify(line, markup=False)

    def watch_value(self, value: str) -> None:
        if self.listed_for is not None and value != self.listed_for:
            self.listed_for = None
            if self.form_row is not None:
                self.form_row.show_note(None)

    @property
    def form_row(self) -> FormRow | None:
        return next((node for node in self.ancestors if isinstance(node, FormRow)), None)
