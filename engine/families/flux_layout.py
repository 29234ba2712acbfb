"""FLUX.1 transformer names: diffusers' FluxTransformer2DModel against BFL's single-file layout.

Black Forest Labs' files (`flux1-dev.safetensors`, `flux1-schnell.safetensors`, and the fp8 copies
users make) name the transformer `double_blocks.N.*`, `single_blocks.N.*`, `img_in`, `txt_in`,
`time_in`, `vector_in`, `guidance_in` (dev only) and `final_layer`. diffusers splits BFL's fused
projections: a double block's `img_attn.qkv` is `attn.to_q/to_k/to_v`, its `txt_attn.qkv` is
`attn.add_q_proj/add_k_proj/add_v_proj`, and a single block's `linear1` is `attn.to_q/to_k/to_v`
plus `proj_mlp`, stacked along the output dimension in that order.

One table serves three jobs: loading a BFL file into diffusers' model, writing the tiny test model in
BFL's layout, and naming LoRA modules as kohya's `networks.lora_flux` does (`lora_unet_<BFL module>`).
diffusers' own `convert_flux_transformer_checkpoint_to_diffusers` does the first job only for the full
width (it hard-codes 3072 and 12288); this table takes every split size from the model itself, so
the real files and the tiny test model take the same path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

BFL_PREFIXES = ("model.diffusion_model.",)  # ComfyUI and Forge save the transformer under this prefix

# diffusers module (within a block) -> BFL module (within a block), with its place in a fused BFL module.
_DOUBLE_BLOCK = {
    "norm1.linear": ("img_mod.lin", 0, 1),
    "norm1_context.linear": ("txt_mod.lin", 0, 1),
    "attn.to_q": ("img_attn.qkv", 0, 3),
    "attn.to_k": ("img_attn.qkv", 1, 3),
    "attn.to_v": ("img_attn.qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn.qkv", 0, 3),
    "attn.add_k_proj": ("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn.qkv", 2, 3),
    "attn.to_out.0": ("img_attn.proj", 0, 1),
    "attn.to_add_out": ("txt_attn.proj", 0, 1),
    "ff.net.0.proj": ("img_mlp.0", 0, 1),
    "ff.net.2": ("img_mlp.2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp.0", 0, 1),
    "ff_context.net.2": ("txt_mlp.2", 0, 1),
    "attn.norm_q": ("img_attn.norm.query_norm", 0, 1),
    "attn.norm_k": ("img_attn.norm.key_norm", 0, 1),
    "attn.norm_added_q": ("txt_attn.norm.query_norm", 0, 1),
    "attn.norm_added_k": ("txt_attn.norm.key_norm", 0, 1),
}
_SINGLE_BLOCK = {
    "norm.linear": ("modulation.lin", 0, 1),
    "attn.to_q": ("linear1", 0, 4),
    "attn.to_k": ("linear1", 1, 4),
    "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4),
    "proj_out": ("linear2", 0, 1),
    "attn.norm_q": ("norm.query_norm", 0, 1),
    "attn.norm_k": ("norm.key_norm", 0, 1),
}
_TOP_LEVEL = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
# diffusers' AdaLayerNormContinuous orders the final modulation (scale, shift); BFL orders it (shift, scale).
SWAPPED_HALVES = "norm_out.linear"
_BLOCK = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")


@dataclass(frozen=True)
class BflPlace:
    """Where a diffusers module lives in BFL's layout: a module, and its slice when BFL fuses several."""

    module: str  # e.g. "double_blocks.0.img_attn.qkv"
    part: int  # index among the fused parts, in BFL's stacking order
    parts: int  # how many diffusers modules BFL fused into `module` (1: not fused)


def bfl_place(diffusers_module: str) -> BflPlace | None:
    """BFL's place for a FluxTransformer2DModel module path, or None when BFL has no such module."""
    if diffusers_module in _TOP_LEVEL:
        return BflPlace(_TOP_LEVEL[diffusers_module], 0, 1)
    match = _BLOCK.match(diffusers_module)
    if match is None:
        return None
    kind, index, inner = match.groups()
    table, bfl_kind = (
        (_DOUBLE_BLOCK, "double_blocks") if kind == "transformer_blocks" else (_SINGLE_BLOCK, "single_blocks")
    )
    if inner not in table:
        return None
    module, part, parts = table[inner]
    return BflPlace(f"{bfl_kind}.{index}.{module}", part, parts)


def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def bfl_key(diffusers_key: str) -> tuple[str, BflPlace]:
    """The BFL tensor name of a diffusers parameter, and its place (for fused tensors)."""
    module, param = _split_param(diffusers_key)
    place = bfl_place(module)
    if place is None:
        raise KeyError(f"no BFL name for {diffusers_key}")
    if place.module.endswith(("query_norm", "key_norm")):
        param = "scale"  # diffusers' RMSNorm holds `weight`, BFL's QKNorm `scale`
    return f"{place.module}.{param}", place


def _swap_halves(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_bfl(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A FluxTransformer2DModel state dict in BFL's layout (fused tensors concatenated in BFL's order)."""
    import torch

    fused: dict[str, dict[int, Any]] = {}
    parts_of: dict[str, int] = {}
    for key, value in state_dict.items():
        name, place = bfl_key(key)
        if _split_param(key)[0] == SWAPPED_HALVES:
            value = _swap_halves(value)
        fused.setdefault(name, {})[place.part] = value
        parts_of[name] = place.parts
    converted = {}
    for name, parts in fused.items():
        if len(parts) != parts_of[name]:
            raise KeyError(f"{name}: {len(parts)} of {parts_of[name]} fused parts present")
        converted[name] = (
            parts[0] if len(parts) == 1 else torch.cat([parts[i] for i in range(len(parts))], dim=0)
        )
    return converted


def strip_bfl_prefix(keys: Any) -> dict[str, str]:
    """{name without ComfyUI's `model.diffusion_model.` prefix: name in the file}."""
    names = {}
    for key in keys:
        bare = key
        for prefix in BFL_PREFIXES:
            if key.startswith(prefix):
                bare = key[len(prefix) :]
        names[bare] = key
    return names


def bfl_to_diffusers(bfl: dict[str, Any], expected_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """BFL tensors (prefix already stripped) as a FluxTransformer2DModel state dict.

    `expected_shapes` is the diffusers model's own state-dict shapes: the fused tensors are cut by
    them, in BFL's stacking order, so any width works. A missing or misshapen tensor is a KeyError
    or ValueError naming it; tensors left over are the caller's to report.
    """
    offsets: dict[str, int] = {}
    converted = {}
    # Walk the diffusers keys in BFL part order, so each fused tensor is cut front to back.
    ordered = sorted(expected_shapes, key=lambda key: (bfl_key(key)[0], bfl_key(key)[1].part))
    for key in ordered:
        name, _ = bfl_key(key)
        if name not in bfl:
            raise KeyError(name)
        rows = expected_shapes[key][0] if expected_shapes[key] else 1
        start = offsets.get(name, 0)
        tensor = bfl[name]
        if tuple(tensor.shape[1:]) != tuple(expected_shapes[key][1:]) or start + rows > tensor.shape[0]:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, which does not fit {key} {expected_shapes[key]}"
            )
        value = tensor[start : start + rows] if expected_shapes[key] else tensor
        offsets[name] = start + rows
        if _split_param(key)[0] == SWAPPED_HALVES:
            value = _swap_halves(value)
        converted[key] = value
    for name, used in offsets.items():
        if bfl[name].ndim and used != bfl[name].shape[0]:
            raise ValueError(f"{name} has {bfl[name].shape[0]} rows, the model's parts take {used}")
    return converted


# --- the model's size from a BFL header --------------------------------------------------------------


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX.1's rotary axes: (16, 56, 56) of a 128-wide head; the same proportions for a narrower head."""
    return head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16


def _count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    found = {
        int(match.group(1)) for key in shapes if (match := re.match(re.escape(prefix) + r"(\d+)\.", key))
    }
    return max(found) + 1 if found else 0


def transformer_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """FluxTransformer2DModel's config from the shapes of a BFL transformer (prefix stripped)."""
    inner, in_channels = shapes["img_in.weight"]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shapes["final_layer.linear.weight"][0],
        "num_layers": _count(shapes, "double_blocks."),
        "num_single_layers": _count(shapes, "single_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": shapes["txt_in.weight"][1],
        "pooled_projection_dim": shapes["vector_in.in_layer.weight"][1],
        "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
        "axes_dims_rope": rope_axes(head_dim),
    }


# --- kohya's LoRA names ----------------------------------------------------------------------------

KOHYA_TRANSFORMER_PREFIX = "lora_unet"  # kohya's lora_flux keeps SD's prefix: "make ComfyUI compatible"


def kohya_transformer_stem(diffusers_module: str) -> tuple[str, BflPlace]:
    """kohya's key stem of the BFL module that holds a diffusers module (`lora_unet_double_blocks_0_img_attn_qkv`)."""
    place = bfl_place(diffusers_module)
    if place is None:
        raise KeyError(f"{diffusers_module} has no module in BFL's layout")
    return f"{KOHYA_TRANSFORMER_PREFIX}_{place.module.replace('.', '_')}", place
