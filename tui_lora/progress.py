"""The Rich progress display of a headless run on a terminal, fed by the run's events."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("loading model", total=None, epoch="-", loss="-")
        self.last: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "started":
            self.console.print(f"run folder: {event['run_dir']}")
            self.progress.update(self.task, total=event["total_steps"])
        elif kind == "ready":
            for note in event.get("notes") or []:
                self.console.print(f"note: {note}")
            self.progress.update(self.task, description="training")
        elif kind == "step":
            self.progress.update(
                self.task, completed=event["step"], epoch=event["epoch"], loss=f"{event['loss']:.4f}"
            )
        elif kind == "saved":
            self.console.print(f"saved {event['path']}")
        elif kind in ("finished", "failed", "interrupted"):
            self.last = event

    def summary(self) -> None:
        kind = self.last.get("kind")
        if kind == "finished":
            self.console.print(f"[green]finished[/]: {self.last['lora']} ({self.last['steps']} steps)")
        elif kind == "failed":
            self.console.print(f"[red]failed[/]: {self.last['message']}\n  remedy: {self.last.get('remedy', '')}")
