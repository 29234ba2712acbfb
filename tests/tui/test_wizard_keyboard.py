"""Keyboard only, in 80x24: on every screen each control is reached with Tab, nothing spills
sideways, and the footer shows the keys; Esc goes back."""

from __future__ import annotations

import pytest
from textual.widgets import Button, Checkbox, DataTable, Input, RadioSet, Select
from wizard_support import anyio_backend, demo_folder, make_app, settle, shown  # noqa: F401

from engine.config import load_answers

pytestmark = pytest.mark.anyio
CONTROLS = (Input, Button, Select, Checkbox, RadioSet, DataTable)
SCREENS = ["home", "environment", "model", "dataset", "parameters", "review"]


def interactive(screen) -> list:
    """The controls a user can use: shown and enabled."""
    return [w for w in screen.query("*") if isinstance(w, CONTROLS) and w.display and w.visible and not w.disabled and all(a.display for a in w.ancestors_with_self if hasattr(a, "display"))]


@pytest.mark.parametrize("step", SCREENS)
async def test_every_control_is_reached_with_tab_in_80x24(demo, workspace, tmp_path_factory, step):
    app = make_app(tmp_path_factory.mktemp("data"), answers=load_answers(demo / "answers.toml"))
    app.draft.step = step
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        controls = interactive(screen)
        assert controls, f"{step}: no controls found"
        reached = set()
        for _ in range(len(screen.focus_chain) + 1):
            await pilot.press("tab")
            reached.add(app.focused)
        missing = [w for w in controls if w not in reached]
        assert not missing, f"{step}: Tab never reaches {missing}"
        # 80 columns: nothing is wider than the terminal, the footer shows the keys.
        assert all(w.region.right <= 80 for w in screen.query("*") if w.display), step
        body = screen.query("#body")
        assert not body or body.first().max_scroll_x == 0
        footer = shown(app).split("esc Back" if step != "home" else "n New LoRA")[-1]
        assert "^q Quit" in footer and "^t Theme" in footer and "^p Commands" in footer


async def test_escape_walks_back_to_home(demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"), answers=load_answers(demo / "answers.toml"))
    app.draft.step = "review"
    async with app.run_test(size=(80, 24)) as pilot:
        seen = []
        for _ in range(6):
            await settle(pilot)
            seen.append(app.screen.name)
            await pilot.press("escape")
        assert seen == ["review", "parameters", "dataset", "model", "environment", "home"]
