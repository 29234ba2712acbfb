"""The training loop: DreamBooth-style LoRA training, one readable function.

    load the base model -> add LoRA layers -> cache latents (and text conditioning when frozen)
    -> for each optimizer step: noise the latents, predict, weighted MSE, backward, step
    -> every few steps read the losses back and report them -> save the LoRA in kohya's format

Everything random is derived from the seed and the sample's global index (engine/seeds.py).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import Answers
from engine.dataset import Example
from engine.errors import UserError
from engine.events import EventLog
from engine.plan import TrainingPlan
from engine.seeds import epoch_order, generator

if TYPE_CHECKING:
    import torch



class TrainingFailed(Exception):
    """Training cannot go on (NaN loss, out of memory); carries a remedy for the user."""

    def __init__(self, message: str, remedy: str):
        super().__init__(message)
        self.remedy = remedy


@dataclass
class TrainResult:
    lora_path: Path
    steps: int
    epochs: int
    losses: list[float] = field(default_factory=list)


def resolve_precision(requested: str, device_type: str, bf16_supported: bool) -> str:
    """`auto` becomes bf16 where supported, else fp16, and no on a CPU."""
    if device_type == "cpu":
        if requested == "fp16":
            raise UserError(
                "`training.mixed_precision = \"fp16\"` needs a GPU; this run is on the CPU",
                fix='use "no" (or "bf16") on a CPU, or "auto"',
            )
        return "no" if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    return requested


def build_optimizer(answers: Answers, unet_params: list, te_params: list, device_type: str):
    import torch

    training = answers.training
    groups = [{"params": unet_params, "lr": training.unet_lr}]
    if te_params:
        groups.append({"params": te_params, "lr": training.text_encoder_lr})
    if training.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=1e-2, fused=device_type == "cuda")
    if training.optimizer == "adamw8bit":
        if device_type != "cuda":
            raise UserError('`training.optimizer = "adamw8bit"` needs a CUDA GPU', fix='use "adamw"')
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("8-bit AdamW needs bitsandbytes", fix="pip install 'lora-wizard[bnb]', or use \"adamw\"") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=1e-2)
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise UserError("the Prodigy optimizer needs prodigyopt", fix="pip install 'lora-wizard[prodigy]', or use \"adamw\"") from None
    return Prodigy(groups, weight_decay=1e-2)


def build_lr_scheduler(answers: Answers, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    training = answers.training
    name = {"constant": "constant_with_warmup"}.get(training.lr_scheduler, training.lr_scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=training.warmup_steps, num_training_steps=total_steps)


def snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), as kohya applies them."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr


class Trainer:
    """Holds what the loop needs; `run()` is the loop."""

    def __init__(self, plan: TrainingPlan, events: EventLog, *, should_stop=None):
        self.plan = plan
        self.answers = plan.answers
        self.events = events
        self.should_stop = should_stop or (lambda: False)
        self.examples: list[Example] = plan.dataset.epoch_examples()
        self.session_id = str(random.randint(0, 2**32 - 1))  # kohya's ss_session_id

    # --- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator

        from engine.families import load_base_model
        from engine.latents import LatentCache
        from engine.lora import add_lora, load_lora_file_into, lora_parameters

        a = self.answers
        probe = Accelerator(cpu=not torch.cuda.is_available() and not torch.backends.mps.is_available())
        device_type = probe.device.type
        bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
        self.precision = resolve_precision(a.training.mixed_precision, device_type, bf16)
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=device_type == "cpu")
        self.device = self.accelerator.device
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

        model = load_base_model(a.model.path, prediction=a.model.prediction, tokenizer=a.model.tokenizer)
        self.model = model
        # Frozen base weights in the training precision on a GPU; the VAE stays fp32 (it overflows in fp16).
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        if device_type == "cpu":
            weight_dtype = torch.float32
        model.vae.to(self.device, dtype=torch.float32).requires_grad_(False).eval()
        model.unet.to(self.device, dtype=weight_dtype).requires_grad_(False)
        for encoder in model.text_encoders:
            encoder.to(self.device, dtype=weight_dtype).requires_grad_(False)

        add_lora(model, dim=a.network.dim, alpha=a.network.effective_alpha, train_text_encoder=a.network.train_text_encoder)
        if a.network.init_from:
            load_lora_file_into(model, a.network.init_from)
        self.unet_params, self.te_params = lora_parameters(model)
        for param in (*self.unet_params, *self.te_params):
            param.data = param.data.float()
        model.unet.train()
        for encoder in model.text_encoders:
            encoder.train(a.network.train_text_encoder)
        if a.training.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
            if a.network.train_text_encoder:
                for encoder in model.text_encoders:
                    encoder.gradient_checkpointing_enable()

        cache_folder = a.output.dir / ".latent-cache" if a.training.cache_latents == "disk" else None
        self.latents = LatentCache(
            model,
            resolution=self.plan.resolution,
            mode=a.training.latents,
            seed=a.training.seed,
            keep=a.training.cache_latents != "off",
            folder=cache_folder,
        )
        if a.training.cache_latents != "off":
            unique = list(dict.fromkeys(e.path for e in self.examples))
            self.latents.fill(unique)
        self._conditioning_cache: dict[str, dict[str, Any]] = {}

        self.optimizer = build_optimizer(a, self.unet_params, self.te_params, device_type)
        self.lr_scheduler = build_lr_scheduler(a, self.optimizer, self.plan.total_steps)
        prepared = self.accelerator.prepare(model.unet, *model.text_encoders, self.optimizer)
        model.unet, *model.text_encoders, self.optimizer = prepared

    # --- one batch ---------------------------------------------------------------------------

    def conditioning(self, captions: list[str]) -> dict[str, Any]:
        import torch

        model = self.model
        family = model.family
        clip_skip = self.answers.training.clip_skip
        if self.answers.network.train_text_encoder:
            return family.encode(model, family.tokenize(model, captions), clip_skip)
        # Frozen text encoder: each caption is encoded once.
        missing = [c for c in dict.fromkeys(captions) if c not in self._conditioning_cache]
        if missing:
            with torch.no_grad():
                encoded = family.encode(model, family.tokenize(model, missing), clip_skip)
            for i, caption in enumerate(missing):
                self._conditioning_cache[caption] = {k: v[i : i + 1] for k, v in encoded.items()}
        parts = [self._conditioning_cache[c] for c in captions]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def batch_loss(self, batch: list[tuple[int, Example]]) -> torch.Tensor:
        """Weighted denoising loss of a batch of (global sample index, example)."""
        import torch
        import torch.nn.functional as F

        a = self.answers
        model = self.model
        scheduler = model.noise_scheduler
        latents = torch.stack([self.latents.get(e.path) for _, e in batch]).to(self.device)
        noise = torch.empty_like(latents, device="cpu")
        timesteps = torch.empty(len(batch), dtype=torch.long)
        for row, (index, _) in enumerate(batch):
            sample_rng = generator(a.training.seed, "noise", index)
            noise[row] = torch.randn(latents.shape[1:], generator=sample_rng)
            if a.training.noise_offset:
                offset = torch.randn((latents.shape[1], 1, 1), generator=sample_rng)
                noise[row] += a.training.noise_offset * offset
            timesteps[row] = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=sample_rng)
        noise = noise.to(self.device)
        timesteps = timesteps.to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = noise if model.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)

        with self.accelerator.autocast():
            conditioning = self.conditioning([e.caption for _, e in batch])
            prediction = model.family.predict(model, noisy, timesteps, conditioning)
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if a.training.min_snr_gamma:
            loss = loss * snr_weights(scheduler, timesteps, a.training.min_snr_gamma, model.prediction_type)
        weights = torch.tensor([a.dataset.prior_loss_weight if e.is_reg else 1.0 for _, e in batch], device=self.device)
        return (loss * weights).mean()

    # --- the loop ----------------------------------------------------------------------------

    def batches(self, epoch: int) -> list[list[tuple[int, Example]]]:
        """One epoch's batches of (global sample index, example), in the seeded shuffled order."""
        size = self.answers.training.batch_size
        per_epoch = len(self.examples)
        order = epoch_order(self.answers.training.seed, epoch, per_epoch)
        indexed = [(epoch * per_epoch + position, self.examples[i]) for position, i in enumerate(order)]
        return [indexed[i : i + size] for i in range(0, per_epoch, size)]

    def optimizer_steps(self, epoch: int) -> list[list[list[tuple[int, Example]]]]:
        """One epoch's optimizer steps, each a group of accumulated batches."""
        accumulation = self.answers.training.gradient_accumulation
        batches = self.batches(epoch)
        return [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]

    def run(self) -> TrainResult:

        a = self.answers
        plan = self.plan
        params = [*self.unet_params, *self.te_params]
        total = plan.total_steps
        step = 0
        pending: list[tuple[int, int, torch.Tensor, float]] = []  # (step, epoch, loss on device, lr)
        losses: list[float] = []
        self.started_at = time.time()
        self.events.emit("ready", device=str(self.device), precision=self.precision, total_steps=total)
        for epoch in range(plan.epochs):
            for group in self.optimizer_steps(epoch):
                if step >= total:
                    break
                for i, batch in enumerate(group):
                    last = i == len(group) - 1
                    sync = nullcontext() if last or self.accelerator.num_processes == 1 else self.accelerator.no_sync(self.model.unet)
                    with sync:
                        loss = self.batch_loss(batch)
                        self.accelerator.backward(loss / len(group))
                if a.training.max_grad_norm:
                    self.accelerator.clip_grad_norm_(params, a.training.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                pending.append((step, epoch + 1, loss.detach(), self.lr_scheduler.get_last_lr()[0]))
                # Reading the loss back forces a device sync: do it every few steps, not every step.
                if step % a.training.log_every_steps == 0 or step == total:
                    losses += self.report(pending)
                    pending = []
                if self.should_stop():
                    break
            if pending:
                losses += self.report(pending)
                pending = []
            self.events.emit("epoch", epoch=epoch + 1, epochs=plan.epochs, step=step)
            if a.training.save_every_epochs and (epoch + 1) % a.training.save_every_epochs == 0 and epoch + 1 < plan.epochs:
                path = self.save(a.output.dir / f"{a.output.name}-{epoch + 1:06d}.safetensors", step=step, epoch=epoch + 1)
                self.events.emit("saved", path=str(path), step=step, epoch=epoch + 1)
            if step >= total or self.should_stop():
                break
        final_epoch = min(plan.epochs, math.ceil(step / plan.steps_per_epoch)) if step else 0
        path = self.save(a.lora_path, step=step, epoch=final_epoch)
        self.events.emit("saved", path=str(path), step=step, epoch=final_epoch)
        return TrainResult(lora_path=path, steps=step, epochs=final_epoch, losses=losses)

    def report(self, pending: list[tuple[int, int, torch.Tensor, float]]) -> list[float]:
        import torch

        values = torch.stack([loss for _, _, loss, _ in pending]).float().cpu().tolist()
        for (step, epoch, _, lr), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                raise TrainingFailed(
                    f"the loss became {value} at step {step}",
                    "lower the learning rate; with fp16 try bf16 or no mixed precision; check the images are not corrupt",
                )
            self.events.emit("step", step=step, total_steps=self.plan.total_steps, epoch=epoch, loss=value, lr=lr)
        return values

    # --- output ------------------------------------------------------------------------------

    def save(self, path: Path, *, step: int, epoch: int) -> Path:
        import torch

        from engine.lora import kohya_metadata, kohya_state_dict, save_lora_file

        a = self.answers
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
        tensors = kohya_state_dict(self.model, dtype=dtype)
        metadata = kohya_metadata(model=self.model, answers=a, stats=stats)
        return save_lora_file(path, tensors, metadata, overwrite=a.output.overwrite)


def check_output_free(answers: Answers) -> None:
    """Refuse before any work when the LoRA file exists and overwriting was not asked for."""
    if answers.lora_path.exists() and not answers.output.overwrite:
        raise UserError(
            "a LoRA with this name already exists and would be overwritten",
            where=answers.lora_path,
            fix="choose another `[output] name`, or set `[output] overwrite = true`",
        )


def train(plan: TrainingPlan, events: EventLog, *, should_stop=None) -> TrainResult:
    """Train the LoRA the plan describes, reporting through `events`."""
    check_output_free(plan.answers)
    trainer = Trainer(plan, events, should_stop=should_stop)
    trainer.setup()
    return trainer.run()
