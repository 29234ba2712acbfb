"""Issue 17, "Must show 3": the wizard walks a FLUX.1 run in a real terminal. `lora-wizard demo --flux`
opens the wizard on the tiny FLUX.1 dev model in kohya's four files; Base model names it and shows
its autoencoder, CLIP-L and T5-XXL fields, Parameters starts from FLUX.1's defaults, and the
answers saved on Review are what `lora-wizard train FILE --dry-run` reads, unchanged."""

from __future__ import annotations

import subprocess
import time

import pytest

from .terminals import console_script, shell_line
from .test_wizard_tmux import ENV, SCREEN_TIMEOUT, SETTLE_SECONDS, _base_env

pytestmark = pytest.mark.slow


def test_the_wizard_walks_the_flux_demo_and_saves_answers_that_dry_run(tmp_path, tmux_server):
    workspace = tmp_path / "work"
    workspace.mkdir()
    env = {**ENV, "LORA_WIZARD_DATA_DIR": str(tmp_path / "data")}
    command = shell_line(console_script("lora-wizard"), "demo", "--flux", str(tmp_path / "demo"), env=env)
    pane = tmux_server.new_session(command, width=100, height=30, cwd=workspace)

    def expect(text: str) -> None:
        tmux_server.wait_for_text(pane, text, timeout=SCREEN_TIMEOUT, history=False)
        time.sleep(SETTLE_SECONDS)

    def keys(*names: str) -> None:
        for name in names:
            tmux_server.send_keys(pane, name)
            time.sleep(SETTLE_SECONDS)

    expect("to fix")  # Environment
    keys("C-n")
    expect("FLUX.1 dev · single files")  # Base model, read from the four files' headers
    expect("T5-XXL")
    keys("C-n")
    expect("0 errors")  # Dataset
    keys("C-n")
    expect("FLUX.1, as kohya recommends")  # Parameters
    keys("C-n")
    expect("usu_bear_flux.toml")  # Review
    keys("C-s")
    expect("Saved usu_bear_flux.toml")
    keys("C-q")
    assert tmux_server.wait_for_exit(pane, timeout=SCREEN_TIMEOUT) == 0, tmux_server.capture_pane(pane, history=True)

    answers = workspace / "usu_bear_flux.toml"
    assert "t5xxl = " in answers.read_text(encoding="utf-8")
    dry_run = subprocess.run(
        [str(console_script("lora-wizard")), "train", str(answers), "--dry-run"],
        cwd=tmp_path, env={**_base_env(), **ENV}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert dry_run.returncode == 0, dry_run.stdout[-3000:] + dry_run.stderr[-3000:]
    assert "FLUX.1 dev" in dry_run.stdout
