"""The Rich progress of `lora-wizard train` on a terminal: its time left comes from the times
between the engine's reports (as the dashboard's), though the steps arrive five at a time."""

from __future__ import annotations

import io

from rich.console import Console

from tui_lora.progress import RichProgress

START = 1_000_000.0


def step_events(first: int, last: int, when: float) -> list[dict]:
    """A batch of step events written at one time, as the engine writes them."""
    return [{"kind": "step", "time": when, "step": s, "epoch": 1, "loss": 0.1, "lr": 1e-4, "total_steps": 100} for s in range(first, last + 1)]


def shown(progress: RichProgress) -> str:
    console = Console(width=160, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(progress.progress.get_renderable())
    return console.file.getvalue()


def test_time_left_counts_the_time_between_batches_of_steps():
    now = [START]
    progress = RichProgress(Console(file=io.StringIO()), clock=lambda: now[0])
    events = [
        {"kind": "started", "time": START, "run_dir": "run", "total_steps": 100, "epochs": 2},
        {"kind": "ready", "time": START, "device": "cpu", "precision": "fp32"},
        *step_events(1, 5, START + 10),
        *step_events(6, 10, START + 20),  # 10 steps in 20 s: 0.5 steps a second
    ]
    for event in events:
        progress.on_event(event)
    now[0] = START + 20
    assert "10/100" in shown(progress)
    assert shown(progress).rstrip().endswith("3:00")  # 90 steps left at 0.5 a second
    now[0] = START + 50  # no report for 30 s: it counts down meanwhile
    assert shown(progress).rstrip().endswith("2:30")
