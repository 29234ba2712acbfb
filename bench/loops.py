"""Training steps to time: the engine's own loop, and the bare PyTorch loop that is its floor.

Both run in blocks of a few steps, so several variants can be interleaved (A, B, A, B ...) in one
process: on a shared machine the load drifts, and only variants measured side by side compare.

`EngineVariant` runs the engine's real loop (`Trainer.run`) and stops it after a block through the
same control a user's `lora-wizard stop` uses; the next block resumes where it stopped. So a block
includes everything the engine does per step: data, noise, loss, optimizer, scheduler, loss
read-back every `log_every_steps`, control polling.

`BareLoop` is the least a LoRA step can do with the same model (loaded the same way, the same peft
LoRA layers through `engine.network.add_lora`), optimizer (AdamW, or 8-bit AdamW when the engine uses
it), batch and precision: latents and text conditioning computed once and kept on the device (for
SDXL also the pooled text embedding and the size conditioning, `time_ids`), noise and timesteps
drawn on the device, plain DDPM noising, MSE, backward, step.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

from engine.checkpoint import Position
from engine.config import answers_from_dict
from engine.events import EventLog
from engine.plan import plan_training
from engine.train import Controls, Interrupted, Trainer

StepRunner = Callable[[int], float]  # runs N steps, returns wall seconds


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StopAfter(Controls):
    """Stops the engine's loop after a number of steps, as `lora-wizard stop` would."""

    reason = "bench block done"

    def __init__(self) -> None:
        self.remaining = 0

    def poll(self) -> str | None:
        self.remaining -= 1
        return "stop" if self.remaining <= 0 else None


class EngineVariant:
    """The engine's training loop on an answers mapping, run a block of steps at a time."""

    def __init__(self, answers: dict[str, Any]):
        plan = plan_training(answers_from_dict(answers, source="bench"))
        self.controls = StopAfter()
        self.trainer = Trainer(plan, EventLog(None), controls=self.controls)
        self.trainer.setup()
        self.position = Position(step=0, epoch=0, group=0)

    def run_steps(self, steps: int) -> float:
        """Run `steps` optimizer steps of the engine's loop; wall seconds, device work included."""
        self.controls.remaining = steps
        started = time.perf_counter()
        try:
            self.trainer.run(self.position)
        except Interrupted as stop:
            done = stop.step
        else:
            raise RuntimeError("the engine finished its run before the bench stopped it: raise max_steps")
        synchronize(self.trainer.device)
        elapsed = time.perf_counter() - started
        per_epoch = self.trainer.plan.steps_per_epoch  # one bucket, no accumulation: one group a step
        self.position = Position(step=done, epoch=done // per_epoch, group=done % per_epoch)
        return elapsed


class BareLoop:
    """The floor: the engine's model, LoRA, optimizer, batch and precision in the plainest loop."""

    def __init__(self, engine: EngineVariant):
        import torch

        from engine.families import load_base_model
        from engine.network import add_lora, lora_parameters
        from engine.seeds import derive_seed

        trainer = engine.trainer
        a = trainer.answers
        self.device = trainer.device
        self.batch = a.training.batch_size
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(trainer.precision, torch.float32)
        if self.device.type == "cpu":
            weight_dtype = torch.float32
        self.autocast_dtype = weight_dtype if weight_dtype != torch.float32 else None
        model = load_base_model(a.model.path)
        model.vae.to(self.device, dtype=torch.float32).requires_grad_(False).eval()
        model.denoiser.to(self.device, dtype=weight_dtype)
        for encoder in model.text_encoders:
            encoder.to(self.device, dtype=weight_dtype).eval()
        torch.manual_seed(derive_seed(a.training.seed, "lora-init"))  # the engine's initial LoRA weights
        add_lora(model, dim=a.network.dim, alpha=a.network.effective_alpha, train_text_encoder=False)
        self.params, _ = lora_parameters(model)
        if a.training.gradient_checkpointing:
            model.denoiser.enable_gradient_checkpointing()
        model.denoiser.train()
        self.model = model
        self.optimizer = self._optimizer(a.training.optimizer, a.training.unet_lr)
        self.pixels, self.latents = self._encode_images(trainer)
        self.unet_inputs = self._conditioning(trainer)
        for encoder in model.text_encoders:
            encoder.to("cpu")  # not needed again: the bare loop's copy of the model leaves room on the device
        self.cursor = 0

    def _optimizer(self, name: str, lr: float):
        """The engine's optimizer with its settings: AdamW (fused on CUDA), or bitsandbytes' 8-bit AdamW."""
        import torch

        groups = [{"params": self.params, "lr": lr}]
        if name == "adamw8bit":
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, weight_decay=1e-2)
        if name != "adamw":
            raise ValueError(f"the bare loop has no {name} optimizer")
        return torch.optim.AdamW(groups, weight_decay=1e-2, fused=self.device.type == "cuda")

    def _encode_images(self, trainer: Trainer):
        """The training images on the device, and their latents computed once, tiled so that
        each batch is a plain slice."""
        import torch

        from engine.latents import image_tensor

        paths = list(dict.fromkeys(e.path for e in trainer.examples))
        pixels = torch.stack([image_tensor(path, trainer.plan.sizes[path]) for path in paths]).to(self.device)
        latents = torch.cat([self.encode(image.unsqueeze(0)) for image in pixels])
        return pixels, latents.repeat(self.batch, 1, 1, 1)

    def encode(self, pixels):
        """The latents of a batch of images: a sample of the VAE's distribution, scaled."""
        import torch

        vae = self.model.vae
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor

    def encode_steps(self, steps: int) -> float:
        """Wall seconds to encode the images of `steps` batches, one image at a time as the engine
        does without a cache: what a latent cache saves, at most."""
        started = time.perf_counter()
        for index in range(steps * self.batch):
            self.encode(self.pixels[index % len(self.pixels)].unsqueeze(0))
        synchronize(self.device)
        return time.perf_counter() - started

    def _conditioning(self, trainer: Trainer) -> dict[str, Any]:
        """The UNet's conditioning keywords for every step, on the device: the first caption through
        the family's own text encoding (SDXL: both encoders, and the pooled embedding), and for SDXL
        the size conditioning of the first image, as the engine computes them."""
        import torch

        from engine.families.sdxl import time_ids

        model, example = self.model, trainer.examples[0]
        family = model.family
        with torch.no_grad():
            encoded = family.encode(model, family.tokenize(model, [example.caption]), trainer.answers.training.clip_skip)
        batched = {name: value.expand(self.batch, *value.shape[1:]) for name, value in encoded.items()}
        inputs: dict[str, Any] = {"encoder_hidden_states": batched.pop("encoder_hidden_states")}
        if "text_embeds" in batched:  # SDXL's added embedding: pooled text + original size, crop, target size
            sizes = time_ids([trainer.geometry(example.path)]).to(self.device).expand(self.batch, -1)
            inputs["added_cond_kwargs"] = {"text_embeds": batched.pop("text_embeds"), "time_ids": sizes}
        if batched:
            raise ValueError(f"the bare loop does not pass {sorted(batched)} to the UNet")
        return inputs

    def step(self) -> None:
        import torch
        import torch.nn.functional as F

        latents = self.latents[self.cursor : self.cursor + self.batch]
        self.cursor = (self.cursor + self.batch) % len(self.latents)
        scheduler = self.model.objective.scheduler
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (self.batch,), device=self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            prediction = self.model.denoiser(noisy, timesteps, **self.unet_inputs, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run_steps(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return time.perf_counter() - started


def interleave(variants: dict[str, StepRunner], *, rounds: int, steps: int, warmup_steps: int) -> dict[str, list[float]]:
    """Seconds per step of each variant in each round; the order reverses every other round
    (A B C, C B A, ...) so that a drifting load favours none."""
    for run in variants.values():
        run(warmup_steps)  # first-call costs: kernel selection, allocator, lazy imports
    names = list(variants)
    per_step: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            per_step[name].append(variants[name](steps) / steps)
    return per_step


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the ratio of two variants measured side by side."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def summary(seconds_per_step: list[float], batch: int) -> dict[str, float]:
    median = statistics.median(seconds_per_step)
    return {
        "seconds_per_step": median,
        "steps_per_second": 1.0 / median,
        "images_per_second": batch / median,
        "spread": (max(seconds_per_step) - min(seconds_per_step)) / median,
    }


# --- checks ---------------------------------------------------------------------------------------


def lora_gradient_coverage(engine: EngineVariant) -> tuple[int, int]:
    """(LoRA weights that received a gradient, all LoRA weights) after one backward of the engine:
    a check that gradient checkpointing lets gradients reach every adapter."""
    trainer = engine.trainer
    batch = trainer.schedule.optimizer_steps(0)[0][0]
    trainer.accelerator.backward(trainer.local_loss(batch))
    params = [*trainer.denoiser_params, *trainer.te_params]
    reached = sum(p.grad is not None for p in params)
    trainer.optimizer.zero_grad(set_to_none=True)
    return reached, len(params)


def host_syncs_per_step(run_steps: StepRunner, steps: int) -> float:
    """Host-device synchronisations per step on CUDA, as torch's sync debug mode reports them; the
    one loss read-back that ends an engine block (and the timing's own sync) are included."""
    import torch

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_steps(steps)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught) / steps
