"""How large a network's file is, from the target layers' shapes and the type's formulas, without weights.

The published SD 1.5 / SD 2.1 / SDXL configurations are built on the meta device (no memory, no
download), the targets of engine.network.targets are read off them, and each layer's tensor count
is the type's: the sizes the Parameters screen shows beside each choice.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from engine.network.adapters import NetworkSpec
from engine.network.targets import is_spatial_conv, text_encoder_lora_targets, unet_targets

TEMPLATE_FAMILIES = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl"}
Shape = tuple[int, int, int]  # (out, in, kernel elements) of one target layer


@lru_cache(maxsize=8)
def target_shapes(family: str, *, convs: bool, text_encoders: bool) -> tuple[tuple[Shape, ...], tuple[Shape, ...]]:
    """(shapes of the 1x1 / Linear targets, shapes of the larger convolutions) of a family's published model."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.families.templates import load_template

    # torch's device context, not accelerate's init_empty_weights: that one patches nn.Module for
    # every thread, and this runs in a wizard worker while other threads may build real models.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_template(family, "unet"))
        encoders = [CLIPTextModel(CLIPTextConfig(**load_template(family, "text_encoder")))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**load_template(family, "text_encoder_2"))))
    return model_target_shapes(unet, encoders if text_encoders else [], convs=convs)


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


def _factorization(dimension: int, factor: int) -> tuple[int, int]:
    from peft.tuners.lokr.layer import factorization

    return factorization(dimension, factor)


def layer_values(spec: NetworkSpec, shape: Shape, rank: int) -> int:
    """Numbers stored for one layer of this type at this rank (alpha included)."""
    out, inp, kernel = shape
    values = 1 + (out if spec.dora else 0)
    if spec.type in ("lora", "locon"):
        return values + rank * (inp * kernel + out)
    if spec.type == "loha":
        return values + 2 * rank * (out + inp * kernel)
    (a, b), (c, d) = _factorization(out, spec.factor), _factorization(inp, spec.factor)
    whole = spec.full_matrix or rank >= max(b, d) / 2
    return values + a * c + (b * d * kernel if whole else rank * (b + d * kernel))


def network_file_bytes(family: str, spec: NetworkSpec, *, train_text_encoder: bool, bytes_per_value: int = 2) -> int:
    """The file's tensor bytes for this family and network (fp16 by default), header not counted."""
    shapes = target_shapes(TEMPLATE_FAMILIES.get(family, "sd1"), convs=spec.covers_convs, text_encoders=train_text_encoder)
    return shapes_bytes(spec, shapes, bytes_per_value)
