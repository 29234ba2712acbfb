"""Rows for check results and dataset problems: a status word, what was found, and the fix."""

from __future__ import annotations

from pathlib import Path

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from tui_lora.i18n import t

STATUS_WIDTH = 4  # cells: "ok", "warn", "FAIL"; Japanese words are two wide characters
# Status -> CSS class; the words come from the catalogue (`status.ok` ...).
STATUS_CLASSES = {"ok": "ok", "warn": "warn", "warning": "warn", "fail": "fail", "error": "fail"}


def pad_cells(text: str, width: int) -> str:
    """`text` padded to `width` terminal cells (a Japanese character takes two)."""
    return text + " " * max(0, width - cell_len(text))


def shown_path(path: Path | str, cwd: Path | None = None) -> str:
    """A path as the user reads it: relative to the working folder when inside it."""
    path = Path(path)
    cwd = cwd or Path.cwd()
    try:
        relative = path.relative_to(cwd)
    except ValueError:
        return str(path)
    return str(relative) if str(relative) != "." else "."


class StatusRow(Horizontal):
    """`ok   Title: summary`, and when there is one, `→ remedy` under the summary."""

    def __init__(self, status: str, title: str, summary: str, remedy: str | None = None) -> None:
        super().__init__(classes=f"status-row {STATUS_CLASSES[status]}")
        self.status_word = pad_cells(t("status." + STATUS_CLASSES[status]), STATUS_WIDTH)
        text = Text()
        text.append(f"{title}: " if title else "", style="bold")
        text.append(summary)
        if remedy:
            text.append(f"\n→ {remedy}", style="italic")
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static(self.status_word, classes="status-word", markup=False)
        yield Static(self.text, classes="status-text")
