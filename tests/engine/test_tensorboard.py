"""`[output] tensorboard = true`: the run's losses, learning rates and samples in TensorBoard's own
format, read back with TensorBoard's reader."""

from __future__ import annotations

import sys

import pytest

from engine.config import load_answers
from engine.errors import UserError
from engine.events import EventLog
from engine.plan import prepare_plan
from engine.run_folder import create_run_folder
from engine.train import train
from tests.conftest import write_answers

SETTINGS = {
    "training": {"max_steps": 4, "log_every_steps": 2},
    "samples": {"prompts": ["usu bear --w 64 --h 64 --s 2 --d 1"], "every_steps": 2},
    "output": {"tensorboard": True},
}


def test_the_logged_scalars_are_the_step_events(tmp_path, tiny_model_dir, tiny_dataset):
    # tensorboard is in the `test` extra: this test runs, never skips
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    answers = load_answers(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0], **SETTINGS))
    run_dir = create_run_folder(answers)
    events = []
    train(prepare_plan(answers), EventLog(None, [events.append]), run_dir=run_dir)
    steps = [e for e in events if e["kind"] == "step"]

    board = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    board.Reload()
    losses = board.Scalars("loss/current")
    assert [s.step for s in losses] == [e["step"] for e in steps] == [1, 2, 3, 4]
    # TensorBoard stores float32; the events carry the float32 loss read back as a Python float.
    assert [s.value for s in losses] == pytest.approx([e["loss"] for e in steps], rel=1e-7)
    assert [s.value for s in board.Scalars("lr/unet")] == pytest.approx([e["lr"] for e in steps], rel=1e-7)
    averages = [s.value for s in board.Scalars("loss/average")]
    assert averages[-1] == pytest.approx(sum(e["loss"] for e in steps) / 4, rel=1e-6)  # one epoch here
    assert [image.step for image in board.Images("samples/00")] == [2, 4]


def test_asking_for_tensorboard_without_it_installed_says_how_to_get_it(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: the import system finds nothing
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0], **SETTINGS))
    with pytest.raises(UserError, match=r'pip install "lora-wizard\[tensorboard\]"'):
        prepare_plan(answers)


def test_a_resumed_run_replaces_what_was_logged_after_its_checkpoint(tmp_path, tiny_model_dir, tiny_dataset):
    """Killed after logging step 3 but before checkpointing it: the resumed run starts from step 2's
    checkpoint, and TensorBoard shows each step once, with the resumed run's values."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.checkpoint import checkpoint_dirs, read_checkpoint
    from engine.train import Controls, Interrupted

    class StopAfterThree(Controls):
        polls = 0

        def poll(self):
            self.polls += 1
            return "stop" if self.polls == 3 else None

    settings = {**SETTINGS, "checkpoints": {"every_steps": 2}, "samples": {}}
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0], **settings))
    run_dir = create_run_folder(answers)
    with pytest.raises(Interrupted):
        train(prepare_plan(answers), EventLog(None), run_dir=run_dir, controls=StopAfterThree())
    newest = checkpoint_dirs(run_dir)[0]
    assert read_checkpoint(newest).position.step == 3
    shutil.rmtree(newest)  # as if killed before that checkpoint was committed
    events = []
    train(prepare_plan(answers, for_resume=True), EventLog(None, [events.append]), run_dir=run_dir, resume=True)
    assert [e["step"] for e in events if e["kind"] == "resumed"] == [2]

    board = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    board.Reload()
    losses = board.Scalars("loss/current")
    resumed = {e["step"]: e["loss"] for e in events if e["kind"] == "step"}
    assert [s.step for s in losses] == [1, 2, 3, 4]
    assert [s.value for s in losses[2:]] == pytest.approx([resumed[3], resumed[4]], rel=1e-7)
