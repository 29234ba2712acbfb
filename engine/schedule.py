"""The order of training: which samples make up each optimizer step, epoch after epoch.

    an epoch's items in a seeded shuffled order -> split by bucket into batches of the global batch
    size (each batch from one bucket; with several buckets the batches are shuffled again)
    -> the batches grouped by gradient accumulation: one group a step

Every sample carries its global index (epoch x items per epoch + its place in the epoch): the
randomness of its augmentation and noise comes from the seed and that index (engine/seeds.py).
`Schedule.walk` is the one walk over epochs: the loop trains along it, and the latent feed decodes
images ahead along it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.buckets import Size
from engine.checkpoint import Position
from engine.dataset import Example
from engine.seeds import epoch_order

Batch = list[tuple[int, Example]]  # (global sample index, example)


@dataclass(frozen=True)
class PlannedStep:
    step: int  # 1-based number of this optimizer step
    epoch: int  # 1-based number of its epoch
    batches: list[Batch]  # the accumulated batches of the step
    after: Position  # where a run resumed after this step (and its epoch's work) begins
    epoch_end: bool  # the last step of its epoch, or of the run


@dataclass(frozen=True)
class Schedule:
    examples: list[Example]  # one epoch's items (engine.dataset.DatasetPlan.epoch_examples)
    sizes: dict[Path, Size]  # each image's bucket
    seed: int
    global_batch: int  # images per batch over all processes
    accumulation: int
    epochs: int
    total_steps: int

    def batches(self, epoch: int) -> list[Batch]:
        """One epoch's (0-based) batches."""
        per_epoch = len(self.examples)
        by_bucket: dict[Size, Batch] = {}
        for position, i in enumerate(epoch_order(self.seed, epoch, per_epoch)):
            example = self.examples[i]
            by_bucket.setdefault(self.sizes[example.path], []).append((epoch * per_epoch + position, example))
        size = self.global_batch
        batches = [items[j : j + size] for _, items in sorted(by_bucket.items()) for j in range(0, len(items), size)]
        if len(by_bucket) > 1:
            batches = [batches[i] for i in epoch_order(self.seed, epoch, len(batches), what="batches")]
        return batches

    def optimizer_steps(self, epoch: int) -> list[list[Batch]]:
        """One epoch's (0-based) optimizer steps, each a group of accumulated batches."""
        batches = self.batches(epoch)
        return [batches[i : i + self.accumulation] for i in range(0, len(batches), self.accumulation)]

    def walk(self, start: Position) -> Iterator[PlannedStep]:
        """The steps from `start` to the end of the run, in order."""
        step = start.step
        for epoch in range(start.epoch, self.epochs):
            groups = self.optimizer_steps(epoch)
            for index in range(start.group if epoch == start.epoch else 0, len(groups)):
                if step >= self.total_steps:
                    return
                step += 1
                epoch_end = index + 1 == len(groups) or step == self.total_steps
                after = Position(step, epoch + 1, 0) if epoch_end else Position(step, epoch, index + 1)
                yield PlannedStep(step, epoch + 1, groups[index], after, epoch_end)
