"""Data-parallel training with 2 CPU processes (gloo), started through torchrun as on GPUs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from engine.checkpoint import newest_valid_checkpoint
from engine.events import FINAL_KINDS, read_events
from engine.run_folder import engine_running, request, run_status
from tests.conftest import write_answers

LORA_WIZARD = shutil.which("lora-wizard")
LOG_EVERY = 2
SETTINGS = {"training": {"max_steps": 8, "log_every_steps": LOG_EVERY}, "output": {"dtype": "fp32"}, "checkpoints": {"every_steps": 2}}
ONLY_REQUESTED_CHECKPOINTS = {"every_steps": 0, "every_epoch": False}
AFTER_A_REQUEST = 120  # seconds; a few steps take seconds: longer means the processes hang
# The suite pins OMP_NUM_THREADS (tests/conftest.py) so single runs are bit-reproducible; torchrun
# keeps a set OMP_NUM_THREADS for every worker, and two workers of 2 threads each on 2 cores spin
# against each other (10x+ slower). Without it, the engine shares the free cores between the
# processes (engine/cpu_threads.py) and torchrun gives each worker 1.
ENGINE_ENV = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}


def answers_for(folder: Path, model: Path, dataset, *, batch_size: int, processes: int, steps: int = 8,
                checkpoints: dict | None = None) -> Path:
    sections = {k: dict(v) for k, v in SETTINGS.items()}
    sections["training"].update(batch_size=batch_size, processes=processes, max_steps=steps)
    sections["checkpoints"].update(checkpoints or {})
    return write_answers(folder, model, *dataset, **sections)


def run(*args: str) -> list[dict]:
    result = subprocess.run([LORA_WIZARD, *args], capture_output=True, text=True, timeout=600, env=ENGINE_ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def ask(what: str, run_dir: Path) -> None:
    """`lora-wizard stop RUN` / `lora-wizard checkpoint RUN`, as a user types it."""
    result = subprocess.run([LORA_WIZARD, what, str(run_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "asked the engine" in result.stdout


def start_detached(answers: Path) -> tuple[Path, psutil.Process]:
    """`lora-wizard train ANSWERS --detach`: the run folder, and the launcher (torchrun) it started."""
    detached = subprocess.run([LORA_WIZARD, "train", str(answers), "--detach"], capture_output=True, text=True, timeout=300,
                              env=ENGINE_ENV)
    assert detached.returncode == 0, detached.stderr
    run_dir = Path(detached.stdout.strip().splitlines()[-1])
    pid = int(detached.stderr.split("(pid ")[1].split(")")[0])
    return run_dir, psutil.Process(pid)


def start_in_foreground(answers: Path, output: Path) -> subprocess.Popen:
    """`lora-wizard train ANSWERS` as typed on a terminal, its event lines going to `output`."""
    with output.open("w") as out:
        return subprocess.Popen([LORA_WIZARD, "train", str(answers)], stdout=out, stderr=subprocess.STDOUT, env=ENGINE_ENV)


def wait_for_event(run_dir: Path, matches: Callable[[dict], bool], timeout: float = 300) -> dict:
    """The first event of the run that `matches`, once it is written; fails at once if the run
    ends without one (with the engine's log)."""
    deadline = time.monotonic() + timeout
    while True:
        events = list(read_events(run_dir / "events.jsonl"))
        found = next((e for e in events if matches(e)), None)
        if found is not None:
            return found
        ended = any(e["kind"] in FINAL_KINDS for e in events)
        if ended or time.monotonic() > deadline:
            last = events[-1] if events else None
            log = (run_dir / "engine.log").read_text()[-2000:]
            pytest.fail(f"{'the run ended' if ended else 'timed out'} without the event; last event {last}\n{log}")
        time.sleep(0.1)


def engine_processes(launcher: psutil.Process) -> list[psutil.Process]:
    """torchrun and its workers (in sessions of their own, so found as its children, not by group)."""
    return [*launcher.children(recursive=True), launcher]


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    running = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            pass
    return running


def kill_leftovers(processes: list[psutil.Process]) -> None:
    """Cleanup after a failed test: SIGKILL what is left of the processes this test started."""
    for process in still_running(processes):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / |a| over the whole LoRA (all tensors as one vector)."""
    assert a.keys() == b.keys()
    flat_a = torch.cat([a[k].flatten() for k in sorted(a)])
    flat_b = torch.cat([b[k].flatten() for k in sorted(a)])
    return ((flat_a - flat_b).norm() / flat_a.norm()).item()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_model_dir, tiny_dataset):
    folder = tmp_path_factory.mktemp("two")
    events = run("train", str(answers_for(folder, tiny_model_dir, tiny_dataset, batch_size=2, processes=2)))
    return folder, events


def test_two_processes_match_one_process_with_the_doubled_batch(two_process_run, tmp_path, tiny_model_dir, tiny_dataset):
    folder, events = two_process_run
    assert events[-1]["kind"] == "finished"
    logged = list(read_events(folder / "output" / "tiny.run" / "events.jsonl"))
    steps = [e["step"] for e in logged if e["kind"] == "step"]
    assert steps == list(range(1, 9))  # written once, by the main process only
    assert sum(e["kind"] == "started" for e in logged) == 1
    assert "x 2 processes" in " ".join(logged[0]["breakdown"])

    run("train", str(answers_for(tmp_path, tiny_model_dir, tiny_dataset, batch_size=4, processes=1)))
    two = load_file(folder / "output" / "tiny.safetensors")
    one = load_file(tmp_path / "output" / "tiny.safetensors")
    assert relative_difference(one, two) < 1e-5


def test_a_killed_two_process_run_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, tiny_dataset):
    answers = answers_for(tmp_path, tiny_model_dir, tiny_dataset, batch_size=2, processes=2, steps=200)
    run_dir, launcher = start_detached(answers)
    wait_for_event(run_dir, lambda e: e["kind"] == "checkpoint" and e["step"] >= 4)
    kill_leftovers(engine_processes(launcher))  # torchrun and both workers at once, like a power cut
    while engine_running(run_dir):
        time.sleep(0.1)
    checkpoint_step = max(e["step"] for e in read_events(run_dir / "events.jsonl") if e["kind"] == "checkpoint")

    events = run("resume", str(run_dir))
    resumed = [e for e in events if e["kind"] == "resumed"]
    assert [e["step"] for e in resumed] == [checkpoint_step]
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps[0] == checkpoint_step + 1 and steps[-1] == 200
    assert events[-1]["kind"] == "finished" and events[-1]["steps"] == 200


def test_a_checkpoint_request_reaches_every_process_at_a_logged_step(tmp_path, tiny_model_dir, tiny_dataset):
    answers = answers_for(tmp_path, tiny_model_dir, tiny_dataset, batch_size=2, processes=2, steps=200,
                          checkpoints=ONLY_REQUESTED_CHECKPOINTS)
    run_dir, launcher = start_detached(answers)
    processes = engine_processes(launcher)
    try:
        wait_for_event(run_dir, lambda e: e["kind"] == "step" and e["step"] >= 2)
        ask("checkpoint", run_dir)
        checkpoint = wait_for_event(run_dir, lambda e: e["kind"] == "checkpoint", timeout=AFTER_A_REQUEST)
        # Two more logged steps: the run goes on, and the request is taken once.
        went_on = checkpoint["step"] + 2 * LOG_EVERY
        wait_for_event(run_dir, lambda e: e["kind"] == "step" and e["step"] >= went_on, timeout=AFTER_A_REQUEST)
        events = list(read_events(run_dir / "events.jsonl"))
        assert engine_running(run_dir)
    finally:
        kill_leftovers(processes)

    assert checkpoint["step"] % LOG_EVERY == 0 and checkpoint["step"] < 200
    assert [e for e in events if e["kind"] == "checkpoint"] == [checkpoint]
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps == list(range(1, steps[-1] + 1))  # no step lost or repeated around the checkpoint
    assert not (run_dir / "control" / "checkpoint").exists()
    written = newest_valid_checkpoint(run_dir)
    assert written.position.step == checkpoint["step"] and written.ranks == 2  # both processes took part


def test_a_stopped_two_process_run_exits_and_resumes_to_the_uninterrupted_lora(tmp_path, tiny_model_dir, tiny_dataset):
    # Steps take ~0.2 s here and a stop lands ~2 logged steps after it is asked: plenty of margin.
    # Past the end of the first epoch (20 steps), so the resumed part crosses an epoch too.
    steps = 24
    answers = answers_for(tmp_path / "stopped", tiny_model_dir, tiny_dataset, batch_size=2, processes=2, steps=steps,
                          checkpoints=ONLY_REQUESTED_CHECKPOINTS)
    run_dir = tmp_path / "stopped" / "output" / "tiny.run"
    command = start_in_foreground(answers, tmp_path / "train.out")
    launcher = psutil.Process(command.pid)
    processes = engine_processes(launcher)
    try:
        wait_for_event(run_dir, lambda e: e["kind"] == "step" and e["step"] >= 2)
        processes = engine_processes(launcher)  # all of them, now that they train
        assert len(processes) >= 4, processes  # lora-wizard, torchrun and its 2 workers
        ask("stop", run_dir)
        stopped = wait_for_event(run_dir, lambda e: e["kind"] == "interrupted", timeout=AFTER_A_REQUEST)
        # They exit within seconds; well under 30 s, after which torchrun would SIGKILL a stuck worker.
        deadline = time.monotonic() + 20
        while still_running(processes):
            assert time.monotonic() < deadline, f"still running after the stop: {still_running(processes)}"
            time.sleep(0.1)
    finally:
        kill_leftovers(processes)

    # The command exits as a one-process run stopped the same way; torchrun saw no failure.
    assert command.wait(timeout=30) == 130, (tmp_path / "train.out").read_text()[-2000:]
    log = (run_dir / "engine.log").read_text()
    assert "ChildFailedError" not in log and "Traceback" not in log, log[-3000:]
    events = list(read_events(run_dir / "events.jsonl"))
    assert stopped == events[-1] and stopped["reason"] == "stop requested"
    assert stopped["step"] % LOG_EVERY == 0 and stopped["step"] < steps, stopped
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [stopped["step"]]
    assert [e["step"] for e in events if e["kind"] == "step"] == list(range(1, stopped["step"] + 1))
    assert run_status(run_dir).state == "interrupted"

    request(run_dir, "stop")  # as if typed again after the engine's last check: not for the resume
    resumed = run("resume", str(run_dir))
    assert [e["step"] for e in resumed if e["kind"] == "resumed"] == [stopped["step"]]
    assert [e["step"] for e in resumed if e["kind"] == "step"] == list(range(stopped["step"] + 1, steps + 1))
    assert resumed[-1]["kind"] == "finished" and resumed[-1]["steps"] == steps

    uninterrupted = answers_for(tmp_path / "uninterrupted", tiny_model_dir, tiny_dataset, batch_size=2, processes=2, steps=steps,
                                checkpoints=ONLY_REQUESTED_CHECKPOINTS)
    run("train", str(uninterrupted))
    lora = load_file(tmp_path / "stopped" / "output" / "tiny.safetensors")
    reference = load_file(tmp_path / "uninterrupted" / "output" / "tiny.safetensors")
    assert relative_difference(reference, lora) < 1e-5


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_on_one_machine_train_as_two_processes_do(two_process_run, tmp_path, tiny_model_dir, tiny_dataset):
    """README "Several machines", on one machine: node 0 through `lora-wizard train --nnodes`,
    node 1 through torchrun on the run folder, meeting at a c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    answers = answers_for(tmp_path, tiny_model_dir, tiny_dataset, batch_size=2, processes=1)
    run_dir = tmp_path / "output" / "tiny.run"
    first = subprocess.Popen(
        [LORA_WIZARD, "train", str(answers), "--processes", "1", "--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENGINE_ENV,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "answers.toml").is_file():  # node 0 creates the run folder
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() is not None else "no run folder"
            time.sleep(0.1)
        second = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "-m", "engine", "run", str(run_dir)],
            capture_output=True, text=True, timeout=600, env=ENGINE_ENV,
        )
        output, _ = first.communicate(timeout=600)
    finally:
        kill_leftovers([psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)] if first.poll() is None else [])
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert first.returncode == 0, output[-3000:] + (run_dir / "engine.log").read_text()[-3000:]
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert events[-1]["kind"] == "finished"
    assert [e["step"] for e in events if e["kind"] == "step"] == list(range(1, 9))  # 2 nodes x batch 2: as 2 processes
    two_processes, _ = two_process_run
    reference = load_file(two_processes / "output" / "tiny.safetensors")
    assert relative_difference(reference, load_file(tmp_path / "output" / "tiny.safetensors")) < 1e-5
