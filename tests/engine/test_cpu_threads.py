"""torch's threads sized to the free cores when a run starts, overridable, recorded for resume."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from engine.config import load_answers
from engine.cpu_threads import allowed_cores, busy_cores, choose_threads, recorded_threads, threads_for
from engine.errors import UserError
from tests.conftest import write_answers


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_free_cores_are_shared_and_at_least_one():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 1.9) == 1  # two busy processes on two cores: one thread, not two
    assert threads_for(2, 2.0) == 1
    assert threads_for(16, 3.2) == 13
    assert threads_for(16, 0.0, processes=4) == 4


def test_a_cgroup_quota_caps_the_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")
    assert allowed_cores(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert allowed_cores(cpu_max) == allowed_cores(tmp_path / "missing")
    cpu_max.write_text("150000 100000\n")
    assert allowed_cores(cpu_max) == min(2, allowed_cores(tmp_path / "missing"))


def test_the_record_then_the_setting_then_omp_num_threads_decide():
    assert choose_threads(3, recorded=5, environ={}).threads == 5
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "2"}).source == "setting"
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "2"}).threads == 2
    measured = choose_threads(None, environ={})
    assert measured.source == "free cores" and 1 <= measured.threads <= allowed_cores()


def test_processes_keeping_every_core_busy_leave_one_thread():
    """The busy-CPU case (bench/cpu_threads.py measures its speed): as many spinning processes as
    usable cores, and a run takes one thread instead of torch's one per core."""
    cores = allowed_cores()
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=spin, args=(20.0,)) for _ in range(cores)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(1.0)  # the spinners are running
        assert busy_cores() > cores - 0.5
        assert choose_threads(None, environ={}).threads == 1
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()


def test_a_resume_takes_the_count_its_run_started_with(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    assert recorded_threads(events) is None
    lines = [
        {"v": 1, "time": 1.0, "kind": "started", "total_steps": 8},
        {"v": 1, "time": 2.0, "kind": "ready", "device": "cpu", "precision": "no", "total_steps": 8, "notes": [], "cpu_threads": 3},
        {"v": 1, "time": 3.0, "kind": "step", "step": 1},
    ]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert recorded_threads(events) == 3


def test_cpu_threads_is_validated_like_every_key(tmp_path, tiny_dataset):
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(UserError, match="cpu_threads"):
        load_answers(write_answers(tmp_path, model, *tiny_dataset, training={"cpu_threads": 0}), check_paths=False)
    answers = load_answers(write_answers(tmp_path, model, *tiny_dataset, training={"cpu_threads": 2}), check_paths=False)
    assert answers.training.cpu_threads == 2


def test_a_run_records_its_count_and_its_resume_uses_it(tmp_path, tiny_model_dir, tiny_dataset):
    import os
    import shutil
    import signal
    import subprocess

    answers = write_answers(tmp_path, tiny_model_dir, *tiny_dataset, training={"max_steps": 12, "log_every_steps": 1},
                            checkpoints={"every_steps": 3})
    sized = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the engine decides
    first = subprocess.Popen([shutil.which("lora-wizard"), "train", str(answers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=sized)
    for line in first.stdout:
        event = json.loads(line)
        if event["kind"] == "ready":
            recorded = event["cpu_threads"]
        if event["kind"] == "step" and event["step"] >= 4:
            first.send_signal(signal.SIGKILL)
            break
    first.wait(timeout=60)
    assert 1 <= recorded <= allowed_cores()

    other = str(recorded + 1)  # a resume told otherwise still takes the run's count
    resumed = subprocess.run([shutil.which("lora-wizard"), "resume", str(tmp_path / "output" / "tiny.run")], capture_output=True,
                             text=True, env={**sized, "OMP_NUM_THREADS": other}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ready = [json.loads(line) for line in resumed.stdout.splitlines() if json.loads(line)["kind"] == "ready"]
    assert [e["cpu_threads"] for e in ready] == [recorded]
