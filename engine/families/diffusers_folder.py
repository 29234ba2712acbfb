"""Base models as diffusers folders (unet/, vae/, text_encoder/, tokenizer/, scheduler/, and SDXL's
text_encoder_2/ and tokenizer_2/): the parts check, the prediction type to train with, loading and
inspecting. The family is decided by engine/families/loading.py (from the UNet config) and passed in."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families.base import LoadedModel, ModelFamily, ModelInfo
from engine.families.objectives import NoisePrediction
from engine.families.sdxl import SDXL, check_sdxl_layout, is_sdxl_unet_config
from engine.families.tokenizers import OWN_TOKENIZERS, is_tokenizer_folder
from engine.messages import Message

DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def check_weight_files(path: Path, parts: Iterable[tuple[str, str]]) -> None:
    """Each (subfolder, file stem) of the folder holds a weights file, `.safetensors` or `.bin`, sharded or not."""
    for part, name in parts:
        if not any((path / part).glob(f"{name}*.safetensors")) and not any((path / part).glob(f"{name}*.bin")):
            raise ModelFileError(f"`{part}` holds no weights file ({name}.safetensors)", where=path / part, fix="copy the complete model folder")


def read_unet_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read unet/config.json: {exc}", where=path / "unet") from None


def training_scheduler(family: ModelFamily, scheduler: Any, requested: str) -> tuple[Any, str, str]:
    """(DDPM scheduler to train with, prediction type, note for the plan) of a folder whose scheduler is
    `scheduler`: the answers file's prediction type when it names one (`requested` is not "auto"), else
    the scheduler config's (epsilon when it names none)."""
    from diffusers import DDPMScheduler

    if requested == "auto":
        prediction_type, origin = scheduler.config.get("prediction_type", "epsilon"), "from the scheduler config"
    else:
        prediction_type, origin = requested, "from the answers file"
    scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
    return scheduler, prediction_type, f"{family.label} diffusers folder, {prediction_type} prediction ({origin})"


# --------------------------------------------------------------------------------------------------
# Checking the parts
# --------------------------------------------------------------------------------------------------


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


def check_sdxl_folder(path: Path) -> None:
    """Every part of an SDXL diffusers folder is there, weights and tokenizer files included."""
    for part in SDXL_DIFFUSERS_PARTS:
        if not (path / part).is_dir():
            raise ModelFileError(
                f"this SDXL model folder has no `{part}` folder",
                where=path,
                fix=f"copy the complete model folder ({', '.join(SDXL_DIFFUSERS_PARTS)}), or give a .safetensors file",
            )
    weights = (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"), ("text_encoder_2", "model"))
    check_weight_files(path, weights)
    for part in ("tokenizer", "tokenizer_2"):
        if not is_tokenizer_folder(path / part):
            raise ModelFileError(f"the `{part}` folder holds no vocab.json + merges.txt", where=path / part, fix="copy the complete model folder")


# --------------------------------------------------------------------------------------------------
# Loading and inspecting (after check_diffusers_folder)
# --------------------------------------------------------------------------------------------------


def load_diffusers_folder(path: Path, family: ModelFamily, *, prediction: str = "auto") -> LoadedModel:
    """The models of a checked diffusers folder of `family`, ready to train."""
    from diffusers import DDPMScheduler

    if family is SDXL:
        denoiser, vae, text_encoders, tokenizers = _sdxl_parts(path)
    else:
        denoiser, vae, text_encoders, tokenizers = _sd_parts(path)
    try:
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise _cannot_load("this SDXL model" if family is SDXL else "this diffusers model", path, exc) from None
    scheduler, prediction_type, note = training_scheduler(family, scheduler, prediction)
    return LoadedModel(
        family=family,
        denoiser=denoiser,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        objective=NoisePrediction(scheduler, prediction_type),
        source=path,
        notes=[note],
    )


def _sd_parts(path: Path) -> tuple[Any, Any, list[Any], list[Any]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise _cannot_load("this diffusers model", path, exc) from None
    return unet, vae, [text_encoder], [tokenizer]


def _sdxl_parts(path: Path) -> tuple[Any, Any, list[Any], list[Any]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        check_sdxl_layout(unet.config, path / "unet")
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        first = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
        second = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", local_files_only=True)
        tokenizers = [CLIPTokenizer.from_pretrained(path, subfolder=part, local_files_only=True) for part in ("tokenizer", "tokenizer_2")]
    except (OSError, ValueError, RuntimeError) as exc:
        raise _cannot_load("this SDXL model", path, exc) from None
    return unet, vae, [first, second], tokenizers


def _cannot_load(what: str, path: Path, exc: BaseException) -> ModelFileError:
    return ModelFileError(f"cannot load {what}: {exc}", where=path, fix="check the model folder is complete and not damaged")


def inspect_diffusers_folder(path: Path, family: ModelFamily) -> ModelInfo:
    """What a checked diffusers folder of `family` is, from its configs."""
    scheduler_config = path / "scheduler" / "scheduler_config.json"
    try:
        prediction = json.loads(scheduler_config.read_text(encoding="utf-8")).get("prediction_type", "epsilon")
        reason = Message("model.prediction.scheduler_config", "from scheduler/scheduler_config.json")
    except (OSError, ValueError):
        prediction, reason = "unknown", Message("model.prediction.no_scheduler_config", "scheduler/scheduler_config.json is missing or unreadable")
    tokenizer = path / "tokenizer"
    if not is_tokenizer_folder(tokenizer):
        raise ModelFileError("the `tokenizer` folder holds no vocab.json + merges.txt", where=tokenizer, fix="copy the complete model folder")
    note = OWN_TOKENIZERS if family is SDXL else Message("model.tokenizer.own_folder", "the model's own tokenizer/ folder")
    return ModelInfo(
        family=family.name,
        label=family.label,
        layout="diffusers folder",
        prediction=prediction,
        prediction_reason=reason,
        tokenizer=tokenizer,
        tokenizer_note=note,
        source=path,
    )
