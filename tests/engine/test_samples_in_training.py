"""Samples during training: at the configured steps, with the given seeds, the same bytes on a rerun."""

from __future__ import annotations

from pathlib import Path

from engine.config import load_answers
from engine.events import EventLog
from engine.plan import prepare_plan
from engine.run_folder import create_run_folder
from engine.train import train
from tests.conftest import write_answers

SAMPLES = {"prompts": ["a photo of usu bear --w 64 --h 64 --s 2 --d 7", "bear --s 2 --ss dpmpp_2m"], "every_steps": 2, "at_start": True}


def train_with_samples(folder, model, dataset):
    answers = load_answers(write_answers(folder, model, dataset[0], training={"max_steps": 4}, samples=SAMPLES))
    run_dir = create_run_folder(answers)
    events = []
    train(prepare_plan(answers), EventLog(None, [events.append]), run_dir=run_dir)
    return run_dir, [e for e in events if e["kind"] == "sample"]


def test_samples_at_the_configured_steps_same_bytes_on_a_rerun(tmp_path, tiny_model_dir, tiny_dataset):
    first_dir, first = train_with_samples(tmp_path / "first", tiny_model_dir, tiny_dataset)
    assert [e["step"] for e in first] == [0, 2, 4]
    derived_seed = first[0]["paths"][1].rsplit("_", 1)[1]  # the second prompt has no --d: seed derived from the run's
    names = sorted(p.name for p in (first_dir / "samples").iterdir())
    assert names == [f"tiny_{step:06d}_{i:02d}_{seed}" for step in (0, 2, 4) for i, seed in ((0, "7.png"), (1, derived_seed))]
    # The LoRA changes what the model draws: the step-4 image differs from the one before training.
    samples = first_dir / "samples"
    assert (samples / "tiny_000000_00_7.png").read_bytes() != (samples / "tiny_000004_00_7.png").read_bytes()

    second_dir, second = train_with_samples(tmp_path / "second", tiny_model_dir, tiny_dataset)
    for a, b in zip(first, second, strict=True):
        for path_a, path_b in zip(a["paths"], b["paths"], strict=True):
            assert Path(path_a).read_bytes() == Path(path_b).read_bytes()
