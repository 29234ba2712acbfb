"""The dashboard's top lines: a progress bar, then step, epoch, speed, elapsed time and ETA."""

from __future__ import annotations

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui_lora.i18n import t
from tui_lora.run_view import RunView, format_duration


def progress_numbers(view: RunView, now: float) -> Text:
    """`Step 360/800  Epoch 5/10  2.41 it/s  Elapsed 2:31  ETA 3:03`."""
    speed = view.steps_per_second()
    parts = [
        (t("dashboard.step"), f"{view.step}/{view.total_steps or '?'}"),
        (t("dashboard.epoch"), f"{view.epoch}/{view.epochs or '?'}"),
        (t("dashboard.speed"), f"{speed:.2f} it/s" if speed is not None else "-"),
        (t("dashboard.elapsed"), format_duration(view.elapsed_seconds(now))),
        (t("dashboard.eta"), format_duration(view.eta_seconds(now))),
    ]
    text = Text(no_wrap=True, overflow="ellipsis")
    for index, (label, value) in enumerate(parts):
        text.append("  " if index else "")
        text.append(f"{label} ", style="dim")
        text.append(value, style="bold")
    return text


class ProgressPanel(Static):
    def show(self, view: RunView, now: float) -> None:
        bar = Table.grid(expand=True)
        bar.add_column(ratio=1)
        bar.add_column(width=14, justify="right")
        state = t("dashboard.state." + view.state.key)
        bar.add_row(ProgressBar(total=1.0, completed=view.fraction), Text(f" {view.fraction:4.0%} {state}", no_wrap=True))
        self.update(Group(bar, progress_numbers(view, now)))
