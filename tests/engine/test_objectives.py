"""The DDPM noise-prediction objective (engine/families/objectives.py): what SD 1.x, 2.x and SDXL train on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from engine.families.objectives import NoisedBatch, NoisePrediction, snr_weights
from engine.seeds import generator
from engine.tiny import SD_SCHEDULER_CONFIG


def objective(prediction_type: str = "epsilon") -> NoisePrediction:
    return NoisePrediction(DDPMScheduler.from_config(SD_SCHEDULER_CONFIG, prediction_type=prediction_type), prediction_type)


def settings(seed: int = 7, noise_offset: float = 0.0, min_snr_gamma: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(seed=seed, noise_offset=noise_offset, min_snr_gamma=min_snr_gamma)


def latents(batch: int = 3) -> torch.Tensor:
    return torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(0))


def test_each_sample_draws_its_noise_and_timestep_from_its_own_generator():
    x = latents()
    together = objective().noised(x, [10, 11, 12], settings())
    alone = objective().noised(x[1:2], [11], settings())
    torch.testing.assert_close(together.target[1:2], alone.target, rtol=0, atol=0)
    assert together.timesteps[1] == alone.timesteps[0]
    rng = generator(7, "noise", 11)  # engine/seeds.py: (seed, "noise", global index)
    expected_noise = torch.randn(x.shape[1:], generator=rng)
    expected_timestep = torch.randint(0, 1000, (1,), generator=rng)
    torch.testing.assert_close(alone.target[0], expected_noise, rtol=0, atol=0)
    assert alone.timesteps.tolist() == expected_timestep.tolist()
    assert together.weights is None and together.conditioning == {}


def test_epsilon_targets_the_noise_and_v_the_velocity():
    x = latents()
    epsilon = objective("epsilon")
    v = objective("v_prediction")
    noised_eps = epsilon.noised(x, [0, 1, 2], settings())
    noised_v = v.noised(x, [0, 1, 2], settings())
    noise = noised_eps.target
    torch.testing.assert_close(noised_eps.inputs, epsilon.scheduler.add_noise(x, noise, noised_eps.timesteps))
    torch.testing.assert_close(noised_v.inputs, noised_eps.inputs)
    torch.testing.assert_close(noised_v.target, v.scheduler.get_velocity(x, noise, noised_v.timesteps))


def test_noise_offset_shifts_each_channel_by_one_seeded_number():
    x = latents(1)
    plain = objective().noised(x, [5], settings()).target
    offset = objective().noised(x, [5], settings(noise_offset=0.1)).target
    shift = offset - plain
    assert shift.std(dim=(2, 3)).max() < 1e-6  # one number per channel
    assert shift.abs().min() > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_scale_each_samples_loss(prediction_type):
    model = objective(prediction_type)
    x = latents()
    noised = model.noised(x, [0, 1, 2], settings(min_snr_gamma=5.0))
    expected = snr_weights(model.scheduler, noised.timesteps, 5.0, prediction_type)
    torch.testing.assert_close(noised.weights, expected)
    prediction = torch.zeros_like(x)
    plain = ((prediction - noised.target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(model.loss(prediction, noised), plain * expected)


def test_loss_is_the_per_sample_mse_of_any_layout():
    """A family whose denoiser takes packed tokens (B, N, C) scores them with the same loss."""
    target = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    batch = NoisedBatch(inputs=target, timesteps=torch.zeros(2), target=target)
    loss = objective().loss(torch.zeros_like(target), batch)
    torch.testing.assert_close(loss, (target**2).mean(dim=(1, 2)))
