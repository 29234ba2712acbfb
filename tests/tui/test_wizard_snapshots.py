"""SVG snapshots of every screen at 80x24 in both themes, and of two screens in Japanese.

Deterministic by construction: the machine is simulated (tests/tui/wizard_support.py), paths are
shown relative to the working folder (the demo's own folder, or a temp workspace for Home), the
cursor does not blink, and no clock is shown. Regenerate after a deliberate change with
`python -m pytest tests/tui/test_wizard_snapshots.py --snapshot-update`, then look at the SVGs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input
from wizard_support import make_app, settle

from engine.config import load_answers
from engine.demo import demo_answers
from engine.events import EventLog
from tui_lora.draft import Draft

SCREENS = ["home", "environment", "model", "dataset", "parameters", "review"]
THEMES = ["lora-wizard-dark", "lora-wizard-light"]


pytestmark = pytest.mark.usefixtures("english_locale")  # tests/conftest.py, as `demo`


def interrupted_run(workspace: Path, demo: Path) -> None:
    """`output/usu_bear.run`, interrupted at step 4 of 10 (events written by the engine's log)."""
    from engine.run_folder import create_run_folder

    answers = load_answers(demo / "answers.toml").model_copy(deep=True)
    answers.output.dir = workspace / "output"
    folder = create_run_folder(answers)
    with EventLog(folder / "events.jsonl") as events:
        events.emit("started", run_dir=str(folder), pid=1, total_steps=10, epochs=1, steps_per_epoch=10, breakdown=[], settings={})
        events.emit("step", step=4, total_steps=10, epoch=1, loss=0.1, lr=1e-4)
        events.emit("interrupted", step=4, reason="SIGINT", resume="")


def wizard_at(step: str, theme: str, demo: Path, tmp_path: Path, monkeypatch):
    """The app on `step` with the demo's answers as the demo writes them (relative paths),
    run from the demo's folder so that every path on screen is short and the same everywhere."""
    if step == "home":
        workspace = tmp_path / "workspace"
        workspace.mkdir()
        monkeypatch.chdir(workspace)
        interrupted_run(workspace, demo)
        app = make_app(tmp_path / "data")
        app.remember_output_dir(workspace / "output")
    else:
        monkeypatch.chdir(demo)
        app = make_app(tmp_path / "data")
        app.draft = Draft.from_answers(demo_answers(demo), step=step)
    app.theme = theme
    return app


async def steady(pilot) -> None:
    await settle(pilot)
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("step", SCREENS)
def test_screen(snap_compare, demo, tmp_path, monkeypatch, step, theme):
    assert snap_compare(wizard_at(step, theme, demo, tmp_path, monkeypatch), terminal_size=(80, 24), run_before=steady)


@pytest.mark.parametrize("step", ["dataset", "parameters"])
def test_screen_in_japanese(snap_compare, demo, tmp_path, monkeypatch, step):
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    assert snap_compare(wizard_at(step, THEMES[0], demo, tmp_path, monkeypatch), terminal_size=(80, 24), run_before=steady)


@pytest.mark.parametrize("theme", THEMES)
def test_switches_say_on_and_off(snap_compare, demo, tmp_path, monkeypatch, theme):
    """Parameters scrolled to its on/off fields (gradient checkpointing on, TensorBoard off)."""

    async def at_the_switches(pilot) -> None:
        await steady(pilot)
        pilot.app.screen.query_one("#field-output-tensorboard").focus()
        await pilot.pause()

    app = wizard_at("parameters", theme, demo, tmp_path, monkeypatch)
    app.draft.set("training.gradient_checkpointing", True)
    assert snap_compare(app, terminal_size=(80, 24), run_before=at_the_switches)
