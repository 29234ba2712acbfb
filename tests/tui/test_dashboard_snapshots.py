"""SVG snapshots of the dashboard mid-run and of the finish screen, at 80x24 and 120x40.

Deterministic: a recorded event stream (tests/tui/dashboard_support.py), a fixed clock, a fixed
machine reading, paths shown relative to the run's root. Regenerate after a deliberate change
with `python -m pytest tests/tui/test_dashboard_snapshots.py --snapshot-update`, then look.
"""

from __future__ import annotations

import time

import pytest
from dashboard_support import FixedMonitor, events_until, recorded_run
from wizard_support import simulated_facts

from engine.run_folder import RunLock

pytestmark = pytest.mark.usefixtures("english_locale")
SIZES = [(80, 24), (120, 40)]


def checkpoint_at(step: int):
    return lambda event: event["kind"] == "checkpoint" and event["step"] == step


def attached_app(root, run, now):
    from tui_lora.app import WizardApp

    return WizardApp(data_folder=root / "data", facts_source=simulated_facts, attach=run,
                     dashboard_options={"clock": lambda: now, "monitor": FixedMonitor()})


async def until(pilot, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await pilot.pause(0.05)
    await pilot.pause(0.6)  # a redraw after the last change


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_dashboard_mid_run(snap_compare, tmp_path, monkeypatch, size):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path, until=checkpoint_at(160), lora=False)
    now = events_until(tmp_path, checkpoint_at(160))[-1]["time"] + 12.0
    app = attached_app(tmp_path, run, now)

    async def loaded(pilot) -> None:
        screen = app.screen
        await until(pilot, lambda: screen.view.step == 160 and screen.query_one("#samples").step == 160)

    with RunLock(run):  # the engine is running
        assert snap_compare(app, terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_dashboard_finished(snap_compare, tmp_path, monkeypatch, size):
    monkeypatch.chdir(tmp_path)
    run = recorded_run(tmp_path)
    app = attached_app(tmp_path, run, 0.0)

    async def finished(pilot) -> None:
        await until(pilot, lambda: app.screen.name == "finished")

    assert snap_compare(app, terminal_size=size, run_before=finished)
