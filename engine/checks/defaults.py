"""Answers-file defaults that depend on the model family, as kohya recommends them.

SD 1.x / 2.x keep the schema's defaults (the seed article's settings). SDXL follows sd-scripts'
docs/train_SDXL-en.md and docs/sdxl_train_network.md:

- 1024 px, SDXL's native size; buckets up to 2048, twice the resolution as SD 1.x's 1024 is
  twice 512 (kohya's SDXL examples use max_bucket_reso = 2048);
- the UNet only (`--network_train_unet_only`, "highly recommended for SDXL LoRA"), which lets the
  text encoders' outputs be cached: the memory-saving default;
- unet_lr 1e-4 and text-encoder learning rates of 1e-5, "smaller than the U-Net's", should the
  user train the encoders after all.

The memory settings (batch size, checkpointing, optimizer) depend on the GPU as well and come
from `recommend()` in environment.py.
"""

from __future__ import annotations

from typing import Any

from engine.config import DatasetSection, NetworkSection, TrainingSection

# The keys a family decides. Every family gives every key, so changing the model from SDXL back
# to SD 1.x replaces each one (None removes the key: the schema's default, e.g. "the family's
# resolution").
FAMILY_KEYS = (
    "dataset.resolution",
    "dataset.max_bucket",
    "network.train_text_encoder",
    "training.unet_lr",
    "training.text_encoder_lr",
    "training.text_encoder_2_lr",
)

_SECTIONS = {"dataset": DatasetSection, "network": NetworkSection, "training": TrainingSection}


def schema_default(key: str) -> Any:
    """The answers schema's default for `section.key`."""
    section, name = key.split(".")
    return _SECTIONS[section].model_fields[name].default


SDXL_DEFAULTS: dict[str, Any] = {
    "dataset.resolution": 1024,
    "dataset.max_bucket": 2048,
    "network.train_text_encoder": False,
    "training.unet_lr": 1e-4,
    "training.text_encoder_lr": 1e-5,
    "training.text_encoder_2_lr": None,  # = text_encoder_lr
}


def family_defaults(family: str) -> dict[str, Any]:
    """`section.key` -> value for a model family ("sd1", "sd2", "sdxl"); None means the schema's
    default. Every family returns the same keys (FAMILY_KEYS)."""
    if family == "sdxl":
        return dict(SDXL_DEFAULTS)
    return {key: schema_default(key) for key in FAMILY_KEYS}


def trains_text_encoder_by_default(family: str) -> bool:
    return bool(family_defaults(family)["network.train_text_encoder"])
