"""A FLUX.1 LoRA in the format kohya writes and ComfyUI and Forge load.

kohya's `networks.lora_flux` puts a LoRA on every Linear of BFL's double and single blocks and names
it by BFL's module (`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_0_linear1`),
`lora_te1_...` for CLIP-L. Training here runs on diffusers' FluxTransformer2DModel, which splits BFL's
fused projections into separate layers (q, k, v; and q, k, v, mlp in a single block's `linear1`), each
with its own rank-r LoRA. The export is exact, as kohya's convert_flux_lora writes it: the parts'
down matrices stacked (rank n*r), their up matrices block-diagonal, alpha n*alpha so that
alpha / rank, the scale every loader applies, stays the trained one. A fused module's rank is
therefore 3r (double-block qkv) or 4r (single-block linear1); the other modules keep rank r.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.families.flux_layout import BflPlace, kohya_transformer_stem

if TYPE_CHECKING:
    import torch

CLIP_L_PREFIX = "lora_te1"  # kohya's lora_flux: CLIP-L is te1 (T5-XXL would be te3)
NETWORK_MODULE = "networks.lora_flux"
BASE_MODEL_VERSION = "flux1"
MODELSPEC_ARCHITECTURE = {"dev": "flux-1-dev/lora", "schnell": "flux-1-schnell/lora"}
# The blocks kohya's lora_flux adapts (DoubleStreamBlock, SingleStreamBlock), by diffusers' names.
BLOCK_CLASS_NAMES = ("FluxTransformerBlock", "FluxSingleTransformerBlock")


@dataclass
class TrainedLayer:
    """One adapted diffusers layer: its module path and its LoRA (down [r, in], up [out, r], alpha)."""

    path: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float


def transformer_lora_targets(transformer: Any) -> list[str]:
    """Every Linear inside the double and single blocks (kohya's lora_flux targets), in model order;
    each has a module in BFL's layout."""
    from torch import nn

    targets = []
    for block_path, block in transformer.named_modules():
        if type(block).__name__ not in BLOCK_CLASS_NAMES:
            continue
        for child_path, child in block.named_modules():
            if isinstance(child, nn.Linear):
                path = f"{block_path}.{child_path}"
                kohya_transformer_stem(path)  # every target has a BFL module (KeyError otherwise)
                targets.append(path)
    return targets


def clip_l_stem(module_path: str) -> str:
    # transformers 5's CLIPTextModel dropped `text_model.`; kohya and the web UIs spell it.
    return f"{CLIP_L_PREFIX}_text_model_" + module_path.removeprefix("text_model.").replace(".", "_")


def _fuse(
    stem: str, parts: dict[int, TrainedLayer], count: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """kohya's fused LoRA for BFL module `stem` from its `count` diffusers parts."""
    import torch

    if sorted(parts) != list(range(count)):
        raise ValueError(f"{stem}: a LoRA on {len(parts)} of its {count} parts; the fused module needs all")
    ordered = [parts[index] for index in range(count)]
    alphas = {layer.alpha for layer in ordered}
    ranks = {layer.down.shape[0] for layer in ordered}
    if len(alphas) != 1 or len(ranks) != 1:
        raise ValueError(f"{stem}: its parts have different ranks or alphas")
    rank = ranks.pop()
    down = torch.cat([layer.down.detach().float().cpu() for layer in ordered], dim=0)
    up = torch.zeros(sum(layer.up.shape[0] for layer in ordered), rank * count)
    row = 0
    for index, layer in enumerate(ordered):
        up[row : row + layer.up.shape[0], index * rank : (index + 1) * rank] = layer.up.detach().float().cpu()
        row += layer.up.shape[0]
    return {
        f"{stem}.lora_down.weight": down.to(dtype).contiguous(),
        f"{stem}.lora_up.weight": up.to(dtype).contiguous(),
        f"{stem}.alpha": torch.tensor(alphas.pop() * count, dtype=dtype),
    }


def kohya_flux_state_dict(
    transformer_layers: Iterable[TrainedLayer],
    clip_layers: Iterable[TrainedLayer] = (),
    *,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """The LoRA as kohya's lora_flux writes it: BFL module names, fused projections exact."""
    grouped: dict[str, tuple[dict[int, TrainedLayer], BflPlace]] = {}
    for layer in transformer_layers:
        stem, place = kohya_transformer_stem(layer.path)
        grouped.setdefault(stem, ({}, place))[0][place.part] = layer
    tensors: dict[str, torch.Tensor] = {}
    for stem, (parts, place) in grouped.items():
        tensors.update(_fuse(stem, parts, place.parts, dtype))
    for layer in clip_layers:
        tensors.update(_fuse(clip_l_stem(layer.path), {0: layer}, 1, dtype))
    return tensors


def fused_rank_note(rank: int) -> str:
    """What ranks the file holds, for its metadata and the README."""
    return f"rank {rank}; double-block attn_qkv {3 * rank} and single-block linear1 {4 * rank} (q, k, v, mlp fused exactly)"


@dataclass(frozen=True)
class FluxLoraSettings:
    """The flow-matching settings a FLUX.1 LoRA was trained with, as kohya records them."""

    variant: str  # "dev" or "schnell"
    timestep_sampling: str  # "shift", "sigmoid", "uniform"
    discrete_flow_shift: float
    sigmoid_scale: float
    guidance_scale: float
    apply_t5_attn_mask: bool
    t5_max_length: int


def flux_metadata(settings: FluxLoraSettings, rank: int) -> dict[str, str]:
    """kohya's FLUX-specific `ss_*` keys and modelspec.architecture (the common keys come from engine/network/metadata.py)."""
    return {
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_network_module": NETWORK_MODULE,
        "ss_model_prediction_type": "raw",
        "ss_timestep_sampling": settings.timestep_sampling,
        "ss_discrete_flow_shift": str(settings.discrete_flow_shift),
        "ss_sigmoid_scale": str(settings.sigmoid_scale),
        "ss_guidance_scale": str(settings.guidance_scale),
        "ss_apply_t5_attn_mask": str(settings.apply_t5_attn_mask),
        "ss_t5xxl_max_token_length": str(settings.t5_max_length),
        "ss_fused_ranks": fused_rank_note(rank),
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[settings.variant],
    }
