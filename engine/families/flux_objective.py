"""FLUX.1's training objective: rectified flow matching on 2x2-packed latents, as kohya trains it.

For latents x0 (the VAE's, shifted and scaled), noise n and a noise level s in [0, 1]:
x_s = (1 - s) x0 + s n, and the transformer predicts the velocity n - x0 (kohya's
`--model_prediction_type raw`). s is drawn as kohya's `--timestep_sampling` says:

- `shift` (kohya's recommendation for FLUX.1, with `--discrete_flow_shift 3.1582`): the sigmoid of a
  normal draw times `sigmoid_scale`, then shifted toward noise: s' = shift s / (1 + (shift - 1) s);
- `sigmoid`: the sigmoid of a normal draw times `sigmoid_scale` (x-flux's choice);
- `uniform`: uniform in [0, 1).

The transformer takes tokens: latents (B, 16, H, W) packed 2x2 into (B, H/2 * W/2, 64) with
diffusers' FluxPipeline._pack_latents, position ids per token (row, column), and the noise level as
the timestep (diffusers' FluxTransformer2DModel scales it by 1000 itself). FLUX.1 dev also takes a
guidance strength, 1.0 when training (kohya's `--guidance_scale 1.0`); schnell has no guidance input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.devices import host_to_device
from engine.families.objectives import NoisedBatch, TrainingObjective, TrainingSettings
from engine.seeds import generator

if TYPE_CHECKING:
    import torch

TIMESTEP_SAMPLINGS = ("shift", "sigmoid", "uniform")
DISCRETE_FLOW_SHIFT = 3.1582  # kohya's recommended --discrete_flow_shift for FLUX.1
TRAINING_GUIDANCE = 1.0  # kohya's --guidance_scale when training FLUX.1 dev


@dataclass(frozen=True)
class FlowSettings:
    """How noise levels are drawn and what guidance dev is told (kohya's flags of the same names)."""

    timestep_sampling: str = "shift"
    discrete_flow_shift: float = DISCRETE_FLOW_SHIFT
    sigmoid_scale: float = 1.0
    guidance_scale: float = TRAINING_GUIDANCE


def draw_sigma(settings: FlowSettings, sample_rng: torch.Generator) -> float:
    """One noise level in [0, 1] from a sample's own generator."""
    import torch

    if settings.timestep_sampling == "uniform":
        return float(torch.rand((), generator=sample_rng))
    sigma = float(torch.sigmoid(settings.sigmoid_scale * torch.randn((), generator=sample_rng)))
    if settings.timestep_sampling == "shift":
        shift = settings.discrete_flow_shift
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
    elif settings.timestep_sampling != "sigmoid":
        raise ValueError(
            f"unknown timestep sampling {settings.timestep_sampling!r}; one of {', '.join(TIMESTEP_SAMPLINGS)}"
        )
    return sigma


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as (B, H/2 * W/2, 4C) tokens, as FluxPipeline packs them."""
    from diffusers import FluxPipeline

    batch, channels, height, width = latents.shape
    return FluxPipeline._pack_latents(latents, batch, channels, height, width)


def unpack_latents(tokens: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of `pack_latents`, back to (B, C, H, W)."""
    batch, channels, height, width = latent_shape
    tokens = tokens.view(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return tokens.reshape(batch, channels, height, width)


def image_ids(latent_height: int, latent_width: int, device: Any) -> torch.Tensor:
    """Position ids (0, row, column) of the packed tokens, as FluxPipeline makes them."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, latent_height // 2, latent_width // 2, device, None)


class FlowMatching(TrainingObjective):
    """Rectified flow matching for FLUX.1 (dev with a guidance input, schnell without)."""

    name = "flow_matching"
    prediction_type = "raw"  # kohya's ss_model_prediction_type: the velocity, unweighted

    def __init__(self, scheduler: Any, settings: FlowSettings, *, guidance: bool):
        self.scheduler = scheduler  # FlowMatchEulerDiscreteScheduler, for the sample pipelines
        self.settings = settings
        self.guidance = guidance  # FLUX.1 dev: the transformer takes a guidance strength

    def noised(self, latents: torch.Tensor, indices: list[int], training: TrainingSettings) -> NoisedBatch:
        import torch

        noise = torch.empty_like(latents, device="cpu", dtype=torch.float32)
        sigmas = torch.empty(len(indices), dtype=torch.float32)
        for row, index in enumerate(indices):
            sample_rng = generator(training.seed, "noise", index)
            noise[row] = torch.randn(latents.shape[1:], generator=sample_rng)
            sigmas[row] = draw_sigma(self.settings, sample_rng)
        noise = host_to_device(noise, latents.device).to(latents.dtype)
        sigmas = host_to_device(sigmas, latents.device)
        level = sigmas.view(-1, 1, 1, 1).to(latents.dtype)
        noisy = (1 - level) * latents + level * noise
        conditioning: dict[str, Any] = {
            "img_ids": image_ids(latents.shape[2], latents.shape[3], latents.device)
        }
        if self.guidance:
            conditioning["guidance"] = torch.full(
                (len(indices),), self.settings.guidance_scale, device=latents.device
            )
        return NoisedBatch(
            inputs=pack_latents(noisy),
            timesteps=sigmas,
            target=pack_latents(noise - latents),
            conditioning=conditioning,
        )

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_latents(latents)

    def unpack(self, packed: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
        return unpack_latents(packed, latent_shape)
