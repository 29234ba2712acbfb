"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, cross-attention on its hidden states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families import LoadedModel, ModelFamily
from engine.families.diffusers_folder import check_weight_files, read_unet_config, training_scheduler
from engine.families.flux import FLUX_DEV, FLUX_SCHNELL
from engine.families.objectives import NoisePrediction
from engine.families.sdxl import SDXL, check_sdxl_folder, is_sdxl_unet_config, load_sdxl_folder

DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class StableDiffusion1(ModelFamily):
    name = "sd1"
    label = "SD 1.x"
    base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    default_resolution = 512

    def encode(self, model: LoadedModel, token_ids: list[Any], clip_skip: int = 1) -> dict[str, Any]:
        from engine.devices import host_to_device

        text_encoder = model.text_encoders[0]
        ids = host_to_device(token_ids[0], text_encoder.device)
        if clip_skip == 1:
            hidden = text_encoder(ids, return_dict=False)[0]
        else:
            # kohya / AUTOMATIC1111 clip skip: the N-th last layer, then the final layer norm.
            states = text_encoder(ids, output_hidden_states=True, return_dict=True).hidden_states
            hidden = text_encoder.final_layer_norm(states[-clip_skip])
        return {"encoder_hidden_states": hidden}

    def kohya_unet_name(self, module_path: str) -> str:
        # SD 1.x/2.x kohya keys spell the diffusers module path with underscores.
        return "lora_unet_" + module_path.replace(".", "_")

    def kohya_text_encoder_name(self, index: int, module_path: str) -> str:
        # transformers 5 dropped the `text_model.` wrapper; kohya and the web UIs only map the old spelling.
        path = module_path.removeprefix("text_model.")
        return "lora_te_text_model_" + path.replace(".", "_")


class StableDiffusion2(StableDiffusion1):
    name = "sd2"
    label = "SD 2.x"
    base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2-512/lora"
    default_resolution = 512


FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (StableDiffusion1(), StableDiffusion2(), SDXL, FLUX_DEV, FLUX_SCHNELL)}


def family_from_unet_config(config: dict[str, Any], folder: Path | None = None) -> ModelFamily:
    """SDXL's UNet takes `text_time` embeddings (and its folder has a second text encoder); SD 2.x uses
    linear projections in its transformer blocks; SD 1.x uses 1x1 convolutions."""
    if is_sdxl_unet_config(config) or (folder is not None and (folder / "text_encoder_2").is_dir()):
        return FAMILIES["sdxl"]
    return FAMILIES["sd2"] if config.get("use_linear_projection") else FAMILIES["sd1"]


def load_sd_model(path: Path, *, prediction: str = "auto", tokenizer_dir: Path | None = None) -> LoadedModel:
    if path.is_dir():
        return load_diffusers_folder(path, prediction=prediction)
    from engine.families.single_file import load_single_file

    return load_single_file(path, prediction=prediction, tokenizer_dir=tokenizer_dir)


def is_sdxl_folder(path: Path) -> bool:
    """A second text encoder, or a UNet config with SDXL's `text_time` embeddings."""
    if (path / "text_encoder_2").is_dir():
        return True
    try:
        return is_sdxl_unet_config(json.loads((path / "unet" / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False  # the checks below name what is missing


def check_diffusers_folder(path: Path) -> dict[str, Any]:
    """The UNet config of a diffusers folder, after checking every part is present."""
    if is_sdxl_folder(path):
        check_sdxl_folder(path)
        return read_unet_config(path)
    for part in DIFFUSERS_PARTS:
        if not (path / part).is_dir():
            raise ModelFileError(
                f"this diffusers model folder has no `{part}` folder",
                where=path,
                fix="copy the complete model folder (unet, vae, text_encoder, tokenizer, scheduler), or give a .safetensors file",
            )
    check_weight_files(path, (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")))
    return read_unet_config(path)


def load_diffusers_folder(path: Path, *, prediction: str = "auto") -> LoadedModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    family = family_from_unet_config(check_diffusers_folder(path), path)
    if family is SDXL:
        return load_sdxl_folder(path, prediction=prediction)
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"cannot load this diffusers model: {exc}", where=path, fix="check the model folder is complete and not damaged") from None
    scheduler, prediction_type, note = training_scheduler(family, scheduler, prediction)
    return LoadedModel(
        family=family,
        denoiser=unet,
        vae=vae,
        text_encoders=[text_encoder],
        tokenizers=[tokenizer],
        objective=NoisePrediction(scheduler, prediction_type),
        source=path,
        notes=[note],
    )
