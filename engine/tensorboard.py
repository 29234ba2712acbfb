"""TensorBoard logs of a run (`[output] tensorboard = true`), written from its events.

A listener on the run's event stream: every `step` event gives `loss/current`, `loss/average`
(the mean of the epoch so far) and `lr/unet`, kohya's tag names; every `sample` event gives its
images under `samples/<prompt index>`. Written by the main process to `<run folder>/tensorboard/`
with torch's SummaryWriter; view them with `tensorboard --logdir <run folder>`.

tensorboard is an optional extra: pip install "lora-wizard[tensorboard]".
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.events import Checkpointed, EpochEnded, Sampled, Saved, Step, parse_event

INSTALL_FIX = 'pip install "lora-wizard[tensorboard]", or set `[output] tensorboard = false`'


def check_tensorboard_installed() -> None:
    """A UserError when TensorBoard logs are asked for and the package is missing (before any work)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("`[output] tensorboard = true` needs the tensorboard package, which is not installed", fix=INSTALL_FIX)


class TensorBoardLog:
    """Writes the step and sample events it is given to a TensorBoard log folder."""

    def __init__(self, folder: Path, *, purge_step: int | None = None):
        check_tensorboard_installed()
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run hides what the stopped one logged after its checkpoint.
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)
        self._epoch = None
        self._epoch_losses: list[float] = []

    def __call__(self, data: dict[str, Any]) -> None:
        event = parse_event(data)
        if isinstance(event, Step):
            self._step(event)
        elif isinstance(event, Sampled):
            self._sample(event)
        elif isinstance(event, EpochEnded | Checkpointed | Saved):
            self.writer.flush()  # what is written survives a kill from here on

    def _step(self, event: Step) -> None:
        step, loss = event.step, event.loss
        if event.epoch != self._epoch:
            self._epoch, self._epoch_losses = event.epoch, []
        self._epoch_losses.append(loss)
        self.writer.add_scalar("loss/current", loss, step)
        self.writer.add_scalar("loss/average", sum(self._epoch_losses) / len(self._epoch_losses), step)
        self.writer.add_scalar("lr/unet", event.lr, step)

    def _sample(self, event: Sampled) -> None:
        import numpy as np
        from PIL import Image

        for index, path in enumerate(event.paths):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"samples/{index:02d}", pixels, event.step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
