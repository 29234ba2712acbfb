"""The diffusers / transformers models of a single file, built on the meta device from the derived
configs (engine/families/ldm_config.py), their tensors renamed by diffusers' own single_file_utils
converters and loaded strictly: any missing, extra or mis-shaped tensor is a ModelFileError."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families.ldm_config import CLIP_PREFIX, OPEN_CLIP_BLOCKS, OPEN_CLIP_PREFIX, VAE_PREFIX


def _float32(state_dict: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {key: value.to(torch.float32) if value.is_floating_point() else value for key, value in state_dict.items()}


def load_strictly(model: Any, state_dict: dict[str, Any], part: str, path: Path) -> Any:
    """Fill a model built on the meta device; any missing, extra or mis-shaped tensor is an error."""
    try:
        model.load_state_dict(_float32(state_dict), strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ModelFileError(
            f"the {part} weights in this checkpoint do not match a standard {part}: {detail[:600]}",
            where=path,
            fix="use an unmodified SD 1.x / SD 2.x / SDXL checkpoint",
        ) from None
    return model.eval()


def build_unet(config: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return load_strictly(unet, convert_ldm_unet_checkpoint(tensors, config), "UNet", path)


def build_vae(config: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_tensors = {key: value for key, value in tensors.items() if key.startswith(VAE_PREFIX)}
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    return load_strictly(vae, convert_ldm_vae_checkpoint(vae_tensors, config), "VAE", path)


def build_text_encoder(family: str, config: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    if family == "sd1":
        converted = convert_ldm_clip_checkpoint({k: v for k, v in tensors.items() if k.startswith(CLIP_PREFIX)})
    else:
        converted = convert_open_clip_checkpoint(text_encoder, _penultimate_open_clip(tensors, config), prefix=OPEN_CLIP_PREFIX)
    return load_text_encoder_strictly(text_encoder, converted, "text encoder", path)


def load_text_encoder_strictly(text_encoder: Any, converted: dict[str, Any], part: str, path: Path) -> Any:
    """Fill a CLIP text encoder built on the meta device with weights diffusers' converters renamed."""
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5 flattened CLIPTextModel
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    converted.pop("embeddings.position_ids", None)  # a buffer transformers no longer saves
    converted.pop("text_model.embeddings.position_ids", None)
    return load_strictly(text_encoder, converted, part, path)


def _penultimate_open_clip(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """OpenCLIP tensors without the last block and the projection, which SD 2.x never uses."""
    kept_blocks = config["num_hidden_layers"]
    kept = {}
    for key, value in tensors.items():
        if not key.startswith(OPEN_CLIP_PREFIX) or key == OPEN_CLIP_PREFIX + "text_projection":
            continue
        match = re.match(re.escape(OPEN_CLIP_BLOCKS) + r"(\d+)\.", key)
        if match and int(match.group(1)) >= kept_blocks:
            continue
        kept[key] = value
    return kept
