"""Issue 20 (items 1, 4, 5): keys in a real terminal, typed the way a person types.

`lora-wizard` runs in a private tmux server at 80x24 on a draft of the demo's answers (the draft
file the app keeps in its data folder, so the app opens where a reopened draft does). Keys come
through tmux as a terminal sends them: fast keys arrive while a screen is still being built or a
check is still running, which Pilot (it waits for the app after every key) never shows.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from engine.config import load_answers
from engine.demo import create_demo
from tui_lora import draft as drafts

from .terminals import console_script, shell_line

pytestmark = pytest.mark.slow

SCREEN_TIMEOUT = 120.0  # generous: two shared cores; only matters on failure
ENV = {"PYTHONFAULTHANDLER": "1", "HF_HUB_OFFLINE": "1", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "screen-256color"}
# The first line of each step's intro: which step the terminal shows.
INTROS = {
    "environment": "What this machine has",
    "model": "The model to train on",
    "dataset": "A training root holds",
    "parameters": "How to train.",
    "review": "This answers file is what",
}


class Wizard:
    """`lora-wizard` in a tmux pane, opened on a saved draft of the demo; `copies` more of each
    training image make the dataset check take a moment."""

    def __init__(self, tmux_server, tmp_path: Path, *, step: str, copies: int = 0) -> None:
        self.tmux = tmux_server
        self.demo = create_demo(tmp_path / "demo").parent
        for image in sorted((self.demo / "train" / "10_usu bear").glob("*.png")):
            for copy in range(copies):
                shutil.copy(image, image.with_name(f"{image.stem}-{copy}.png"))
        data = tmp_path / "data"
        draft = drafts.Draft.from_answers(load_answers(self.demo / "answers.toml"), step=step)
        drafts.save_draft(draft, data)
        self.workspace = tmp_path / "work"
        self.workspace.mkdir()
        env = {**ENV, drafts.DATA_DIR_VARIABLE: str(data)}
        self.pane = tmux_server.new_session(shell_line(console_script("lora-wizard"), env=env), width=80, height=24, cwd=self.workspace)

    def screen(self) -> str:
        return self.tmux.capture_pane(self.pane)

    def expect(self, text: str | re.Pattern, timeout: float = SCREEN_TIMEOUT) -> None:
        self.tmux.wait_for_text(self.pane, text, timeout=timeout, history=False)

    def step(self) -> str | None:
        shown = self.screen()
        return next((step for step, intro in INTROS.items() if intro in shown), None)

    def keys(self, *names: str) -> None:
        self.tmux.send_keys(self.pane, *names)

    def type_text(self, text: str) -> None:
        self.tmux.send_keys(self.pane, text, literal=True)

    def quit(self) -> None:
        self.keys("C-q")
        try:
            self.tmux.wait_for_exit(self.pane, timeout=SCREEN_TIMEOUT)
        except AssertionError:
            os.kill(self.tmux.pane_pid(self.pane), signal.SIGABRT)  # faulthandler prints the stacks
            raise


@pytest.mark.parametrize("together", [False, True], ids=["0.2s-apart", "in-one-write"])
def test_quick_next_keys_are_each_acted_on(tmp_path, tmux_server, together):
    """Item 4: Ctrl+N four times, 0.2 s apart (or all in one write), from Environment reaches
    Review. Each Next arrives while the step before it is still being built, or its check (the
    model read, the pre-flight check of 400 images) still runs."""
    wizard = Wizard(tmux_server, tmp_path, step="environment", copies=100)
    wizard.expect("to fix")  # the machine check is done (torch loaded in its worker)
    if together:
        wizard.keys("C-n", "C-n", "C-n", "C-n")
    else:
        for _ in range(4):
            wizard.keys("C-n")
            time.sleep(0.2)
    wizard.expect(INTROS["review"])
    wizard.expect(re.compile(r"\d+ steps \(\d+ epochs?\)"))  # Review planned, and stays there
    time.sleep(1.0)
    assert wizard.step() == "review", wizard.screen()
    wizard.quit()


def test_tab_completes_only_as_far_as_the_matches_agree(tmp_path, tmux_server):
    """Item 1: `photos` + Tab beside `photos_bad/` stays `photos` and lists both; `tc/abc` + Tab
    beside `tc/abc_more/` stays `tc/abc`; a second Tab moves on."""
    wizard = Wizard(tmux_server, tmp_path, step="dataset")
    for folder in ("photos", "photos_bad", "tc/abc", "tc/abc_more"):
        (wizard.workspace / folder).mkdir(parents=True)
    wizard.expect("0 errors")  # the demo's dataset, checked
    time.sleep(0.5)
    wizard.keys("Tab")  # the mode -> the training root
    time.sleep(0.5)
    wizard.keys("C-u")
    wizard.type_text("photos")
    wizard.expect(re.compile(r"Training root\s+photos\s"))
    wizard.keys("Tab")
    wizard.expect("Matches: photos/  photos_bad/")
    assert re.search(r"Training root\s+photos\s", wizard.screen()), wizard.screen()
    time.sleep(0.5)
    wizard.keys("C-u")
    wizard.type_text("tc/abc")
    wizard.expect(re.compile(r"Training root\s+tc/abc\s"))
    time.sleep(0.5)  # the shown suggestion has caught up: it must not offer abc_more either
    assert "abc_more" not in wizard.screen(), wizard.screen()
    wizard.keys("Tab")
    wizard.expect("Matches: abc/  abc_more/")
    assert re.search(r"Training root\s+tc/abc\s", wizard.screen()), wizard.screen()
    wizard.type_text("_")
    wizard.keys("Tab")
    wizard.expect(re.compile(r"Training root\s+tc/abc_more/\s"))
    wizard.keys("BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace")
    wizard.expect(re.compile(r"Training root\s+tc/abc\s"))
    wizard.keys("Tab")
    wizard.expect("Matches: abc/  abc_more/")
    wizard.keys("Tab")  # listed already: the second Tab moves on, to Browse
    wizard.expect(re.compile(r"Training root\s+tc/abc\s+Browse"))
    time.sleep(0.5)
    assert drafts.load_draft(tmp_path / "data").get("dataset.train_dir") == "tc/abc"
    wizard.quit()


def test_a_reopened_draft_keeps_the_focused_fields_text(tmp_path, tmux_server):
    """Item 5: reopening a draft on the Model step focuses the model path without selecting its
    text: the next key is added at its end instead of replacing the path."""
    wizard = Wizard(tmux_server, tmp_path, step="model")
    model = str(wizard.demo / "model")
    wizard.expect("SD 1.x · diffusers folder")  # the model read: the screen is fully up
    wizard.type_text("n")
    time.sleep(1.0)  # the draft is kept on disk 0.3 s after the last key
    assert drafts.load_draft(tmp_path / "data").get("model.path") == model + "n", wizard.screen()
    wizard.quit()
