"""Runs that survive: exact resume after SIGKILL, a kill during a checkpoint write, SIGINT, and one
engine per run folder."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.checkpoint import checkpoint_dirs, read_checkpoint
from engine.events import read_events
from tests.conftest import write_answers

LORA_WIZARD = shutil.which("lora-wizard")
STEPS = 12
RUN_SETTINGS = {
    "training": {"max_steps": STEPS, "log_every_steps": 1},
    "checkpoints": {"every_steps": 3},
}


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([LORA_WIZARD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_step(process: subprocess.Popen, step: int) -> None:
    """Read the JSON event lines until a step event at or past `step`, then SIGKILL."""
    for line in process.stdout:
        event = json.loads(line)
        if event["kind"] == "step" and event["step"] >= step:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return
        assert event["kind"] not in ("finished", "failed"), event
    raise AssertionError(f"the run ended before step {step}: {process.stderr.read()[-2000:]}")


def finish(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines()]


def lora_tensors(answers_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(answers_dir / "output" / "tiny.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, tiny_dataset):
    """The same run without interruption, trained in this process (test_train_e2e shows the
    command line and the library give identical tensors)."""
    from engine.config import load_answers
    from engine.events import EventLog
    from engine.plan import plan_training
    from engine.train import train

    folder = tmp_path_factory.mktemp("uninterrupted")
    answers = write_answers(folder, tiny_model_dir, *tiny_dataset, **RUN_SETTINGS)
    train(plan_training(load_answers(answers)), EventLog(None))
    return lora_tensors(folder)


def assert_identical(result: dict, expected: dict) -> None:
    assert result.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(result[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


def test_sigkill_at_three_random_steps_then_resume_is_exact(tmp_path, tiny_model_dir, tiny_dataset, uninterrupted):
    answers = write_answers(tmp_path, tiny_model_dir, *tiny_dataset, **RUN_SETTINGS)
    run_dir = tmp_path / "output" / "tiny.run"
    kills = sorted(random.Random().sample(range(1, STEPS), 3))
    print(f"killing after steps {kills}")
    kill_after_step(start("train", str(answers)), kills[0])
    for step in kills[1:]:
        kill_after_step(start("resume", str(run_dir)), step)
    events = finish(start("resume", str(run_dir)))
    resumed = [e for e in events if e["kind"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] % 3 == 0
    assert events[-1]["kind"] == "finished" and events[-1]["steps"] == STEPS
    assert_identical(lora_tensors(tmp_path), uninterrupted)


PAUSING_ENGINE = """
import sys, time
from pathlib import Path
from engine.train import Trainer

marker = Path(sys.argv[2])
commits = []

def pause_on_second_commit(staging):
    commits.append(staging)
    if len(commits) == 2:
        marker.write_text(str(staging))
        time.sleep(600)

Trainer.before_checkpoint_commit = staticmethod(pause_on_second_commit)
from engine.__main__ import main
sys.exit(main(["run", sys.argv[1]]))
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, tiny_model_dir, tiny_dataset, uninterrupted):
    from engine.config import load_answers
    from engine.run_folder import create_run_folder

    answers = write_answers(tmp_path, tiny_model_dir, *tiny_dataset, **RUN_SETTINGS)
    run_dir = create_run_folder(load_answers(answers))
    script = tmp_path / "pausing_engine.py"
    script.write_text(PAUSING_ENGINE, encoding="utf-8")
    marker = tmp_path / "paused"
    engine = subprocess.Popen([sys.executable, str(script), str(run_dir), str(marker)], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert engine.poll() is None, "the engine ended before its second checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=30)
    finally:
        if engine.poll() is None:
            engine.kill()
    staging = Path(marker.read_text())
    assert staging.name.endswith(".tmp") and staging.exists()
    (committed,) = checkpoint_dirs(run_dir)
    assert read_checkpoint(committed).position.step == 3

    events = finish(start("resume", str(run_dir)))
    assert [e["step"] for e in events if e["kind"] == "resumed"] == [3]
    assert_identical(lora_tensors(tmp_path), uninterrupted)


def test_sigint_checkpoints_at_that_step_and_resume_continues(tmp_path, tiny_model_dir, tiny_dataset, uninterrupted):
    answers = write_answers(tmp_path, tiny_model_dir, *tiny_dataset, **RUN_SETTINGS)
    run_dir = tmp_path / "output" / "tiny.run"
    process = start("train", str(answers))
    for line in process.stdout:
        if json.loads(line).get("step") == 4:
            process.send_signal(signal.SIGINT)
            break
    process.communicate(timeout=120)
    assert process.returncode == 130
    last = list(read_events(run_dir / "events.jsonl"))[-1]
    assert last["kind"] == "interrupted" and last["reason"] == "SIGINT"
    stopped_at = last["step"]
    assert read_checkpoint(checkpoint_dirs(run_dir)[0]).position.step == stopped_at

    events = finish(start("resume", str(run_dir)))
    assert [e["step"] for e in events if e["kind"] == "resumed"] == [stopped_at]
    assert events[-1]["kind"] == "finished"
    assert_identical(lora_tensors(tmp_path), uninterrupted)


def test_requests_left_for_an_ended_engine_do_not_stop_the_resumed_run(tmp_path, tiny_model_dir, tiny_dataset, uninterrupted):
    from engine.run_folder import request

    answers = write_answers(tmp_path, tiny_model_dir, *tiny_dataset, **RUN_SETTINGS)
    run_dir = tmp_path / "output" / "tiny.run"
    kill_after_step(start("train", str(answers)), 4)
    # Typed after that engine's last check, so nobody read them.
    request(run_dir, "stop")
    request(run_dir, "checkpoint")

    events = finish(start("resume", str(run_dir)))
    assert [e["step"] for e in events if e["kind"] == "resumed"] == [3]
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [6, 9]  # the scheduled ones only (the final LoRA follows step 12)
    assert events[-1]["kind"] == "finished" and events[-1]["steps"] == STEPS
    assert not list((run_dir / "control").iterdir())
    assert_identical(lora_tensors(tmp_path), uninterrupted)


def test_a_request_made_once_the_engine_holds_the_lock_is_kept(tmp_path):
    from engine.run_folder import RunControls, RunLock, request

    request(tmp_path, "stop")  # for an engine that has ended
    time.sleep(0.05)  # file times may tick every few milliseconds
    with RunLock(tmp_path):
        time.sleep(0.05)
        request(tmp_path, "checkpoint")  # the run shows as running: this one is for the new engine
        RunControls(tmp_path).discard_stale_requests()
    assert sorted(p.name for p in (tmp_path / "control").iterdir()) == ["checkpoint"]


def test_one_engine_per_run_and_no_resume_on_a_changed_dataset(tmp_path, tiny_model_dir, tiny_dataset):
    train_dir = tmp_path / "train"
    shutil.copytree(tiny_dataset[0], train_dir)
    answers = write_answers(tmp_path, tiny_model_dir, train_dir, **RUN_SETTINGS)
    run_dir = tmp_path / "output" / "tiny.run"
    kill_after_step(start("train", str(answers)), 4)

    again = subprocess.run([LORA_WIZARD, "train", str(answers)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert "already has a run" in again.stderr and "lora-wizard resume" in again.stderr

    first = start("resume", str(run_dir))
    try:
        for line in first.stdout:  # wait until the first resume is really training
            if json.loads(line)["kind"] == "step":
                break
        second = subprocess.run([LORA_WIZARD, "resume", str(run_dir)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "already running" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()

    victim = next((train_dir / "10_usu bear").glob("*.png"))
    os.utime(victim, ns=(0, 0))
    changed = subprocess.run([LORA_WIZARD, "resume", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert changed.returncode == 2
    assert "dataset changed" in changed.stderr and victim.name in changed.stderr
