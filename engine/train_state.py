"""The state a checkpoint holds while training runs: the LoRA weights, the optimizer, the learning
rate schedule, the gradient scaler and every process's RNGs (the files: engine/checkpoint.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.checkpoint import (
    LoadedCheckpoint,
    Position,
    commit_checkpoint,
    restore_rng_states,
    stage_checkpoint,
    staging_dir,
    write_rank_rng,
)
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.families import LoadedModel


class TrainingState:
    def __init__(self, accelerator: Any, model: LoadedModel, optimizer: Any, lr_scheduler: Any):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def lora(self) -> dict[str, Any]:
        """The LoRA weights by parameter name (unet.* / te0.*)."""
        named = {}
        model = self.model
        for prefix, module in (("unet", model.denoiser), *((f"te{i}", e) for i, e in enumerate(model.text_encoders))):
            for name, param in self.accelerator.unwrap_model(module).named_parameters():
                if param.requires_grad:
                    named[f"{prefix}.{name}"] = param
        return named

    def write_checkpoint(self, run_dir: Path, position: Position, *, fingerprint: dict[str, Any], keep_last: int,
                         before_commit: Callable | None = None) -> Path | None:
        """Main process writes the shared state, every process its RNG file, then main commits;
        the committed folder (on the main process)."""
        accelerator = self.accelerator
        if accelerator.is_main_process:
            state = {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}
            if accelerator.scaler is not None:
                state["scaler"] = accelerator.scaler.state_dict()
            stage_checkpoint(run_dir, position, lora=self.lora(), training_state=state, fingerprint=fingerprint)
        accelerator.wait_for_everyone()
        staging = staging_dir(run_dir, position)
        write_rank_rng(staging, accelerator.process_index)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return None
        return commit_checkpoint(staging, keep_last=keep_last, before_commit=before_commit)

    def restore(self, checkpoint: LoadedCheckpoint) -> None:
        import torch

        params = self.lora()
        missing = set(params) ^ set(checkpoint.lora)
        if missing:
            raise UserError(
                f"the checkpoint does not match this network ({sorted(missing)[0]} ...)",
                where=checkpoint.path,
                fix="resume with the answers the run was started with (the run folder's answers.toml)",
            )
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(checkpoint.lora[name])
        state = checkpoint.training_state
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if "scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        world = self.accelerator.num_processes
        if checkpoint.ranks != world:
            raise UserError(
                f"this checkpoint was written by {checkpoint.ranks} processes; this run has {world}",
                where=checkpoint.path,
                fix=f"resume with `[training] processes = {checkpoint.ranks}`",
            )
        restore_rng_states(checkpoint.rng_of(self.accelerator.process_index))
