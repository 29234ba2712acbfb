"""What a run writes besides its checkpoints: sample images, the LoRA files (every few epochs and
the final one, in kohya's format) and, with `[output] tensorboard`, TensorBoard logs. Only the
main process writes them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.events import EventLog, Sampled, Saved
from engine.plan import TrainingPlan

if TYPE_CHECKING:
    from engine.devices import Parking
    from engine.families import LoadedModel


class RunOutputs:
    def __init__(self, plan: TrainingPlan, events: EventLog, *, accelerator: Any, model: LoadedModel, parking: Parking,
                 precision: str, folder: Path, sample_prompts: list, started_at: float, session_id: str):
        self.plan = plan
        self.answers = plan.answers
        self.events = events
        self.accelerator = accelerator
        self.model = model
        self.parking = parking
        self.precision = precision
        self.folder = folder  # the run folder: samples/ and tensorboard/ go there
        self.sample_prompts = sample_prompts
        self.started_at = started_at
        self.session_id = session_id  # kohya's ss_session_id
        self.is_main = accelerator.is_main_process

    def unwrapped_model(self) -> LoadedModel:
        """The model with accelerate's wrappers (data-parallel, mixed precision) taken off."""
        unwrap = self.accelerator.unwrap_model
        return replace(self.model, denoiser=unwrap(self.model.denoiser), text_encoders=[unwrap(e) for e in self.model.text_encoders])

    def sample(self, *, step: int, epoch: int) -> None:
        """Sample images from the live model into the run folder."""
        if not self.sample_prompts or not self.is_main:
            return
        from engine.sampling import sample_images

        a = self.answers
        # A parked VAE comes back for the images (diffusers' pipeline runs on its device), parked
        # text encoders only while the prompts are encoded; a compiled UNet runs uncompiled (the
        # sampler's shapes would compile it again).
        with self.parking.in_use("vae"), self.uncompiled():
            paths = sample_images(
                self.unwrapped_model(), self.sample_prompts, self.folder / "samples", name=a.output.name, step=step,
                seed=a.training.seed, clip_skip=a.training.clip_skip,
                text_encoders_in_use=lambda: self.parking.in_use("text_encoders"),
            )
        self.events.emit(Sampled(step=step, epoch=epoch, paths=[str(p) for p in paths], prompts=[p.prompt for p in self.sample_prompts]))

    def uncompiled(self) -> Any:
        if not self.answers.training.compile:
            return nullcontext()
        import torch

        return torch.compiler.set_stance("force_eager")

    def save(self, path: Path, *, step: int, epoch: int, overwrite: bool | None = None) -> Path:
        """Write the LoRA as trained so far to `path` (the answers' `overwrite` unless told)."""
        import torch

        from engine.network import kohya_metadata, kohya_state_dict, save_lora_file

        a = self.answers
        if not self.is_main:
            return path
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.output.dtype]
        plan = self.plan
        finished = path == a.lora_path
        stats = {
            "started_at": self.started_at,
            "finished_at": time.time() if finished else None,
            "steps": step,
            "epoch": epoch,
            "max_train_steps": plan.total_steps,
            "num_train_images": plan.dataset.num_train_items,
            "num_reg_images": plan.dataset.num_reg_items,
            "num_batches_per_epoch": plan.batches_per_epoch,
            "resolution": plan.resolution,
            "dataset_dirs": plan.dataset.dataset_dirs(),
            "reg_dataset_dirs": plan.dataset.dataset_dirs(reg=True),
            "tag_frequency": plan.dataset.tag_frequency(),
            "session_id": self.session_id,
            "mixed_precision": self.precision,
        }
        tensors = kohya_state_dict(self.unwrapped_model(), dtype=dtype)
        metadata = kohya_metadata(model=self.model, answers=a, stats=stats)
        overwrite = a.output.overwrite if overwrite is None else overwrite
        saved = save_lora_file(path, tensors, metadata, overwrite=overwrite)
        self.events.emit(Saved(path=str(saved), step=step, epoch=epoch))
        return saved

    @contextmanager
    def tensorboard(self, start_step: int) -> Iterator[None]:
        """With `[output] tensorboard`, the step and sample events go to <run folder>/tensorboard
        too while inside."""
        if not (self.answers.output.tensorboard and self.is_main):
            yield
            return
        from engine.tensorboard import TensorBoardLog

        # A resumed run replaces what the killed one logged after its checkpoint.
        board = TensorBoardLog(self.folder / "tensorboard", purge_step=start_step + 1 if start_step else None)
        self.events.listeners.append(board)
        try:
            yield
        finally:
            self.events.listeners.remove(board)
            board.close()
