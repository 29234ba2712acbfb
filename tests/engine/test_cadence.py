"""The cadence table: what the loop does after each step (engine/cadence.py), and the walk over
the epochs it is asked at (engine/schedule.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cadence import Actions, Cadence
from engine.checkpoint import Position
from engine.dataset import Example
from engine.schedule import Schedule

# 3 epochs of 4 steps; the run's last step is 12.
BASE = dict(total_steps=12, steps_per_epoch=4, log_every_steps=10, checkpoint_every_epoch=False)


def actions(cadence: Cadence, step: int, request: str | None = None) -> Actions:
    epoch = (step - 1) // cadence.steps_per_epoch + 1
    epoch_end = step % cadence.steps_per_epoch == 0 or step == cadence.total_steps
    return cadence.after_step(step, epoch=epoch, epoch_end=epoch_end, request=request)


def steps_where(cadence: Cadence, what: str, request_at: dict[int, str] | None = None) -> list[int]:
    request_at = request_at or {}
    return [s for s in range(1, cadence.total_steps + 1) if getattr(actions(cadence, s, request_at.get(s)), what)]


def test_every_steps_checkpoint_due_on_an_epoch_end_is_written_without_every_epoch():
    """every_steps = 2 with every_epoch off: steps 4 and 8 end epochs and are due; the checkpoint is
    written there after the epoch's work, and the resume begins the next epoch."""
    cadence = Cadence(**BASE, checkpoint_every_steps=2)
    assert steps_where(cadence, "checkpoint") == [2, 4, 6, 8, 10]  # not 12: the final LoRA follows
    at_epoch_end = actions(cadence, 4)
    assert at_epoch_end.end_epoch and at_epoch_end.checkpoint


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, []),
        ({"checkpoint_every_epoch": True}, [4, 8]),
        ({"checkpoint_every_steps": 3}, [3, 6, 9]),
        ({"checkpoint_every_steps": 3, "checkpoint_every_epoch": True}, [3, 4, 6, 8, 9]),
        ({"checkpoint_every_steps": 5}, [5, 10]),
    ],
)
def test_checkpoints(settings, expected):
    assert steps_where(Cadence(**{**BASE, **settings}), "checkpoint") == expected


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"sample_every_steps": 3}, [3, 6, 9, 12]),
        ({"sample_every_epochs": 2}, [8]),
        ({"sample_every_epochs": 1}, [4, 8, 12]),
        # an epoch end sampled by steps is not sampled twice
        ({"sample_every_steps": 2, "sample_every_epochs": 1}, [2, 4, 6, 8, 10, 12]),
    ],
)
def test_samples(settings, expected):
    assert steps_where(Cadence(**{**BASE, **settings}), "sample") == expected


def test_sample_before_the_first_step_only_when_starting():
    cadence = Cadence(**BASE, sample_at_start=True)
    assert cadence.samples_before(0)
    assert not cadence.samples_before(4)  # a resumed run does not sample the start again
    assert not Cadence(**BASE).samples_before(0)


def test_epoch_files_are_saved_except_at_the_end_where_the_final_lora_is():
    assert steps_where(Cadence(**BASE, save_every_epochs=1), "save") == [4, 8]
    assert steps_where(Cadence(**BASE, save_every_epochs=2), "save") == [8]
    assert steps_where(Cadence(**BASE), "end_epoch") == [4, 8, 12]


def test_losses_are_read_back_every_few_steps_at_epoch_ends_and_before_a_checkpoint():
    cadence = Cadence(**{**BASE, "log_every_steps": 5}, checkpoint_every_steps=3)
    assert steps_where(cadence, "log") == [3, 4, 5, 6, 8, 9, 10, 12]


def test_requests_are_polled_every_step_with_one_process_and_at_read_backs_with_several():
    assert all(Cadence(**BASE).polls(s) for s in range(1, 13))
    several = Cadence(**{**BASE, "log_every_steps": 5}, processes=2)
    assert [s for s in range(1, 13) if several.polls(s)] == [5, 10, 12]


@pytest.mark.parametrize("step", [2, 4, 12])
def test_a_stop_request_checkpoints_then_stops_even_on_the_last_step(step):
    done = actions(Cadence(**BASE), step, "stop")
    assert done.checkpoint and done.stop and done.log
    asked = actions(Cadence(**BASE), step, "checkpoint")
    assert asked.checkpoint and not asked.stop


def test_a_stop_on_an_epochs_last_step_comes_after_the_epochs_work():
    done = actions(Cadence(**BASE, save_every_epochs=1, sample_every_epochs=1), 4, "stop")
    assert done == Actions(log=True, end_epoch=True, sample=True, save=True, checkpoint=True, stop=True)


def test_a_run_cut_short_ends_its_last_epoch_on_its_last_step():
    cadence = Cadence(**{**BASE, "total_steps": 10}, checkpoint_every_steps=5)
    last = cadence.after_step(10, epoch=3, epoch_end=True)
    assert last.end_epoch and last.log and not last.checkpoint
    assert cadence.final_epoch(10) == 3
    assert Cadence(**BASE).final_epoch(12) == 3
    assert Cadence(**BASE).final_epoch(5) == 2  # stopped and finished early


def schedule(total_steps: int, epochs: int = 3) -> Schedule:
    examples = [Example(path=Path(f"{i}.png"), caption=str(i), is_reg=False) for i in range(4)]
    return Schedule(examples, {e.path: (64, 64) for e in examples}, seed=1, global_batch=2, accumulation=1,
                    epochs=epochs, total_steps=total_steps)


def test_the_walk_marks_epoch_ends_and_where_a_resume_begins():
    walked = list(schedule(6).walk(Position(0, 0, 0)))
    assert [(s.step, s.epoch, s.epoch_end) for s in walked] == [
        (1, 1, False), (2, 1, True), (3, 2, False), (4, 2, True), (5, 3, False), (6, 3, True)]
    assert walked[0].after == Position(1, 0, 1)
    assert walked[1].after == Position(2, 1, 0)  # the next epoch: this one's work is done
    resumed = list(schedule(6).walk(walked[2].after))
    assert [(s.step, s.batches) for s in resumed] == [(s.step, s.batches) for s in walked[3:]]


def test_the_walk_stops_at_max_steps_mid_epoch():
    walked = list(schedule(5).walk(Position(0, 0, 0)))
    assert walked[-1].step == 5 and walked[-1].epoch_end
    assert list(schedule(5).walk(walked[-1].after)) == []
