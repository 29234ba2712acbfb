"""What loading an SD 1.x/2.x and an SDXL diffusers folder share: the weight-file check, the UNet
config, and the prediction type to train with."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.families import ModelFamily


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
