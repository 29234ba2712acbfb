"""The estimate's counted figures (engine/checks/costs.py FAMILY_COSTS), recounted from the configs
the package ships (engine/families/configs) on the meta device: no weights, no GPU, a few seconds."""

from __future__ import annotations

import json
import weakref
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.checks.costs import FAMILY_COSTS, GiB

CONFIGS = Path(__file__).resolve().parents[2] / "engine" / "families" / "configs"
CONFIG_FOLDERS = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}
SD_FAMILIES = sorted(CONFIG_FOLDERS)
FLUX_FAMILIES = ("flux1-dev", "flux1-schnell")


def meta_models(family: str) -> tuple:
    """The family's UNet, text encoders and VAE, built from the shipped configs without weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS / CONFIG_FOLDERS[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet.json"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae.json"))
        encoders = []
        for name in ("text_encoder.json", "text_encoder_2.json"):
            if (folder / name).exists():
                config = json.loads((folder / name).read_text())
                with_projection = config.get("architectures") == ["CLIPTextModelWithProjection"]
                model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
                encoders.append(model_class(CLIPTextConfig(**config)))
    return unet, encoders, vae


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_parameter_counts_are_the_shipped_configs(family):
    unet, encoders, vae = meta_models(family)
    cost = FAMILY_COSTS[family]
    assert cost.unet_params == parameter_count(unet)
    assert cost.text_encoder_params == sum(map(parameter_count, encoders))
    assert cost.vae_params == parameter_count(vae)


def live_tensor_peak():
    """A dispatch mode that follows the bytes of every tensor storage created inside it while it is
    alive (weakref.finalize on the storage), and keeps the largest total: what a caching allocator
    would hold at the worst moment, before its own rounding. Storages that exist beforehand (the
    weights) are not counted, nor are views of them."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LiveTensors(TorchDispatchMode):
        def __init__(self, existing) -> None:
            super().__init__()
            self.existing = {t.untyped_storage()._cdata for t in existing}
            self.sizes: dict[int, int] = {}
            self.live = self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_leaves(out):
                if hasattr(tensor, "untyped_storage"):
                    self._follow(tensor.untyped_storage())
            self.peak = max(self.peak, self.live)
            return out

        def _follow(self, storage) -> None:
            key = storage._cdata
            if key in self.sizes or key in self.existing:
                return
            self.sizes[key] = storage.nbytes()
            self.live += self.sizes[key]
            weakref.finalize(storage, self._forget, key)

        def _forget(self, key: int) -> None:
            self.live -= self.sizes.pop(key)

    return LiveTensors


@contextmanager
def memory_efficient_attention():
    """Attention as CUDA's memory-efficient kernel holds it (output-sized, no N x N score matrix): on
    the meta device torch falls back to the math path, which materializes the scores."""
    import torch
    import torch.nn.functional as F

    def output_only(query, key, value, *args, **kwargs):
        return torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype, device=query.device)

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = output_only
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def test_the_live_tensor_count_counts_what_is_alive_at_once():
    import torch

    with live_tensor_peak()(existing=()) as live:
        first = torch.empty(1024, device="meta")  # 4 KiB
        second = first * 2
        del first
        third = second * 2
        del second
        assert third.shape == (1024,)
    assert live.peak == 2 * 4096


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_vae_encode_tensors_are_counted_as_the_table_says(family):
    import torch

    _, _, vae = meta_models(family)
    cost = FAMILY_COSTS[family]
    image = torch.empty(1, 3, cost.resolution, cost.resolution, device="meta")  # fp32, as the engine runs it
    with torch.no_grad(), memory_efficient_attention(), live_tensor_peak()(existing=[*vae.parameters(), *vae.buffers()]) as live:
        vae.encode(image).latent_dist.sample()
    assert live.peak / GiB == pytest.approx(cost.vae_encode_gib, rel=0.01)


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_sample_image_tensors_are_counted_as_the_table_says(family):
    """Making a sample: the UNet's guided denoising step (2 latents, no gradients) and the VAE
    decoding the image, each in fp32 at the family's resolution."""
    import torch

    unet, _, vae = meta_models(family)
    cost = FAMILY_COSTS[family]
    size = cost.resolution // 8
    latents = torch.empty(2, 4, size, size, device="meta")
    context = torch.empty(2, 77, unet.config.cross_attention_dim, device="meta")
    added = None
    if unet.config.addition_embed_type == "text_time":  # SDXL: the pooled text and the size conditioning
        added = {"text_embeds": torch.empty(2, 1280, device="meta"), "time_ids": torch.empty(2, 6, device="meta")}
    timesteps = torch.tensor([500, 500], device="meta")
    with torch.no_grad(), memory_efficient_attention(), live_tensor_peak()(existing=[*unet.parameters(), *unet.buffers()]) as live:
        unet(latents, timesteps, context, added_cond_kwargs=added)
    assert live.peak / GiB == pytest.approx(cost.unet_sampling_gib, rel=0.01)
    with torch.no_grad(), memory_efficient_attention(), live_tensor_peak()(existing=[*vae.parameters(), *vae.buffers()]) as live:
        vae.decode(latents[:1])
    assert live.peak / GiB == pytest.approx(cost.vae_decode_gib, rel=0.01)


# --- FLUX.1: diffusers' and transformers' configs of the released models, built on the meta device --

# T5-XXL's encoder as FLUX.1 ships it (google/t5-v1_1-xxl), and the 16-channel autoencoder (ae.safetensors).
T5_XXL = {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "d_kv": 64, "vocab_size": 32128, "feed_forward_proj": "gated-gelu"}
FLUX_AE = {
    "latent_channels": 16, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "use_quant_conv": False, "use_post_quant_conv": False,
}


def flux_meta_transformer(family: str):
    """FluxTransformer2DModel's defaults are FLUX.1's shape; dev adds the guidance embedder."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(guidance_embeds=family == "flux1-dev")


def flux_meta_autoencoder():
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL(**FLUX_AE)


@pytest.mark.parametrize("family", FLUX_FAMILIES)
def test_flux_parameter_counts_are_the_released_configs(family):
    import torch
    from transformers import T5Config, T5EncoderModel

    from engine.families.flux_lora import transformer_lora_targets

    cost = FAMILY_COSTS[family]
    transformer = flux_meta_transformer(family)
    assert cost.unet_params == parameter_count(transformer)
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert cost.offloadable_params == sum(map(parameter_count, blocks))
    assert cost.largest_block_params == max(map(parameter_count, blocks))
    modules = dict(transformer.named_modules())
    lora_per_rank = sum(modules[path].in_features + modules[path].out_features for path in transformer_lora_targets(transformer))
    assert cost.lora_params_per_rank_unet == lora_per_rank
    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**T5_XXL, is_encoder_decoder=False))
    _, (clip_l,), _ = meta_models("sd1")  # FLUX.1's CLIP-L is SD 1.x's text encoder
    assert cost.text_encoder_params == parameter_count(t5) + parameter_count(clip_l)
    assert cost.lora_params_per_rank_text_encoders == FAMILY_COSTS["sd1"].lora_params_per_rank_text_encoders
    assert cost.vae_params == parameter_count(flux_meta_autoencoder())


def flux_inputs(transformer, dtype):
    """One 1024 px image: 64 x 64 packed latents (4,096 tokens) and dev's 512 T5 tokens."""
    import torch

    inputs = {
        "hidden_states": torch.empty(1, 4096, 64, dtype=dtype, device="meta"),
        "encoder_hidden_states": torch.empty(1, 512, 4096, dtype=dtype, device="meta"),
        "pooled_projections": torch.empty(1, 768, dtype=dtype, device="meta"),
        "timestep": torch.ones(1, device="meta"),
        "img_ids": torch.zeros(4096, 3, device="meta"),
        "txt_ids": torch.zeros(512, 3, device="meta"),
    }
    if transformer.config.guidance_embeds:
        inputs["guidance"] = torch.ones(1, device="meta")
    return inputs


def test_flux_step_flops_are_twice_the_counted_forward_pass():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    transformer = flux_meta_transformer("flux1-dev").to(torch.bfloat16)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        transformer(**flux_inputs(transformer, torch.bfloat16))
    assert FAMILY_COSTS["flux1-dev"].tflop_per_image == pytest.approx(2 * flops.get_total_flops() / 1e12, rel=0.01)


def test_flux_sampling_and_autoencoder_tensors_are_counted_as_the_table_says():
    import torch

    cost = FAMILY_COSTS["flux1-dev"]
    transformer = flux_meta_transformer("flux1-dev")
    with torch.no_grad(), memory_efficient_attention(), live_tensor_peak()(existing=[*transformer.parameters(), *transformer.buffers()]) as live:
        transformer(**flux_inputs(transformer, torch.float32))
    assert live.peak / GiB == pytest.approx(cost.unet_sampling_gib, rel=0.01)
    autoencoder = flux_meta_autoencoder()
    weights = [*autoencoder.parameters(), *autoencoder.buffers()]
    with torch.no_grad(), memory_efficient_attention(), live_tensor_peak()(existing=weights) as live:
        autoencoder.encode(torch.empty(1, 3, 1024, 1024, device="meta")).latent_dist.sample()
    assert live.peak / GiB == pytest.approx(cost.vae_encode_gib, rel=0.01)
    with torch.no_grad(), memory_efficient_attention(), live_tensor_peak()(existing=weights) as live:
        autoencoder.decode(torch.empty(1, 16, 128, 128, device="meta"))
    assert live.peak / GiB == pytest.approx(cost.vae_decode_gib, rel=0.01)
