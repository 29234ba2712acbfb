"""Data-parallel training with 2 CPU processes (gloo), started through torchrun as on GPUs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from engine.events import read_events
from engine.runs import engine_running
from tests.conftest import write_answers

LORA_WIZARD = shutil.which("lora-wizard")
SETTINGS = {"training": {"max_steps": 8, "log_every_steps": 2}, "output": {"dtype": "fp32"}, "checkpoints": {"every_steps": 2}}


def answers_for(folder: Path, model: Path, dataset, *, batch_size: int, processes: int, steps: int = 8) -> Path:
    sections = {k: dict(v) for k, v in SETTINGS.items()}
    sections["training"].update(batch_size=batch_size, processes=processes, max_steps=steps)
    return write_answers(folder, model, *dataset, **sections)


def run(*args: str) -> list[dict]:
    result = subprocess.run([LORA_WIZARD, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


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
    detached = subprocess.run([LORA_WIZARD, "train", str(answers), "--detach"], capture_output=True, text=True, timeout=300)
    assert detached.returncode == 0, detached.stderr
    run_dir = Path(detached.stdout.strip().splitlines()[-1])
    pid = int(detached.stderr.split("(pid ")[1].split(")")[0])
    deadline = time.monotonic() + 300
    while not any(e["kind"] == "checkpoint" and e["step"] >= 4 for e in read_events(run_dir / "events.jsonl")):
        assert time.monotonic() < deadline, (run_dir / "engine.log").read_text()[-2000:]
        time.sleep(0.2)
    # torchrun and both workers at once, like a power cut (torchrun starts its workers in
    # sessions of their own, so they are found as its children, not by process group).
    launcher = psutil.Process(pid)
    for process in [*launcher.children(recursive=True), launcher]:
        process.send_signal(signal.SIGKILL)
    while engine_running(run_dir):
        time.sleep(0.1)
    checkpoint_step = max(e["step"] for e in read_events(run_dir / "events.jsonl") if e["kind"] == "checkpoint")

    events = run("resume", str(run_dir))
    resumed = [e for e in events if e["kind"] == "resumed"]
    assert [e["step"] for e in resumed] == [checkpoint_step]
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps[0] == checkpoint_step + 1 and steps[-1] == 200
    assert events[-1]["kind"] == "finished" and events[-1]["steps"] == 200
