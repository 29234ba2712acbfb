"""The Rich progress display of a headless run on a terminal, fed by the run's events.

The time left is the dashboard's (`RunView.eta_seconds`), not Rich's own estimate: the engine
writes its steps in batches with one timestamp, so Rich, which times its `update` calls, sees
five steps in no time and shows a second or so left for most of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from engine.events import Failed, Finished, Ready, Saved, Started, Step, parse_event
from tui_lora.run_view import RunView, format_duration


class TimeLeftColumn(ProgressColumn):
    """The run's time left, as the dashboard computes it from the times between reports."""

    def __init__(self, view: RunView, clock: Callable[[], float]):
        super().__init__()
        self.view, self.clock = view, clock

    def render(self, task: Task) -> Text:
        return Text(format_duration(self.view.eta_seconds(self.clock())), style="progress.remaining")


class RichProgress:
    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.time):
        self.console = console or Console()
        self.view = RunView(Path("."))
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeLeftColumn(self.view, clock),
            console=self.console,
        )
        self.task = self.progress.add_task("loading model", total=None, epoch="-", loss="-")

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_event(self, data: dict[str, Any]) -> None:
        self.view.apply(data)
        event = parse_event(data)
        if isinstance(event, Started):
            self.console.print(f"run folder: {event.run_dir}")
            self.progress.update(self.task, total=event.total_steps)
        elif isinstance(event, Ready):
            for note in event.notes:
                self.console.print(f"note: {note}")
            self.progress.update(self.task, description="training")
        elif isinstance(event, Step):
            self.progress.update(self.task, completed=event.step, epoch=event.epoch, loss=f"{event.loss:.4f}")
        elif isinstance(event, Saved):
            self.console.print(f"saved {event.path}")

    def summary(self) -> None:
        final = self.view.final
        if isinstance(final, Finished):
            self.console.print(f"[green]finished[/]: {final.lora} ({final.steps} steps)")
        elif isinstance(final, Failed):
            self.console.print(f"[red]failed[/]: {final.message}\n  remedy: {final.remedy}")
