"""Configs of a single file's models, derived from its tensor names and shapes (the original
CompVis/LDM layout), with the published configs (engine/families/templates.py) as templates, so a
real SD 1.5 file and a tiny test file take the same path. SDXL's extra parts: sdxl_file.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families.templates import load_template

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers' CLIPTextModel, wrapped
CLIP_TEXT_MODEL_PREFIX = CLIP_PREFIX + "text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H
OPEN_CLIP_BLOCKS = OPEN_CLIP_PREFIX + "transformer.resblocks."
SDXL_PREFIX = "conditioner.embedders."

# Real CLIP / OpenCLIP text encoders and SD 2.x's UNet use 64-wide attention heads. Layers narrower than
# one such head only exist in this project's tiny test models, which use 8-wide heads (engine/tiny.py:
# hidden 32, 4 heads).
TINY_HEAD_WIDTH = 8
# Group norms of 4 channels: with SD's 32 groups a 32-channel UNet (only the tiny test models,
# engine/tiny.py, are that narrow) would normalise single channels, which at the 1x1 bottom level of
# an 8x8 latent turns rounding noise into signal.
TINY_UNET_NORM_GROUPS = 8


def is_model_tensor(key: str) -> bool:
    """UNet, VAE, text encoders and the `v_pred` marker; not EMA copies, optimizer or scheduler buffers."""
    return key.startswith((UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", SDXL_PREFIX)) or key == "v_pred"


def normalize_ldm_keys(tensors: dict[str, Any]) -> dict[str, Any]:
    """Old SD 1.x files name the CLIP text encoder without transformers' `text_model.` level; add it."""
    legacy = [key for key in tensors if key.startswith(CLIP_PREFIX) and not key.startswith(CLIP_TEXT_MODEL_PREFIX)]
    for key in legacy:
        tensors[CLIP_TEXT_MODEL_PREFIX + key[len(CLIP_PREFIX) :]] = tensors.pop(key)
    return tensors


def detect_family(keys: Any, path: Path) -> str:
    """The family ("sd1", "sd2" or "sdxl") from the state-dict key names; anything else is a ModelFileError."""
    keys = list(keys)
    if any(key.startswith(SDXL_PREFIX) for key in keys):
        family = "sdxl"
    elif any(key.startswith(OPEN_CLIP_BLOCKS) for key in keys):
        family = "sd2"
    elif any(key.startswith(CLIP_TEXT_MODEL_PREFIX) for key in keys):
        family = "sd1"
    else:
        raise ModelFileError(
            f"this is not a Stable Diffusion checkpoint ({_what_it_looks_like(keys)})",
            where=path,
            fix="give an SD 1.x, SD 2.x or SDXL base model (.safetensors, .ckpt or a diffusers folder)",
        )
    for prefix, part in ((UNET_PREFIX, "UNet"), (VAE_PREFIX, "VAE")):
        if not any(key.startswith(prefix) for key in keys):
            raise ModelFileError(
                f"this checkpoint has no {part} weights (`{prefix}*`): it is incomplete",
                where=path,
                fix="use the full model file (not a pruned text-encoder-only or UNet-only file)",
            )
    return family


def _what_it_looks_like(keys: list[str]) -> str:
    if any(key.startswith("lora_") for key in keys):
        return "it looks like a LoRA, not a base model"
    if any(key.startswith(("encoder.down", "decoder.up")) for key in keys):
        return "it looks like a VAE on its own"
    if any(key.startswith(("down_blocks.", "up_blocks.")) for key in keys):
        return "it looks like a diffusers UNet on its own"
    return f"none of its {len(keys)} tensors has a Stable Diffusion name"


def indices_after(shapes: dict[str, tuple[int, ...]], prefix: str) -> list[int]:
    """The distinct integers right after `prefix` in the key names (`prefix3.weight` -> 3)."""
    found = {int(match.group(1)) for key in shapes if (match := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    return sorted(found)


def shape_of(shapes: dict[str, tuple[int, ...]], key: str, path: Path) -> tuple[int, ...]:
    if key not in shapes:
        raise ModelFileError(
            f"this checkpoint has no tensor `{key}`: it is incomplete or not a standard SD model",
            where=path,
            fix="use the original model file",
        )
    return shapes[key]


def heads_for_width(width: int, head_width: int) -> int:
    """Attention heads of a layer `width` wide whose family uses `head_width`-wide heads."""
    if width % head_width == 0:
        return width // head_width
    return max(1, width // TINY_HEAD_WIDTH)


def derive_unet_config(shapes: dict[str, tuple[int, ...]], family: str, path: Path) -> dict[str, Any]:
    config = load_template(family, "unet")
    unet = {key[len(UNET_PREFIX) :]: shape for key, shape in shapes.items() if key.startswith(UNET_PREFIX)}
    conv_in = shape_of(unet, "input_blocks.0.0.weight", path)
    input_blocks = indices_after(unet, "input_blocks.")
    levels = 1 + sum(f"input_blocks.{i}.0.op.weight" in unet for i in input_blocks)
    layers_per_block = (len(input_blocks) - 1 - (levels - 1)) // levels
    first_blocks = [1 + level * (layers_per_block + 1) for level in range(levels)]
    block_out_channels = [shape_of(unet, f"input_blocks.{i}.0.out_layers.3.weight", path)[0] for i in first_blocks]
    has_attention = [f"input_blocks.{i}.1.proj_in.weight" in unet for i in first_blocks]
    attention = next((i for i, has in zip(first_blocks, has_attention, strict=True) if has), None)
    if attention is None:
        raise ModelFileError("this UNet has no cross-attention blocks", where=path, fix="give a Stable Diffusion checkpoint")
    config.update(
        in_channels=conv_in[1],
        out_channels=shape_of(unet, "out.2.weight", path)[0],
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if has else "DownBlock2D" for has in has_attention],
        up_block_types=["CrossAttnUpBlock2D" if has else "UpBlock2D" for has in reversed(has_attention)],
        cross_attention_dim=shape_of(unet, f"input_blocks.{attention}.1.transformer_blocks.0.attn2.to_k.weight", path)[1],
        use_linear_projection=len(shape_of(unet, f"input_blocks.{attention}.1.proj_in.weight", path)) == 2,
        transformer_layers_per_block=len(indices_after(unet, f"input_blocks.{attention}.1.transformer_blocks.")),
        attention_head_dim=_unet_heads(config, block_out_channels),
    )
    if block_out_channels[0] < 64:  # only our tiny test models are this narrow (see engine/tiny.py)
        config["norm_num_groups"] = TINY_UNET_NORM_GROUPS
    return config


def _unet_heads(template: dict[str, Any], block_out_channels: list[int]) -> int | list[int]:
    """SD 1.x fixes the number of heads (8); SD 2.x fixes their width (64) so the count grows with width.

    diffusers calls both `attention_head_dim` (a historical misnomer: it is the head count)."""
    heads = template["attention_head_dim"]
    if isinstance(heads, int):
        return heads
    head_width = template["block_out_channels"][0] // heads[0]
    return [heads_for_width(width, head_width) for width in block_out_channels]


def derive_vae_config(shapes: dict[str, tuple[int, ...]], family: str, path: Path) -> dict[str, Any]:
    config = load_template(family, "vae")
    vae = {key[len(VAE_PREFIX) :]: shape for key, shape in shapes.items() if key.startswith(VAE_PREFIX)}
    levels = indices_after(vae, "encoder.down.")
    conv_in = shape_of(vae, "encoder.conv_in.weight", path)
    config.update(
        in_channels=conv_in[1],
        out_channels=shape_of(vae, "decoder.conv_out.weight", path)[0],
        block_out_channels=[shape_of(vae, f"encoder.down.{level}.block.0.conv2.weight", path)[0] for level in levels],
        layers_per_block=len(indices_after(vae, "encoder.down.0.block.")),
        latent_channels=shape_of(vae, "post_quant_conv.weight", path)[0],
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
    )
    return config


def clip_text_sizes(shapes: dict[str, tuple[int, ...]], prefix: str, path: Path) -> dict[str, int]:
    """CLIPTextConfig sizes of a CLIP text encoder stored in transformers' names under `prefix` (`...text_model.`)."""
    vocab_size, hidden = shape_of(shapes, prefix + "embeddings.token_embedding.weight", path)
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "max_position_embeddings": shape_of(shapes, prefix + "embeddings.position_embedding.weight", path)[0],
        "num_hidden_layers": len(indices_after(shapes, prefix + "encoder.layers.")),
        "intermediate_size": shape_of(shapes, prefix + "encoder.layers.0.mlp.fc1.weight", path)[0],
    }


def open_clip_text_sizes(shapes: dict[str, tuple[int, ...]], prefix: str, path: Path) -> dict[str, int]:
    """CLIPTextConfig sizes of an OpenCLIP text encoder stored in its own names under `prefix` (`...model.`),
    every block counted."""
    blocks = prefix + "transformer.resblocks."
    vocab_size, hidden = shape_of(shapes, prefix + "token_embedding.weight", path)
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "max_position_embeddings": shape_of(shapes, prefix + "positional_embedding", path)[0],
        "num_hidden_layers": len(indices_after(shapes, blocks)),
        "intermediate_size": shape_of(shapes, blocks + "0.mlp.c_fc.weight", path)[0],
    }


def derive_text_encoder_config(shapes: dict[str, tuple[int, ...]], family: str, path: Path) -> dict[str, Any]:
    config = load_template(family, "text_encoder")
    template_head_width = config["hidden_size"] // config["num_attention_heads"]
    if family == "sd1":
        sizes = clip_text_sizes(shapes, CLIP_TEXT_MODEL_PREFIX, path)
    else:
        sizes = open_clip_text_sizes(shapes, OPEN_CLIP_PREFIX, path)
        # SD 2.x conditions on OpenCLIP's penultimate layer: diffusers' CLIPTextModel drops the last block.
        sizes["num_hidden_layers"] -= 1
    config.update(sizes, num_attention_heads=heads_for_width(sizes["hidden_size"], template_head_width))
    return config


@dataclass
class Architecture:
    """What a single file holds, derived from its tensor names and shapes."""

    family: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any] | None = None  # SDXL's second (OpenCLIP bigG) text encoder


def derive_sd_architecture(shapes: dict[str, tuple[int, ...]], family: str, path: Path) -> Architecture:
    """The architecture of an SD 1.x or 2.x file (SDXL's: engine/families/sdxl_file.py)."""
    unet = derive_unet_config(shapes, family, path)
    if unet["in_channels"] != 4:
        raise ModelFileError(
            f"this UNet takes {unet['in_channels']} input channels (an inpainting or instruct-pix2pix model); LoRA training needs a plain text-to-image model",
            where=path,
            fix="use the base (non-inpainting) version of this model",
        )
    return Architecture(
        family=family,
        unet=unet,
        vae=derive_vae_config(shapes, family, path),
        text_encoder=derive_text_encoder_config(shapes, family, path),
    )
