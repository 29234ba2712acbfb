"""Every model family by name, and which one a diffusers UNet config belongs to.

A new family adds its instance to FAMILIES; the loaders (engine/families/loading.py) look the family
up here and hand it to the loader of the file layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.families.base import ModelFamily
from engine.families.flux import FLUX_DEV, FLUX_SCHNELL
from engine.families.sd import SD1, SD2
from engine.families.sdxl import SDXL, is_sdxl_unet_config

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SD1, SD2, SDXL, FLUX_DEV, FLUX_SCHNELL)}


def family_from_unet_config(config: dict[str, Any], folder: Path | None = None) -> ModelFamily:
    """SDXL's UNet takes `text_time` embeddings (and its folder has a second text encoder); SD 2.x uses
    linear projections in its transformer blocks; SD 1.x uses 1x1 convolutions."""
    if is_sdxl_unet_config(config) or (folder is not None and (folder / "text_encoder_2").is_dir()):
        return SDXL
    return SD2 if config.get("use_linear_projection") else SD1
