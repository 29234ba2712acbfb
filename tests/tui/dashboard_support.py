"""A recorded run for the dashboard's tests: the event stream of a real training of the demo's
tiny model (6 epochs, 240 steps, samples every 2 epochs, a checkpoint every epoch), recorded
with `lora-wizard train` and kept in tests/tui/data/recorded_run with its sample images. Its
paths were written as `{root}`; `recorded_run()` lays it out again under a new root.

    run = recorded_run(tmp_path, until=lambda e: e["kind"] == "step" and e["step"] == 120)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from engine.config import Answers, save_answers
from tui_lora.system_stats import GpuStats, SystemStats

RECORDING = Path(__file__).parent / "data" / "recorded_run"
GiB = 1024**3
LORA_BYTES = 282_376  # the size of the recorded run's LoRA file


def recorded_events(root: Path) -> list[dict]:
    text = (RECORDING / "events.jsonl").read_text(encoding="utf-8").replace("{root}", str(root))
    return [json.loads(line) for line in text.splitlines()]


def recorded_run(root: Path, *, until: Callable[[dict], bool] | None = None, lora: bool = True) -> Path:
    """The run folder `root/output/usu_bear.run` with the recorded events up to and including
    the first for which `until` is true (all of them when None), its answers, its dataset's
    folders (the finish screen reads the instance prompt from them) and its samples."""
    run = root / "output" / "usu_bear.run"
    (run / "samples").mkdir(parents=True)
    (root / "train" / "10_usu bear").mkdir(parents=True)
    (root / "reg" / "1_bear").mkdir(parents=True)
    answers = Answers.model_validate({
        "model": {"path": str(root / "model")},
        "dataset": {"train_dir": str(root / "train"), "reg_dir": str(root / "reg"), "resolution": 64},
        "output": {"dir": str(root / "output"), "name": "usu_bear"},
    })  # fmt: skip
    save_answers(answers, run / "answers.toml")
    for image in (RECORDING / "samples").glob("*.png"):
        shutil.copy(image, run / "samples" / image.name)
    write_events(run, events_until(root, until))
    if lora:
        (root / "output" / "usu_bear.safetensors").write_bytes(b"\0" * LORA_BYTES)
    return run


def events_until(root: Path, until: Callable[[dict], bool] | None) -> list[dict]:
    events = recorded_events(root)
    if until is None:
        return events
    end = next(index for index, event in enumerate(events) if until(event))
    return events[: end + 1]


def events_after(root: Path, until: Callable[[dict], bool]) -> list[dict]:
    """The rest of the recording: the events after those `events_until` gives."""
    return recorded_events(root)[len(events_until(root, until)) :]


def write_events(run: Path, events: list[dict]) -> None:
    with (run / "events.jsonl").open("a", encoding="utf-8") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")


def at_step(step: int) -> Callable[[dict], bool]:
    return lambda event: event["kind"] == "step" and event["step"] == step


class FixedMonitor:
    """The machine as the dashboard's tests see it: two GPUs, busy (what a SystemMonitor reads)."""

    stats = SystemStats(
        gpus=(
            GpuStats(0, "NVIDIA H100 80GB HBM3", 97, int(41.5 * GiB), 80 * GiB, 64, 512.0, 700.0),
            GpuStats(1, "NVIDIA H100 80GB HBM3", 12, int(2.1 * GiB), 80 * GiB, 38, 88.0, 700.0),
        ),
        gpu_note=None,
        cpu_percent=23.0,
        ram_used=18 * GiB,
        ram_total=62 * GiB,
    )

    def read(self) -> SystemStats:
        return self.stats

    def close(self) -> None:
        pass
