"""Fitting FLUX.1's 12-billion-parameter transformer in a consumer GPU, with diffusers' own mechanisms.

- `fp8_base` (kohya's `--fp8_base`): the frozen transformer weights are stored in float8 (e4m3) and
  each layer is widened to the compute dtype (bf16) just for its forward pass: diffusers'
  `ModelMixin.enable_layerwise_casting`. It skips the layers diffusers marks precision-critical
  (embeddings and norms, FLUX's modulation layers among them). Call it before the LoRA is added:
  the LoRA's own weights are never narrowed.
- `offload_blocks` (what kohya's `--blocks_to_swap` is for): the transformer blocks stay in host
  memory and each group is brought to the GPU when it runs, the next one copied ahead on a side
  stream: diffusers' `enable_group_offload(offload_type="block_level")`. Backward needs the
  weights again, so it goes with gradient checkpointing (each block's forward is recomputed,
  which brings its weights back).
"""

from __future__ import annotations

from typing import Any

FP8_STORAGE = "float8_e4m3fn"


def fp8_supported() -> bool:
    """Whether this torch has the float8 dtype layerwise casting stores in."""
    import torch

    return hasattr(torch, FP8_STORAGE)


def store_in_fp8(transformer: Any, compute_dtype: Any) -> None:
    """Frozen weights in float8, widened to `compute_dtype` layer by layer (diffusers' layerwise casting)."""
    import torch

    transformer.enable_layerwise_casting(
        storage_dtype=getattr(torch, FP8_STORAGE), compute_dtype=compute_dtype
    )


def offload_blocks(transformer: Any, device: Any, *, blocks_per_group: int = 1) -> None:
    """Blocks in host memory, brought to `device` a group at a time (diffusers' group offloading)."""
    import torch

    transformer.enable_group_offload(
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=blocks_per_group,
        use_stream=device.type == "cuda",
    )


def stored_dtypes(transformer: Any) -> dict[str, int]:
    """How many parameters are stored in each dtype (for notes and tests)."""
    counts: dict[str, int] = {}
    for parameter in transformer.parameters():
        name = str(parameter.dtype).removeprefix("torch.")
        counts[name] = counts.get(name, 0) + parameter.numel()
    return counts
