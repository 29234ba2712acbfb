"""Which modules of a model get a network layer, as kohya's networks.lora chooses them.

Every type adapts kohya's default targets: every Linear and 1x1 Conv2d inside the UNet's
Transformer2DModel blocks, and the Linear layers of the text encoders' CLIPAttention and CLIPMLP.
The types that cover convolutions (locon, loha, lokr) add kohya's LoCon targets: the Linear and
Conv2d layers of the ResnetBlock2D, Downsample2D and Upsample2D blocks (kohya's
UNET_TARGET_REPLACE_MODULE_CONV2D_3X3), where the 3x3 convolutions take `conv_dim` / `conv_alpha`
and the rest (time_emb_proj, the 1x1 conv_shortcut) `dim` / `alpha`.
"""

from __future__ import annotations

from typing import Any


def is_linear_or_pointwise_conv(module: Any) -> bool:
    from torch import nn

    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


def is_spatial_conv(module: Any) -> bool:
    """A Conv2d with a kernel larger than 1x1: LoCon's `conv_dim` layers."""
    from torch import nn

    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def _targets_inside(model: Any, container_types: tuple[type, ...], *, convs: bool = False) -> list[str]:
    """Paths of the Linear / 1x1-conv modules (and with `convs` every Conv2d) inside every module of
    `container_types`, in model order."""
    targets = []
    for container_path, container in model.named_modules():
        if not isinstance(container, container_types):
            continue
        for child_path, child in container.named_modules():
            if child_path and (is_linear_or_pointwise_conv(child) or (convs and is_spatial_conv(child))):
                targets.append(f"{container_path}.{child_path}")
    return targets


def unet_lora_targets(unet: Any) -> list[str]:
    """kohya's default UNet targets: Linear and 1x1 Conv2d inside each Transformer2DModel.

    Call it on a UNet without adapters. 192 modules for SD 1.5 (16 blocks x 12).
    """
    from diffusers.models import Transformer2DModel

    return _targets_inside(unet, (Transformer2DModel,))


def unet_conv_block_targets(unet: Any) -> list[str]:
    """kohya's LoCon additions: the Linear and Conv2d layers of the ResNet, downsampling and upsampling blocks."""
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    return _targets_inside(unet, (ResnetBlock2D, Downsample2D, Upsample2D), convs=True)


def unet_targets(unet: Any, *, convs: bool) -> list[str]:
    """The UNet's targets of a network type: kohya's defaults, with `convs` the LoCon blocks too, in model order."""
    targets = set(unet_lora_targets(unet))
    if convs:
        targets |= set(unet_conv_block_targets(unet))
    return [path for path, _ in unet.named_modules() if path in targets]


def text_encoder_lora_targets(text_encoder: Any) -> list[str]:
    """kohya's default text-encoder targets: q/k/v/out_proj of CLIPAttention, fc1/fc2 of CLIPMLP.

    Call it on a text encoder without adapters. 72 modules for SD 1.5's 12 layers.
    """
    from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention

    return _targets_inside(text_encoder, (CLIPAttention, CLIPMLP))


def spatial_conv_targets(model: Any, targets: list[str]) -> list[str]:
    """The targets that are convolutions larger than 1x1 (they take conv_dim / conv_alpha)."""
    modules = dict(model.named_modules())
    return [path for path in targets if is_spatial_conv(modules[path])]


def kohya_module_stems(family: Any, unet: Any, text_encoders: list[Any], *, convs: bool = False) -> list[str]:
    """kohya's key stems for every target of these (adapter-free) models: UNet, then text encoders."""
    stems = [family.kohya_unet_name(path) for path in unet_targets(unet, convs=convs)]
    for index, text_encoder in enumerate(text_encoders):
        stems += [family.kohya_text_encoder_name(index, path) for path in text_encoder_lora_targets(text_encoder)]
    return stems
