"""Answers-file defaults that depend on the model family, as kohya recommends them.

SD 1.x / 2.x keep the schema's defaults (the seed article's settings). SDXL follows sd-scripts'
docs/train_SDXL-en.md and docs/sdxl_train_network.md:

- 1024 px, SDXL's native size; buckets up to 2048, twice the resolution as SD 1.x's 1024 is
  twice 512 (kohya's SDXL examples use max_bucket_reso = 2048);
- the UNet only (`--network_train_unet_only`, "highly recommended for SDXL LoRA"), which lets the
  text encoders' outputs be cached: the memory-saving default;
- unet_lr 1e-4 and text-encoder learning rates of 1e-5, "smaller than the U-Net's", should the
  user train the encoders after all.

FLUX.1 (dev and schnell) follows sd-scripts' docs/flux_train_network.md: 1024 px, the transformer only
(CLIP-L and T5 outputs cached), rank 16, learning rate 1e-4, `shift` timestep sampling. What fits a card
(fp8 storage of the frozen transformer, its blocks offloaded to host memory, 512 px on 12 GB cards)
comes from `flux_card_defaults()`, per card as kohya's 24 / 16 / 12 GB advice.

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
    "network.dim",
    "training.timestep_sampling",
    "training.fp8_base",
    "training.offload_blocks",
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
    "network.dim": 8,
    "training.timestep_sampling": "shift",
    "training.fp8_base": False,
    "training.offload_blocks": False,
}

FLUX_FAMILIES = ("flux1-dev", "flux1-schnell")

FLUX_DEFAULTS: dict[str, Any] = {
    "dataset.resolution": 1024,
    "dataset.max_bucket": 2048,
    "network.train_text_encoder": False,  # the transformer only: CLIP-L and T5 outputs cached
    "training.unet_lr": 1e-4,
    "training.text_encoder_lr": 5e-5,  # CLIP-L, should the user train it after all
    "training.text_encoder_2_lr": None,
    "network.dim": 16,
    "training.timestep_sampling": "shift",  # with discrete_flow_shift 3.1582, kohya's choice for dev
    "training.fp8_base": False,  # decided per card: flux_card_defaults()
    "training.offload_blocks": False,
}

# FLUX.1 per card (GiB of VRAM): the 12-billion-parameter transformer is ~22 GiB in bf16, ~11 GiB in
# fp8. Below 30 GiB it is stored in fp8 (kohya's fp8_base, 24 GB cards); below 20 GiB its blocks
# also wait in host memory (what kohya's blocks_to_swap is for, 16 GB cards); below 14 GiB the
# resolution drops to 512 (12 GB cards). Gradient checkpointing always: offloading needs it and
# FLUX.1's activations at 1024 px do not fit beside the weights without it.
FLUX_NO_FP8_GIB = 30
FLUX_NO_OFFLOAD_GIB = 20
FLUX_1024_GIB = 14


def is_flux(family: str | None) -> bool:
    return family in FLUX_FAMILIES


def family_defaults(family: str) -> dict[str, Any]:
    """`section.key` -> value for a model family ("sd1", "sd2", "sdxl", "flux1-dev",
    "flux1-schnell"); None means the schema's default. Every family returns the same keys
    (FAMILY_KEYS)."""
    if family == "sdxl":
        return dict(SDXL_DEFAULTS)
    if is_flux(family):
        return dict(FLUX_DEFAULTS)
    return {key: schema_default(key) for key in FAMILY_KEYS}


def flux_card_defaults(vram_total: int | None) -> dict[str, Any]:
    """FLUX.1's settings for a GPU with `vram_total` bytes (None: no usable GPU, the CPU trains:
    nothing to store in fp8 or offload to)."""
    common = {"training.batch_size": 1, "training.gradient_checkpointing": True}
    if vram_total is None:
        return {**common, "dataset.resolution": 1024, "training.fp8_base": False, "training.offload_blocks": False}
    gib = vram_total / 1024**3
    return {
        **common,
        "dataset.resolution": 1024 if gib >= FLUX_1024_GIB else 512,
        "training.fp8_base": gib < FLUX_NO_FP8_GIB,
        "training.offload_blocks": gib < FLUX_NO_OFFLOAD_GIB,
    }


def trains_text_encoder_by_default(family: str) -> bool:
    return bool(family_defaults(family)["network.train_text_encoder"])
