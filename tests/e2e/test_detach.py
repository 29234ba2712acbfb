"""Issue 4, "Must show 3": a detached run survives its terminal closing, and `attach` from a
new terminal follows it to the end.

Each test starts `lora-wizard train FILE --detach && lora-wizard attach RUN_DIR` in a real
terminal (a tmux pane; an `ssh -tt` session to a private sshd), waits for steps, closes that
terminal (kills the tmux server; kills the ssh client), checks that the program following the
run hung up while the engine kept writing steps, then attaches from a new terminal and expects
exit 0 with "finished: <lora path>". Every command runs the console script by absolute path, as
an SSH login shell may have another PATH.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from engine.events import read_events
from engine.run_folder import engine_running
from tests.conftest import write_answers

from .terminals import console_script, process_gone, shell_line, wait_until

pytestmark = pytest.mark.slow

# Long enough to close a terminal mid-run on a fast machine (a step takes 0.05-0.2 s there),
# short enough to finish in seconds; one step event per step, and no checkpoint writes.
RUN_SETTINGS = {
    "training": {"max_steps": 60, "batch_size": 1, "log_every_steps": 1},
    "network": {"train_text_encoder": False},
    "checkpoints": {"every_epoch": False},
}
# Every command gets these on its own command line (an SSH login shell starts with almost no
# environment): never download, and one compute thread. With torch's default of one thread per
# core, the tiny run slows from ~0.1 s to several seconds a step when other work shares the
# cores; what these tests prove does not depend on the thread count.
RUN_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
STEP_LINE = re.compile(r"step \d+/60 ")
# Deadlines only matter on failure; they are wide because two shared cores can be very busy.
FIRST_STEP_TIMEOUT = 180.0
FINISH_TIMEOUT = 400.0


def step_events(run_dir: Path) -> list[dict]:
    return [event for event in read_events(run_dir / "events.jsonl") if event["kind"] == "step"]


def engine_pid(run_dir: Path) -> int:
    """The engine's pid, from its `started` event; there must be exactly one engine per test."""
    started = [event for event in read_events(run_dir / "events.jsonl") if event["kind"] == "started"]
    assert len(started) == 1, f"expected one engine start, got {len(started)}"
    return started[0]["pid"]


def attach_processes(run_dir: Path) -> list[psutil.Process]:
    """The `lora-wizard attach RUN_DIR` processes following this run, on any terminal."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if "attach" in cmdline and str(run_dir) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def expect_steps_after_hangup(run_dir: Path, engine: int, hung_up_at: float) -> None:
    """The engine writes step events after its terminal is gone: it was not hung up with it."""

    def stepped_since() -> list[dict]:
        return [event for event in step_events(run_dir) if event["time"] > hung_up_at]

    # Stop waiting as soon as the engine is gone too: then the test fails at once, with why.
    wait_until(lambda: stepped_since() or process_gone(engine), timeout=FIRST_STEP_TIMEOUT, what="a step after the hang-up")
    log = (run_dir / "engine.log").read_text(encoding="utf-8", errors="replace")[-2000:]
    assert stepped_since(), (
        f"the engine (pid {engine}) wrote no step after its terminal closed (if the run had already finished, "
        f"raise max_steps); engine.log ends:\n{log}"
    )
    assert engine_pid(run_dir) == engine  # the same engine: nothing restarted it


def expect_finished(run_dir: Path, output: str, engine: int) -> Path:
    """`attach` printed the run's finished line, the LoRA exists, and the engine is gone."""
    final = list(read_events(run_dir / "events.jsonl"))[-1]
    assert final["kind"] == "finished", final
    lora = Path(final["lora"])
    assert lora == run_dir.parent / "tiny.safetensors" and lora.is_file()
    assert f"finished: {lora}" in output
    assert len(step_events(run_dir)) == 60
    wait_until(lambda: not engine_running(run_dir) and process_gone(engine), timeout=60, what="the engine to exit")
    return lora


def attach_line(run_dir: Path) -> str:
    return shell_line(console_script("lora-wizard"), "attach", run_dir, "--plain", env=RUN_ENV)


def train_detached_then_attach(answers: Path, run_dir: Path) -> str:
    """What a user types: start the run in the background, then follow it on this terminal."""
    return shell_line(console_script("lora-wizard"), "train", answers, "--detach", env=RUN_ENV) + " && " + attach_line(run_dir)


@pytest.fixture
def run_answers(tmp_path, tiny_model_dir, tiny_dataset) -> Path:
    return write_answers(tmp_path, tiny_model_dir, *tiny_dataset, **RUN_SETTINGS)


def test_a_detached_run_survives_its_tmux_terminal_closing(run_answers, tmux_server, detached_runs):
    run_dir = detached_runs.track(run_answers.parent / "output" / "tiny.run")
    start_and_follow = train_detached_then_attach(run_answers, run_dir)

    terminal = tmux_server.new_session(start_and_follow, width=200, height=50)
    tmux_server.wait_for_text(terminal, STEP_LINE, timeout=FIRST_STEP_TIMEOUT)
    engine = engine_pid(run_dir)
    assert attach_processes(run_dir), "attach should be following the run in the terminal"

    tmux_server.kill_server()  # close the terminal: everything in it gets SIGHUP
    wait_until(lambda: not attach_processes(run_dir), timeout=30, what="attach to hang up with its terminal")
    hung_up_at = time.time()
    assert not tmux_server.is_running()
    expect_steps_after_hangup(run_dir, engine, hung_up_at)

    # A new terminal (a fresh tmux server): attach follows the run to its end.
    new_terminal = tmux_server.new_session(attach_line(run_dir), width=200, height=50)
    status = tmux_server.wait_for_exit(new_terminal, timeout=FINISH_TIMEOUT)
    screen = tmux_server.capture_pane(new_terminal, history=True)
    assert status == 0, f"attach exited with {status}:\n{screen}"
    assert STEP_LINE.search(screen), screen  # it showed progress, not only the end
    expect_finished(run_dir, screen, engine)


def test_a_detached_run_survives_its_ssh_connection_dropping(run_answers, sshd_server, detached_runs, tmp_path):
    run_dir = detached_runs.track(run_answers.parent / "output" / "tiny.run")
    start_and_follow = train_detached_then_attach(run_answers, run_dir)

    # An interactive-like login: `ssh -tt` gives the remote command a terminal that hangs up
    # when the connection drops. stdin stays open (a pipe) so only the kill ends the session.
    session_log = tmp_path / "ssh-session.log"

    def session_output() -> str:
        return session_log.read_text(encoding="utf-8", errors="replace")

    with session_log.open("wb") as output:
        client = sshd_server.popen(start_and_follow, tty=True, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: STEP_LINE.search(session_output()) or client.poll() is not None,
            timeout=FIRST_STEP_TIMEOUT,
            what="steps in the SSH session",
        )
        assert client.poll() is None, f"the SSH session ended early:\n{session_output()}\nsshd log:\n{sshd_server.log()}"
        engine = engine_pid(run_dir)
        assert attach_processes(run_dir), "attach should be following the run in the SSH session"

        client.kill()  # drop the connection, as a lost network or a closed laptop does
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=30)
        client.stdin.close()
    wait_until(lambda: not attach_processes(run_dir), timeout=30, what="the remote attach to hang up with the connection")
    hung_up_at = time.time()
    expect_steps_after_hangup(run_dir, engine, hung_up_at)

    # A new SSH connection: attach follows the run to its end; ssh returns attach's exit status.
    result = sshd_server.run(attach_line(run_dir), timeout=FINISH_TIMEOUT)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nsshd log:\n{sshd_server.log()[-3000:]}"
    expect_finished(run_dir, result.stdout, engine)
