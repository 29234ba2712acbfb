"""The real SD 1.5 shapes on this machine's CPU: a VAE encode timed against a LoRA step.

How much a latent cache can save depends on how fast the hardware runs the VAE's convolutions
against the UNet's step, not on FLOPs alone: the bench model matches SD 1.5's FLOP ratio, and this
measures SD 1.5's time ratio on the same machine (random weights from the shipped configs, 256 px
so that a CPU step takes seconds, not minutes), so the bench's caching figure can be read against it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

SD15_CONFIGS = Path(__file__).resolve().parents[1] / "engine" / "families" / "configs" / "sd15"


def sd15_encode_per_step(resolution: int = 256, rounds: int = 2, lora_dim: int = 8) -> dict[str, Any]:
    """Median seconds of an SD 1.5 LoRA step (forward and backward, batch 1) and of a VAE encode
    of one image, timed alternately, and their ratio."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    from engine.network import unet_lora_targets

    def config(name: str) -> dict[str, Any]:
        return json.loads((SD15_CONFIGS / f"{name}.json").read_text())

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config("unet")).requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=lora_dim, lora_alpha=lora_dim, target_modules=unet_lora_targets(unet)), unet)
    vae = AutoencoderKL.from_config(config("vae")).eval()
    side = resolution // 8
    latents, timesteps = torch.randn(1, 4, side, side), torch.tensor([500])
    context, pixels = torch.randn(1, 77, unet.config.cross_attention_dim), torch.randn(1, 3, resolution, resolution)

    def step() -> None:
        unet(latents, timesteps, encoder_hidden_states=context, return_dict=False)[0].pow(2).mean().backward()

    def encode() -> None:
        with torch.no_grad():
            vae.encode(pixels)

    seconds: dict[str, list[float]] = {"step": [], "encode": []}
    for index in range(rounds + 1):
        for name, work in (("step", step), ("encode", encode)):
            started = time.perf_counter()
            work()
            if index:  # the first round warms up
                seconds[name].append(time.perf_counter() - started)
    step_s, encode_s = statistics.median(seconds["step"]), statistics.median(seconds["encode"])
    return {"resolution": resolution, "step_s": step_s, "encode_s": encode_s, "encode_per_step": encode_s / step_s,
            "cache_ceiling": 1 + encode_s / step_s}
