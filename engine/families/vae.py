"""A VAE of the user's choice (`[model] vae`) in place of the base model's.

The usual reason is SDXL under fp16: SDXL's own VAE overflows in fp16, so the engine keeps it in
fp32 (kohya's `--no_half_vae`); an fp16-safe VAE such as madebyollin/sdxl-vae-fp16-fix runs in
the training precision instead, twice as fast and in half the memory. Two forms are read, offline:

- a diffusers AutoencoderKL folder (config.json and diffusion_pytorch_model.safetensors), or a
  model folder holding one in `vae/`;
- a single .safetensors / .ckpt / .pt file, in the original (LDM) layout as AUTOMATIC1111 keeps
  them (`encoder.down.0...`, or inside a full checkpoint under `first_stage_model.`) or in
  diffusers' layout. It takes the base model's VAE architecture and config (scaling factor
  included), converted by diffusers' own `convert_ldm_vae_checkpoint` and loaded strictly.

A VAE made for another family is refused: its latents would not be what the UNet was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families.checkpoint_files import (
    SINGLE_FILE_SUFFIXES,
    read_pickle_checkpoint,
    read_safetensors,
    read_safetensors_shapes,
)
from engine.families.ldm_models import load_strictly

VAE_KEY = "`[model] vae`"
VAE_FIX = "set `[model] vae` to a VAE folder (config.json + weights) or a VAE .safetensors file, or remove the key"
LDM_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
FULL_CHECKPOINT_VAE_PREFIX = "first_stage_model."
DIFFUSERS_VAE_MARKER = "encoder.down_blocks."


def vae_folder(path: Path) -> Path | None:
    """The AutoencoderKL folder at `path` (or in its `vae/`), or None when there is none."""
    for folder in (path, path / "vae"):
        config = folder / "config.json"
        if config.is_file():
            try:
                if json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "AutoencoderKL":
                    return folder
            except (OSError, ValueError):
                return None
    return None


def check_vae_path(path: Path) -> None:
    """A cheap look before any weight is read: a VAE folder, or a file of a kind that can hold one
    (a .safetensors header must name VAE tensors)."""
    if not path.exists():
        raise ModelFileError(f"{VAE_KEY}: nothing at this path", where=path, fix=VAE_FIX)
    if path.is_dir():
        if vae_folder(path) is None:
            raise ModelFileError(
                f"{VAE_KEY}: this folder holds no AutoencoderKL (no config.json with _class_name AutoencoderKL, here or in vae/)",
                where=path,
                fix=VAE_FIX,
            )
        return
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelFileError(f"{VAE_KEY}: `{path.suffix}` is not a weights file this tool reads", where=path, fix=VAE_FIX)
    if path.suffix.lower() == ".safetensors":
        shapes, _ = read_safetensors_shapes(path)
        vae_tensors(dict.fromkeys(shapes), path)  # raises when no VAE tensor is named


def vae_tensors(tensors: dict[str, Any], path: Path) -> dict[str, Any]:
    """The VAE's tensors of a state dict: a VAE file's own, or a full checkpoint's `first_stage_model.*`."""
    if any(key.startswith(FULL_CHECKPOINT_VAE_PREFIX) for key in tensors):
        return {key: value for key, value in tensors.items() if key.startswith(FULL_CHECKPOINT_VAE_PREFIX)}
    found = {key: value for key, value in tensors.items() if key.startswith(LDM_VAE_PARTS)}
    if not any(key.startswith("encoder.") for key in found) or not any(key.startswith("decoder.") for key in found):
        raise ModelFileError(f"{VAE_KEY}: this file holds no VAE ({_what_it_holds(list(tensors))})", where=path, fix=VAE_FIX)
    return found


def _what_it_holds(keys: list[str]) -> str:
    if any(key.startswith("lora_") for key in keys):
        return "it looks like a LoRA"
    if any(key.startswith(("down_blocks.", "model.diffusion_model.")) for key in keys):
        return "it looks like a UNet or a base model without a VAE"
    return f"none of its {len(keys)} tensors is named encoder.* / decoder.*"


def load_vae(path: Path, base_vae: Any) -> Any:
    """The VAE at `path`, checked to fit the base model whose VAE is `base_vae`."""
    check_vae_path(path)
    folder = vae_folder(path) if path.is_dir() else None
    vae = _load_folder(folder, path) if folder is not None else _load_file(path, base_vae.config)
    check_same_family(vae, base_vae, path)
    return vae.eval()


def _load_folder(folder: Path, path: Path) -> Any:
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelFileError(f"{VAE_KEY}: cannot load this VAE folder ({reason})", where=path, fix=VAE_FIX) from None


def _load_file(path: Path, config: Any) -> Any:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if path.suffix.lower() == ".safetensors":
        shapes, _ = read_safetensors_shapes(path)
        tensors = read_safetensors(path, list(vae_tensors(dict.fromkeys(shapes), path)))
    else:
        tensors = vae_tensors(read_pickle_checkpoint(path), path)
    config = dict(config)
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    if any(key.startswith(DIFFUSERS_VAE_MARKER) for key in tensors):
        state_dict = tensors  # already diffusers' names
    else:
        state_dict = convert_ldm_vae_checkpoint(tensors, config)
    try:
        return load_strictly(vae, state_dict, "VAE", path)
    except ModelFileError as exc:
        raise ModelFileError(
            f"{VAE_KEY}: this VAE does not fit the base model's VAE architecture ({exc.message[:300]})",
            where=path,
            fix="give a VAE made for this model family (SDXL: e.g. madebyollin/sdxl-vae-fp16-fix), or remove the key",
        ) from None


def check_same_family(vae: Any, base_vae: Any, path: Path) -> None:
    """Latents the UNet can use: the same channels, the same downsampling, the same scaling factor."""
    checks = (
        ("latent channels", vae.config.latent_channels, base_vae.config.latent_channels),
        ("levels", len(vae.config.block_out_channels), len(base_vae.config.block_out_channels)),
        ("scaling factor", vae.config.scaling_factor, base_vae.config.scaling_factor),
    )
    for what, given, base in checks:
        if given != base:
            raise ModelFileError(
                f"{VAE_KEY}: this VAE's {what} ({given}) is not the base model's ({base}): it is made for another model family",
                where=path,
                fix="give a VAE made for this model family (SDXL: e.g. madebyollin/sdxl-vae-fp16-fix), or remove the key",
            )
