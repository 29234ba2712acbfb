"""The SDXL UNet's module names in the original (SGM) layout, from diffusers' names: a table, not string guesses.

kohya names SDXL UNet LoRA modules after its own copy of Stability's original UNet (sd-scripts
library/sdxl_original_unet.py), so the keys read `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`
where diffusers says `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`. AUTOMATIC1111 and
ComfyUI map only these names for SDXL.

The original UNet numbers its blocks in the order it builds them (sd-scripts sdxl_model_util
make_unet_conversion_map; diffusers lora_conversion_utils._maybe_map_sgm_blocks_to_diffusers reads them
back the same way), with L layers per block:

    input_blocks.0.0                    conv_in
    input_blocks.{i*(L+1)+j+1}.0 / .1   level i, layer j: ResNet / attention (down_blocks.i.resnets.j / attentions.j)
    input_blocks.{(i+1)*(L+1)}.0.op     the downsampler after level i (down_blocks.i.downsamplers.0.conv)
    middle_block.0 / .1 / .2            mid ResNet 0, mid attention, mid ResNet 1
    output_blocks.{i*(L+1)+j}.0 / .1    up level i, layer j (0..L): ResNet / attention
    output_blocks.{i*(L+1)+L}.2         the upsampler after up level i (.1 when that level has no attention)

Inside an attention block (Transformer2DModel) the names are the same in both layouts; inside a ResNet
they differ (norm1 -> in_layers.0, ...), as do the embeddings and the output layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from engine.families.templates import load_template

# diffusers ResNet part -> original ResNet part (ResBlock's in_layers / emb_layers / out_layers).
RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# Modules outside the block structure.
TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def block_table(config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers block path -> original block path, for a UNet config (its levels, layers and attention)."""
    layers = int(config["layers_per_block"])
    levels = len(config["block_out_channels"])
    table = dict(TOP_LEVEL)
    for level, block_type in enumerate(config["down_block_types"]):
        for layer in range(layers):
            index = level * (layers + 1) + layer + 1
            table[f"down_blocks.{level}.resnets.{layer}"] = f"input_blocks.{index}.0"
            if block_type.startswith("CrossAttn"):
                table[f"down_blocks.{level}.attentions.{layer}"] = f"input_blocks.{index}.1"
        if level < levels - 1:
            table[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{(level + 1) * (layers + 1)}.0.op"
    table["mid_block.resnets.0"] = "middle_block.0"
    table["mid_block.attentions.0"] = "middle_block.1"
    table["mid_block.resnets.1"] = "middle_block.2"
    for level, block_type in enumerate(config["up_block_types"]):
        has_attention = block_type.startswith("CrossAttn")
        for layer in range(layers + 1):
            index = level * (layers + 1) + layer
            table[f"up_blocks.{level}.resnets.{layer}"] = f"output_blocks.{index}.0"
            if has_attention:
                table[f"up_blocks.{level}.attentions.{layer}"] = f"output_blocks.{index}.1"
        if level < levels - 1:
            last = level * (layers + 1) + layers
            table[f"up_blocks.{level}.upsamplers.0"] = f"output_blocks.{last}.{2 if has_attention else 1}"
    return table


def sgm_module_path(module_path: str, table: Mapping[str, str]) -> str:
    """The original module path of a diffusers UNet module path (`down_blocks.1.attentions.0.proj_in`
    -> `input_blocks.4.1.proj_in`). A path the table does not cover is a KeyError."""
    parts = module_path.split(".")
    for end in range(len(parts), 0, -1):  # the longest table entry that is a whole-part prefix
        prefix = ".".join(parts[:end])
        if prefix in table:
            rest = parts[end:]
            if "resnets" in prefix.split(".") and rest and rest[0] in RESNET_PARTS:
                rest = [*RESNET_PARTS[rest[0]].split("."), *rest[1:]]
            return ".".join([table[prefix], *rest])
    raise KeyError(f"no original (SGM) name for the UNet module `{module_path}`")


def sgm_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers UNet state dict renamed to the original layout (without the `model.diffusion_model.` prefix)."""
    table = block_table(config)
    renamed = {}
    for key, value in state_dict.items():
        module, _, parameter = key.rpartition(".")
        renamed[f"{sgm_module_path(module, table)}.{parameter}"] = value
    return renamed


@lru_cache(maxsize=1)
def sdxl_block_table() -> dict[str, str]:
    """The table of SDXL's own UNet (configs/sdxl/unet.json): every SDXL-architecture model shares it."""
    return block_table(load_template("sdxl", "unet"))
