"""Issue 6, "Must show 2": the wizard in a real terminal, driven by keys only.

`lora-wizard` runs in a private tmux server at 100x30; every screen is read back with
capture-pane and answered with send-keys (Tab, Ctrl+N, typed paths, Ctrl+S, Ctrl+Q). The machine
check is the real one (torch imported in the app's worker). The answers file the wizard saves
then trains headless, unchanged: `lora-wizard train FILE`, 2 steps of the demo's tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.demo import create_demo

from .terminals import console_script, shell_line

pytestmark = pytest.mark.slow

SCREEN_TIMEOUT = 120.0  # generous: two shared cores; only matters on failure
SETTLE_SECONDS = 0.5
# PYTHONFAULTHANDLER: a wizard stuck on exit prints its threads' stacks when sent SIGABRT.
ENV = {"PYTHONFAULTHANDLER": "1", "HF_HUB_OFFLINE": "1", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "screen-256color"}


def test_the_wizard_in_tmux_writes_answers_that_train_headless(tmp_path, tmux_server):
    demo = create_demo(tmp_path / "demo").parent
    workspace = tmp_path / "work"
    workspace.mkdir()
    env = {**ENV, "LORA_WIZARD_DATA_DIR": str(tmp_path / "data")}
    pane = tmux_server.new_session(shell_line(console_script("lora-wizard"), env=env), width=100, height=30, cwd=workspace)

    # Paced like a person who looks before the next key: Textual hands keys to the widget that
    # has the focus when they arrive, so keys typed ahead of a focus change land in the old field.
    def expect(text: str) -> None:
        tmux_server.wait_for_text(pane, text, timeout=SCREEN_TIMEOUT, history=False)
        time.sleep(SETTLE_SECONDS)

    def keys(*names: str) -> None:
        for name in names:
            tmux_server.send_keys(pane, name)
            time.sleep(SETTLE_SECONDS)

    def type_text(text: str) -> None:
        tmux_server.send_keys(pane, text, literal=True)
        expect(text[-30:])  # on screen (the end of it: a long path scrolls in its field)

    expect("No runs yet")  # Home, in a fresh data folder
    keys("n")
    expect("to fix")  # Environment: the real check, once torch has loaded in the worker
    keys("C-n")
    expect("Tab or → completes")  # Base model
    type_text(str(demo / "model"))
    expect("SD 1.x · diffusers folder · predicts epsilon")
    keys("C-n")
    expect("Pre-flight check")  # Dataset
    keys("Tab")
    type_text(str(demo / "train"))
    keys("Tab", "Tab")
    type_text(str(demo / "reg"))
    expect("0 errors")
    keys("C-n")
    expect("Defaults fit")  # Parameters, starting from the environment check
    keys("Tab", "Tab")  # batch size -> epochs -> max steps
    type_text("2")
    keys("Tab")
    type_text("64")  # resolution
    keys("C-n")
    expect("2 steps (1 epoch)")  # Review: the step arithmetic of the answers
    expect("usu_bear.toml")
    keys("C-s")
    expect("Saved usu_bear.toml")
    keys("C-q")
    try:
        status = tmux_server.wait_for_exit(pane, timeout=SCREEN_TIMEOUT)
    except AssertionError as exc:
        # Stuck after leaving the screen: SIGABRT makes faulthandler print every thread's stack.
        os.kill(tmux_server.pane_pid(pane), signal.SIGABRT)
        time.sleep(3)
        raise AssertionError(f"{exc}; the pane shows:\n{tmux_server.capture_pane(pane, history=True)}") from None
    assert status == 0, tmux_server.capture_pane(pane, history=True)

    answers = workspace / "usu_bear.toml"
    assert "max_steps = 2" in answers.read_text(encoding="utf-8")
    train = subprocess.run(
        [str(console_script("lora-wizard")), "train", str(answers)],
        cwd=tmp_path, env={**_base_env(), **ENV}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    events = [json.loads(line) for line in train.stdout.splitlines() if line.startswith("{")]
    finished = [e for e in events if e["kind"] == "finished"]
    assert finished and finished[0]["steps"] == 2
    assert Path(finished[0]["lora"]) == workspace / "output" / "usu_bear.safetensors"
    assert (workspace / "output" / "usu_bear.safetensors").is_file()


def _base_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in ("LANG", "LC_ALL", "LC_MESSAGES")}
