"""The run's last log lines (one per event, as `attach` prints them) and its checkpoints."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui_lora.i18n import t
from tui_lora.run_view import RunView


def log_lines(entries: list[str]) -> list[str]:
    """The log's lines with each run of step lines collapsed into its last one: steps come in
    floods, and only the latest is worth a row."""
    lines: list[str] = []
    for entry in entries:
        for line in entry.splitlines():
            if line.startswith("step ") and lines and lines[-1].startswith("step "):
                lines[-1] = line
            else:
                lines.append(line)
    return lines


class LogPanel(Static):
    def show(self, view: RunView) -> None:
        rows = max(1, self.content_size.height or 8)
        text = Text(no_wrap=True, overflow="ellipsis")
        if view.checkpoints:
            text.append(t("dashboard.checkpoints", count=len(view.checkpoints), step=view.checkpoints[-1][0]) + "\n", style="bold")
            rows -= 1
        lines = log_lines(list(view.log))
        for line in lines[-rows:] if rows > 0 else []:
            text.append(line + "\n")
        text.rstrip()
        self.update(text)
