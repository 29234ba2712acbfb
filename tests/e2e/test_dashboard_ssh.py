"""Issue 7, "Must show 2": the dashboard over a real SSH connection, the way users run it.

A private sshd on a loopback port (tests/e2e/terminals.py); in a private tmux server, a terminal
runs `ssh -tt ... lora-wizard demo DIR`: the wizard on the demo's tiny model. The test walks it
with keys to Review, starts training (Ctrl+R) and sees the dashboard's steps advance. Then it
kills the ssh client, as a dropped connection does: the remote wizard hangs up, the detached
engine goes on writing steps. A new ssh session runs `lora-wizard attach RUN_DIR`: the dashboard
shows the progress, then the finish screen with the `<lora:...>` line; `q` leaves with status 0.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import psutil
import pytest

from engine.config import save_answers
from engine.demo import create_demo, demo_answers
from engine.events import read_events
from engine.run_folder import engine_running

from .terminals import console_script, process_gone, shell_line, wait_until

pytestmark = pytest.mark.slow

MAX_STEPS = 200  # long enough to drop the connection and attach again before the end
# The remote command's environment (an SSH login starts with almost none): no downloads, one
# compute thread (two shared cores), a fresh data folder for the wizard, a UTF-8 locale.
REMOTE_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
SCREEN_TIMEOUT = 180.0  # only matters on failure: two shared cores can be very busy
FINISH_TIMEOUT = 600.0
PAUSE = 0.5  # between keys, like a person who looks at the screen first
STEP = re.compile(r"Step (\d+)/" + str(MAX_STEPS))


def demo_for_ssh(folder: Path) -> Path:
    """The demo, set to train UNet-only for MAX_STEPS steps of batch 1, one step event each."""
    answers_path = create_demo(folder)
    # The answers create_demo wrote (relative paths), changed field by field; assignment is validated.
    answers = demo_answers(folder)
    answers.network.train_text_encoder = False
    answers.training.batch_size = 1
    answers.training.log_every_steps = 1
    answers.training.max_steps = MAX_STEPS
    # Overwriting is safe: it is the file create_demo just wrote in this test's own folder.
    save_answers(answers, answers_path, overwrite=True)
    return folder


def ssh_processes(pane_pid: int) -> list[psutil.Process]:
    return [child for child in psutil.Process(pane_pid).children(recursive=True) if child.name() == "ssh"]


def remote_wizards(demo: Path) -> list[psutil.Process]:
    """The `lora-wizard demo DIR` processes that the SSH sessions started."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if "demo" in cmdline and str(demo) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def steps_written(run_dir: Path) -> list[dict]:
    return [event for event in read_events(run_dir / "events.jsonl") if event["kind"] == "step"]


def test_dashboard_over_ssh_survives_the_connection_dropping(tmp_path, tmux_server, sshd_server, detached_runs):
    demo = demo_for_ssh(tmp_path / "demo")
    run_dir = detached_runs.track(demo / "output" / "usu_bear.run")
    env = {**REMOTE_ENV, "LORA_WIZARD_DATA_DIR": str(tmp_path / "data")}
    lora_wizard = console_script("lora-wizard")
    wizard = sshd_server.command(f"cd {demo} && " + shell_line(lora_wizard, "demo", demo, env=env), tty=True)
    pane = tmux_server.new_session(wizard, width=120, height=40)

    def expect(pattern: str | re.Pattern, target: str = pane, timeout: float = SCREEN_TIMEOUT) -> re.Match:
        found = tmux_server.wait_for_text(target, pattern, timeout=timeout, history=False)
        time.sleep(PAUSE)
        return found

    def press(*keys: str) -> None:
        for key in keys:
            tmux_server.send_keys(pane, key)
            time.sleep(PAUSE)

    # The wizard, over SSH, on the demo's answers: every step with Ctrl+N, then Start.
    expect("to fix")  # Environment: the real check of this machine
    press("C-n")
    expect("SD 1.x · diffusers folder")  # Base model
    press("C-n")
    expect("0 errors")  # Dataset
    press("C-n")
    expect("Defaults fit")  # Parameters, from the environment check
    press("C-n")
    expect(f"{MAX_STEPS} steps")  # Review
    press("C-r")
    expect("Training usu_bear")  # the dashboard
    first = int(expect(STEP).group(1))

    def step_shown() -> int:
        found = STEP.search(tmux_server.capture_pane(pane))
        return int(found.group(1)) if found else 0

    wait_until(lambda: step_shown() > first, timeout=SCREEN_TIMEOUT, what="the steps to advance on the dashboard")
    engine = next(e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "started")["pid"]
    assert remote_wizards(demo), "the wizard should be running on the far side"

    # The connection drops: kill the ssh client.
    clients = ssh_processes(tmux_server.pane_pid(pane))
    assert len(clients) == 1, clients
    clients[0].kill()
    dropped_at = time.time()
    wait_until(lambda: not remote_wizards(demo), timeout=60, what="the remote wizard to hang up with the connection")
    wait_until(lambda: any(e["time"] > dropped_at for e in steps_written(run_dir)) or process_gone(engine),
               timeout=SCREEN_TIMEOUT, what="a step after the connection dropped")
    assert any(e["time"] > dropped_at for e in steps_written(run_dir)), "training stopped with the connection"
    assert engine_running(run_dir)

    # A new SSH session: attach shows the progress, then the finish screen.
    attach = sshd_server.command(shell_line(lora_wizard, "attach", run_dir, env=env), tty=True)
    second = tmux_server.new_session(attach, width=100, height=30)
    shown = int(expect(STEP, target=second).group(1))
    assert shown < MAX_STEPS, "the run ended before it could be attached again: raise MAX_STEPS"
    expect("<lora:usu_bear:1> usu bear", target=second, timeout=FINISH_TIMEOUT)
    assert "Finished: usu_bear" in tmux_server.capture_pane(second)
    tmux_server.send_keys(second, "q")
    assert tmux_server.wait_for_exit(second, timeout=60) == 0, tmux_server.capture_pane(second, history=True)
    final = list(read_events(run_dir / "events.jsonl"))[-1]
    assert final["kind"] == "finished" and len(steps_written(run_dir)) == MAX_STEPS
    assert Path(final["lora"]).is_file()
    wait_until(lambda: process_gone(engine), timeout=60, what="the engine to exit")
