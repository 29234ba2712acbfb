"""FLOPs of a LoRA step, a VAE encode and a text-encoder forward, counted on the meta device.

Counting on "meta" runs no arithmetic (a full SD 1.5 step counts in about a second, on any
machine) and counts attention as the matrix products it is: torch's FlopCounterMode does not know
the CPU's fused attention kernel, so counting on a CPU would leave attention out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

SD15_CONFIGS = Path(__file__).resolve().parents[1] / "engine" / "families" / "configs" / "sd15"


def counted_flops(work: Callable[[], Any]) -> int:
    """FLOPs of the matrix products and convolutions `work` runs (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        work()
    return counter.get_total_flops()


def flop_profile(unet_config: dict[str, Any], vae_config: dict[str, Any], text_config: dict[str, Any], *,
                 resolution: int, lora_dim: int) -> dict[str, float]:
    """GFLOP per image: a LoRA step of the UNet (rank `lora_dim` on kohya's targets: forward, and
    backward to the activations and the LoRA weights), its forward alone, a VAE encode of one image
    and a text-encoder forward; and the ratios that decide what caching saves."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.network import unet_lora_targets

    side = resolution // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config).requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=lora_dim, lora_alpha=lora_dim, target_modules=unet_lora_targets(unet)), unet)
        latents = torch.randn(1, 4, side, side)
        timesteps = torch.tensor([500])
        context = torch.randn(1, 77, unet.config.cross_attention_dim)

        def step() -> None:
            unet(latents, timesteps, encoder_hidden_states=context, return_dict=False)[0].float().pow(2).mean().backward()

        lora_step = counted_flops(step)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(text_config))
        with torch.no_grad():
            forward = counted_flops(lambda: unet(latents, timesteps, encoder_hidden_states=context))
            encode = counted_flops(lambda: vae.encode(torch.zeros(1, 3, resolution, resolution)))
            text = counted_flops(lambda: text_encoder(torch.zeros(1, 77, dtype=torch.long)))
    return {
        "lora_step_gflop": lora_step / 1e9,
        "unet_forward_gflop": forward / 1e9,
        "vae_encode_gflop": encode / 1e9,
        "text_encoder_gflop": text / 1e9,
        "vae_encode_per_lora_step": encode / lora_step,
        "text_encoder_per_unet_forward": text / forward,
    }


def model_profile(model: Any, *, resolution: int, lora_dim: int) -> dict[str, float]:
    """`flop_profile` of a loaded model (engine.families.LoadedModel)."""
    return flop_profile(dict(model.denoiser.config), dict(model.vae.config), model.text_encoders[0].config.to_dict(),
                        resolution=resolution, lora_dim=lora_dim)


def sd15_profile(lora_dim: int = 8) -> dict[str, float]:
    """The same counts for SD 1.5 at 512 px, from the configs the package ships."""

    def config(name: str) -> dict[str, Any]:
        return json.loads((SD15_CONFIGS / f"{name}.json").read_text())

    return flop_profile(config("unet"), config("vae"), config("text_encoder"), resolution=512, lora_dim=lora_dim)
