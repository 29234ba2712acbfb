"""Training objectives: what a family's denoiser learns to predict, and from what.

A family owns its objective (`LoadedModel.objective`); the training loop only does this with it:

    noised = model.objective.noised(latents, sample_indices, answers.training)
    prediction = model.family.predict(model, noised.inputs, noised.timesteps, {**text_conditioning, **noised.conditioning}, geometry)
    per_sample_loss = model.objective.loss(prediction, noised)

so the loop never knows whether the denoiser is a UNet trained on DDPM noise (epsilon or v) or a
transformer trained by flow matching. A new objective (e.g. FLUX.1's: x_t = (1 - t) x0 + t noise,
target noise - x0, shifted timesteps, 2x2-packed latents with position ids and a guidance input)
subclasses `TrainingObjective`, draws its noise and timesteps in `noised` from the per-sample
generators (engine/seeds.py, so that a resumed run draws the same), packs latents there if its
denoiser takes tokens (`inputs` and `target` in the packed layout, position ids in
`conditioning`), and puts extra denoiser inputs (guidance) in `conditioning`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from engine.devices import host_to_device
from engine.seeds import generator

if TYPE_CHECKING:
    import torch


class TrainingSettings(Protocol):
    """What an objective reads of the answers file's [training] section (engine.config.TrainingSection);
    a new objective's settings are added there and here."""

    seed: int
    noise_offset: float
    min_snr_gamma: float | None


@dataclass
class NoisedBatch:
    """One batch made ready for the denoiser, on the latents' device."""

    inputs: torch.Tensor  # the denoiser's input: the noised latents, in the layout the denoiser takes
    timesteps: torch.Tensor  # the noise level, as the denoiser is told it
    target: torch.Tensor  # what the denoiser should predict, in the layout of `inputs`
    weights: torch.Tensor | None = None  # the objective's per-sample loss weights (min-SNR); None: equal
    conditioning: dict[str, Any] = field(default_factory=dict)  # extra denoiser inputs (FLUX: guidance, position ids)


class TrainingObjective:
    """How a denoiser is trained. Subclasses fill in `noised`; `loss` is the per-sample MSE."""

    name: str = ""
    prediction_type: str = ""  # what the denoiser predicts, as LoRA metadata names it ("epsilon", "v_prediction")
    scheduler: Any = None  # the diffusers scheduler config that sample pipelines start from

    def noised(self, latents: torch.Tensor, indices: list[int], training: TrainingSettings) -> NoisedBatch:
        """The batch of `latents` (batch-first, on the device) noised for the samples with global
        indices `indices`; all randomness comes from each sample's generator."""
        raise NotImplementedError

    def loss(self, prediction: torch.Tensor, noised: NoisedBatch) -> torch.Tensor:
        """Per-sample loss: the mean squared error in float32, times the objective's weights."""
        import torch.nn.functional as F

        error = F.mse_loss(prediction.float(), noised.target.float(), reduction="none")
        loss = error.mean(dim=tuple(range(1, error.dim())))
        return loss if noised.weights is None else loss * noised.weights

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, H, W) in the layout the denoiser takes; a UNet takes them as they are."""
        return latents

    def unpack(self, packed: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """The inverse of `pack`, back to latents of `latent_shape`."""
        return packed


class NoisePrediction(TrainingObjective):
    """DDPM training of a UNet (SD 1.x, 2.x, SDXL): a uniform integer timestep, the scheduler's
    `add_noise`, and the noise (epsilon) or the velocity (v) as the target; optional noise offset
    and min-SNR-gamma weights, as kohya does."""

    name = "ddpm"

    def __init__(self, scheduler: Any, prediction_type: str):
        self.scheduler = scheduler  # a DDPMScheduler set to `prediction_type`
        self.prediction_type = prediction_type  # "epsilon" or "v_prediction"

    def noised(self, latents: torch.Tensor, indices: list[int], training: TrainingSettings) -> NoisedBatch:
        import torch

        scheduler = self.scheduler
        # Drawn on the CPU from each sample's own generator, then copied (pinned, non-blocking).
        noise = torch.empty_like(latents, device="cpu")
        timesteps = torch.empty(len(indices), dtype=torch.long)
        for row, index in enumerate(indices):
            sample_rng = generator(training.seed, "noise", index)
            noise[row] = torch.randn(latents.shape[1:], generator=sample_rng)
            if training.noise_offset:
                offset = torch.randn((latents.shape[1], 1, 1), generator=sample_rng)
                noise[row] += training.noise_offset * offset
            timesteps[row] = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=sample_rng)
        noise = host_to_device(noise, latents.device)
        timesteps = host_to_device(timesteps, latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
        weights = snr_weights(scheduler, timesteps, training.min_snr_gamma, self.prediction_type) if training.min_snr_gamma else None
        return NoisedBatch(inputs=noisy, timesteps=timesteps, target=target, weights=weights)


def snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), as kohya applies them."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr
