"""`runs`, `attach`, `stop` and `checkpoint` on run folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from engine.events import EventLog, read_events
from tests.conftest import write_answers

LORA_WIZARD = shutil.which("lora-wizard")


def fabricated_run(root: Path, name: str, *kinds: str) -> Path:
    """A run folder whose events end with `kinds` (no engine: nothing holds its lock)."""
    folder = root / f"{name}.run"
    folder.mkdir(parents=True)
    (folder / "answers.toml").write_text("# frozen answers\n", encoding="utf-8")
    with EventLog(folder / "events.jsonl") as events:
        events.emit("started", run_dir=str(folder), total_steps=10, epochs=1, steps_per_epoch=10, breakdown=[], settings={})
        events.emit("ready", device="cpu", precision="no", total_steps=10)
        events.emit("step", step=1, total_steps=10, epoch=1, loss=0.25, lr=1e-4)
        for kind in kinds:
            if kind == "finished":
                events.emit("finished", lora=str(root / f"{name}.safetensors"), steps=10, epochs=1)
            elif kind == "failed":
                events.emit("failed", message="the loss became nan at step 2", remedy="lower the learning rate")
            elif kind == "interrupted":
                events.emit("interrupted", step=1, reason="SIGINT", resume=f"lora-wizard resume {folder}")
    return folder


def lora_wizard(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([LORA_WIZARD, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("kinds", "code", "expected"),
    [
        (("finished",), 0, "finished: "),
        (("failed",), 1, "remedy: lower the learning rate"),
        (("interrupted",), 130, "interrupted at step 1 (SIGINT)"),
        ((), 1, "stopped unexpectedly at step 1"),
    ],
)
def test_attach_follows_to_the_end_and_exits_with_the_outcome(tmp_path, kinds, code, expected):
    folder = fabricated_run(tmp_path, "usu", *kinds)
    result = lora_wizard("attach", str(folder))
    assert result.returncode == code, result.stderr
    assert "step 1/10  epoch 1  loss 0.2500" in result.stdout
    assert expected in result.stdout
    if code:
        assert f"lora-wizard resume {folder}" in result.stderr


def test_attach_shows_the_ready_events_notes(tmp_path):
    folder = tmp_path / "usu.run"
    folder.mkdir()
    with EventLog(folder / "events.jsonl") as events:
        events.emit("started", run_dir=str(folder), total_steps=1, epochs=1, steps_per_epoch=1, breakdown=[], settings={})
        events.emit("ready", device="cpu", precision="no", total_steps=1, notes=["the text encoder's layers are ignored"])
        events.emit("finished", lora=str(tmp_path / "usu.safetensors"), steps=1, epochs=1)
    result = lora_wizard("attach", str(folder))
    assert result.returncode == 0, result.stderr
    assert "training on cpu in fp32\nnote: the text encoder's layers are ignored\n" in result.stdout


def test_runs_lists_each_state(tmp_path):
    fabricated_run(tmp_path, "done", "finished")
    fabricated_run(tmp_path, "broken", "failed")
    fabricated_run(tmp_path, "paused", "interrupted")
    fabricated_run(tmp_path, "lost")
    result = lora_wizard("runs", str(tmp_path))
    assert result.returncode == 0
    rows = {line.split()[-1]: line for line in result.stdout.splitlines()[1:]}
    assert rows[str(tmp_path / "done.run")].startswith("finished")
    assert rows[str(tmp_path / "broken.run")].startswith("failed")
    assert rows[str(tmp_path / "paused.run")].startswith("interrupted")
    assert rows[str(tmp_path / "lost.run")].startswith("stopped unexpectedly")
    assert "1/10" in rows[str(tmp_path / "lost.run")]


def test_stop_and_checkpoint_need_a_running_engine(tmp_path):
    folder = fabricated_run(tmp_path, "done", "finished")
    for command in ("stop", "checkpoint"):
        result = lora_wizard(command, str(folder))
        assert result.returncode == 2 and "no engine is running" in result.stderr
    assert lora_wizard("stop", str(tmp_path)).returncode == 2  # not a run folder


def test_checkpoint_and_stop_requests_reach_a_running_engine(tmp_path, tiny_model_dir, tiny_dataset):
    answers = write_answers(tmp_path, tiny_model_dir, tiny_dataset[0], training={"max_steps": 400, "log_every_steps": 1},
                            checkpoints={"every_epoch": False})
    run_dir = tmp_path / "output" / "tiny.run"
    engine = subprocess.Popen([LORA_WIZARD, "train", str(answers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in engine.stdout:
            if json.loads(line)["kind"] == "step":
                break
        assert lora_wizard("checkpoint", str(run_dir)).returncode == 0
        for line in engine.stdout:
            if json.loads(line)["kind"] == "checkpoint":
                break
        assert lora_wizard("stop", str(run_dir)).returncode == 0
        engine.communicate(timeout=120)
    finally:
        if engine.poll() is None:
            engine.kill()
    assert engine.returncode == 130
    events = list(read_events(run_dir / "events.jsonl"))
    assert [e["kind"] for e in events][-2:] == ["checkpoint", "interrupted"]
    assert events[-1]["reason"] == "stop requested" and events[-1]["step"] < 400
    assert sum(e["kind"] == "checkpoint" for e in events) == 2
    deadline = time.monotonic() + 10
    while (run_dir / "control" / "stop").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (run_dir / "control" / "stop").exists()  # the request was consumed
