"""How large a network's file is, from the target layers' shapes and the type's formulas, without weights.

The target layers' shapes of the published SD 1.5 / SD 2.1 / SDXL configurations are a table shipped
beside this module (target_shapes.json), so the Parameters screen shows each choice's size without
loading torch. `count_target_shapes` builds those configurations on the meta device (no memory, no
download) and reads the targets of engine.network.targets off them: a test checks the table against it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.network.adapters import NetworkSpec
from engine.network.targets import is_spatial_conv, text_encoder_lora_targets, unet_targets

TEMPLATE_FAMILIES = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl"}
SHAPES_TABLE = Path(__file__).with_name("target_shapes.json")
Shape = tuple[int, int, int]  # (out, in, kernel elements) of one target layer
Shapes = tuple[tuple[Shape, ...], tuple[Shape, ...]]  # (1x1 / Linear targets, larger convolutions)


def shapes_key(family: str, *, convs: bool, text_encoders: bool) -> str:
    return f"{family} convs={convs} text_encoders={text_encoders}"


@lru_cache(maxsize=1)
def _shapes_table() -> dict[str, Any]:
    return json.loads(SHAPES_TABLE.read_text(encoding="utf-8"))


def target_shapes(family: str, *, convs: bool, text_encoders: bool) -> Shapes:
    """(shapes of the 1x1 / Linear targets, shapes of the larger convolutions) of a family's published
    model, from the shipped table."""
    entry = _shapes_table()[shapes_key(family, convs=convs, text_encoders=text_encoders)]
    return tuple(tuple(shape) for shape in entry["plain"]), tuple(tuple(shape) for shape in entry["spatial"])


def count_target_shapes(family: str, *, convs: bool, text_encoders: bool) -> Shapes:
    """The same shapes counted on the family's published configuration built on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.families.templates import load_template

    # torch's device context, not accelerate's init_empty_weights: that one patches nn.Module for
    # every thread, and this may run while other threads build real models.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_template(family, "unet"))
        encoders = [CLIPTextModel(CLIPTextConfig(**load_template(family, "text_encoder")))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**load_template(family, "text_encoder_2"))))
    return model_target_shapes(unet, encoders if text_encoders else [], convs=convs)


def shapes_table() -> dict[str, Any]:
    """The table target_shapes.json holds, counted anew (`python -m engine.network.size` writes it)."""
    table = {}
    for family in sorted(set(TEMPLATE_FAMILIES.values())):
        for convs in (False, True):
            for text_encoders in (False, True):
                plain, spatial = count_target_shapes(family, convs=convs, text_encoders=text_encoders)
                table[shapes_key(family, convs=convs, text_encoders=text_encoders)] = {
                    "plain": [list(shape) for shape in plain],
                    "spatial": [list(shape) for shape in spatial],
                }
    return table


def model_target_shapes(unet: Any, encoders: list[Any], *, convs: bool) -> tuple[tuple[Shape, ...], tuple[Shape, ...]]:
    """(1x1 / Linear target shapes, larger-convolution target shapes) of these adapter-free models."""
    layers = [(unet, path) for path in unet_targets(unet, convs=convs)]
    layers += [(encoder, path) for encoder in encoders for path in text_encoder_lora_targets(encoder)]
    plain: list[Shape] = []
    spatial: list[Shape] = []
    for model, path in layers:
        module = model.get_submodule(path)
        shape = (module.weight.shape[0], module.weight.shape[1], module.weight[0, 0].numel())
        (spatial if is_spatial_conv(module) else plain).append(shape)
    return tuple(plain), tuple(spatial)


def shapes_bytes(spec: NetworkSpec, shapes: tuple[tuple[Shape, ...], tuple[Shape, ...]], bytes_per_value: int = 2) -> int:
    plain, spatial = shapes
    values = sum(layer_values(spec, shape, spec.dim) for shape in plain)
    values += sum(layer_values(spec, shape, spec.conv_dim) for shape in spatial)
    return values * bytes_per_value


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LoKr's split of a dimension into (m, n), m <= n, m as near `factor` as divides: the rule of
    peft.tuners.lokr.layer.factorization (and LyCORIS), repeated here so counting sizes needs no
    torch; a test compares the two."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def layer_values(spec: NetworkSpec, shape: Shape, rank: int) -> int:
    """Numbers stored for one layer of this type at this rank (alpha included)."""
    out, inp, kernel = shape
    values = 1 + (out if spec.dora else 0)
    if spec.type in ("lora", "locon"):
        return values + rank * (inp * kernel + out)
    if spec.type == "loha":
        return values + 2 * rank * (out + inp * kernel)
    (a, b), (c, d) = factorization(out, spec.factor), factorization(inp, spec.factor)
    whole = spec.full_matrix or rank >= max(b, d) / 2
    return values + a * c + (b * d * kernel if whole else rank * (b + d * kernel))


def network_file_bytes(family: str, spec: NetworkSpec, *, train_text_encoder: bool, bytes_per_value: int = 2) -> int:
    """The file's tensor bytes for this family and network (fp16 by default), header not counted."""
    shapes = target_shapes(TEMPLATE_FAMILIES.get(family, "sd1"), convs=spec.covers_convs, text_encoders=train_text_encoder)
    return shapes_bytes(spec, shapes, bytes_per_value)


if __name__ == "__main__":
    from engine.files import atomic_write_text

    atomic_write_text(SHAPES_TABLE, json.dumps(shapes_table(), separators=(",", ":")) + "\n")
