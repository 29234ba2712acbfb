"""What happens after an optimizer step: the training loop's one place of decision.

Pure: from the answers' periodic settings, the step's number, whether it ends an epoch (or the
run), and the request read from outside (`stop` / `checkpoint`), `Cadence.after_step` says what
the loop does now, in this order:

    log         read the pending losses back and write their step events
    end_epoch   write the epoch event
    sample      sample images (every N steps, or every N epochs when not sampled by steps)
    save        write the epoch's LoRA file (every N epochs, not on the run's last step)
    checkpoint  write a resumable checkpoint (every N steps, every epoch, or on request)
    stop        stop after that checkpoint

A checkpoint or a stop due on an epoch's last step waits for the epoch's own work (its event,
sample and LoRA file), so that the run resumed from it starts the next epoch with nothing of this
one left undone. On the run's last step only a request checkpoints: the final LoRA follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.config import Answers

Request = str | None  # None, "checkpoint" or "stop" (engine.train.Controls.poll)


@dataclass(frozen=True)
class Actions:
    log: bool = False
    end_epoch: bool = False
    sample: bool = False
    save: bool = False
    checkpoint: bool = False
    stop: bool = False


@dataclass(frozen=True)
class Cadence:
    total_steps: int
    steps_per_epoch: int
    processes: int = 1
    log_every_steps: int = 10
    sample_every_steps: int = 0
    sample_every_epochs: int = 0
    sample_at_start: bool = False
    save_every_epochs: int = 0
    checkpoint_every_steps: int = 0
    checkpoint_every_epoch: bool = True

    @classmethod
    def from_answers(cls, answers: Answers, *, total_steps: int, steps_per_epoch: int) -> Cadence:
        return cls(
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            processes=answers.training.processes,
            log_every_steps=answers.training.log_every_steps,
            sample_every_steps=answers.samples.every_steps,
            sample_every_epochs=answers.samples.every_epochs,
            sample_at_start=answers.samples.at_start,
            save_every_epochs=answers.training.save_every_epochs,
            checkpoint_every_steps=answers.checkpoints.every_steps,
            checkpoint_every_epoch=answers.checkpoints.every_epoch,
        )

    def samples_before(self, step: int) -> bool:
        """Sample the untrained LoRA before the first step (not when resuming)."""
        return self.sample_at_start and step == 0

    def logs(self, step: int) -> bool:
        """Reading the loss back forces a device sync: every few steps, not every step."""
        return step % self.log_every_steps == 0 or step == self.total_steps

    def polls(self, step: int) -> bool:
        """Whether to read the outside requests after this step. With several processes, agreeing
        on a request is a collective that waits for the GPU: it is asked when the losses are read
        back anyway."""
        return self.processes == 1 or self.logs(step)

    def after_step(self, step: int, *, epoch: int, epoch_end: bool, request: Request = None) -> Actions:
        """What to do after optimizer step `step` (1-based) of epoch `epoch` (1-based); `epoch_end`:
        the step is its epoch's last, or the run's."""
        done = step >= self.total_steps
        sampled_by_steps = _every(step, self.sample_every_steps)
        checkpoint_due = _every(step, self.checkpoint_every_steps)
        if not epoch_end:
            checkpoint = bool(request) or checkpoint_due
            return Actions(log=self.logs(step) or checkpoint, sample=sampled_by_steps, checkpoint=checkpoint,
                           stop=request == "stop")
        return Actions(
            log=True,
            end_epoch=True,
            sample=sampled_by_steps or _every(epoch, self.sample_every_epochs),
            save=_every(epoch, self.save_every_epochs) and not done,
            checkpoint=bool(request) or (not done and (self.checkpoint_every_epoch or checkpoint_due)),
            stop=request == "stop",
        )

    def final_epoch(self, step: int) -> int:
        """The epoch count the final LoRA records (a run cut short by max_steps ends mid-epoch)."""
        return min(math.ceil(self.total_steps / self.steps_per_epoch), math.ceil(step / self.steps_per_epoch))


def _every(count: int, period: int) -> bool:
    return bool(period) and count % period == 0
