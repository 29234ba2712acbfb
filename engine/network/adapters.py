"""Putting a network on a base model with peft's layers, and reading its trainable weights back.

peft's own layers do the work: LoraConfig (use_dora for DoRA) for lora and locon, LoHaConfig for
loha, LoKrConfig for lokr, injected on the targets of engine.network.targets. Each type starts
out as the base model (peft zeroes one factor), so step 0 is the base model's output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.network.targets import spatial_conv_targets, text_encoder_lora_targets, unet_targets
from engine.network.types import CONV_TYPES, FULL_MATRIX_RANK

if TYPE_CHECKING:
    import torch

    from engine.families import LoadedModel

ADAPTER = "default"  # peft's adapter name; a model carries one network while it trains


@dataclass(frozen=True)
class NetworkSpec:
    """What `add_network` builds: the `[network]` settings with every default filled in."""

    type: str = "lora"
    dim: int = 8
    alpha: float = 8.0
    dora: bool = False
    conv_dim: int = 8
    conv_alpha: float = 8.0
    factor: int = -1
    full_matrix: bool = False
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0

    @classmethod
    def from_section(cls, network: Any) -> NetworkSpec:
        """From the answers' `[network]` section (engine.config.NetworkSection)."""
        return cls(
            type=network.type, dim=network.dim, alpha=network.effective_alpha, dora=network.dora,
            conv_dim=network.effective_conv_dim, conv_alpha=network.effective_conv_alpha,
            factor=-1 if network.factor is None else network.factor, full_matrix=bool(network.full_matrix),
            dropout=network.dropout or 0.0, rank_dropout=network.rank_dropout or 0.0,
            module_dropout=network.module_dropout or 0.0,
        )

    @property
    def covers_convs(self) -> bool:
        return self.type in CONV_TYPES


def add_network(model: LoadedModel, spec: NetworkSpec, *, train_text_encoder: bool) -> None:
    """Freeze every base weight, then add the network on its targets: the UNet always, each text
    encoder only when `train_text_encoder`. The new weights are float32 whatever the base's dtype."""
    for part in (model.denoiser, model.vae, *model.text_encoders):
        part.requires_grad_(False)
    targets = model.family.lora_targets(model.denoiser)  # the family's, or None: kohya's UNet targets
    inject(model.denoiser, unet_targets(model.denoiser, convs=spec.covers_convs) if targets is None else targets, spec)
    if train_text_encoder:
        for text_encoder in model.family.trainable_text_encoders(model):
            inject(text_encoder, text_encoder_lora_targets(text_encoder), spec)
    network_parameters(model)  # makes sure the new weights are float32 whatever the base's dtype


def add_lora(model: LoadedModel, *, dim: int, alpha: float, train_text_encoder: bool) -> None:
    """A plain LoRA (rank `dim`, `alpha`) on kohya's default targets; lora_B starts at zero as in kohya."""
    add_network(model, NetworkSpec(dim=dim, alpha=alpha), train_text_encoder=train_text_encoder)


def inject(module: Any, targets: list[str], spec: NetworkSpec, *, adapter: str = ADAPTER) -> None:
    from peft import inject_adapter_in_model

    # peft directly, not the models' add_adapter: transformers 5's add_adapter refuses peft < 0.22.
    inject_adapter_in_model(peft_config(spec, targets, spatial_conv_targets(module, targets)), module, adapter_name=adapter)


def peft_config(spec: NetworkSpec, targets: list[str], conv_targets: list[str]) -> Any:
    """peft's configuration of one network type; the 3x3 convolutions take conv_dim / conv_alpha."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    rank, alpha, conv_rank, conv_alpha = spec.dim, spec.alpha, spec.conv_dim, spec.conv_alpha
    if spec.type == "lokr" and spec.full_matrix:
        # Whole factors have no rank: a rank this large makes peft keep them whole, at scale 1.
        rank = alpha = conv_rank = conv_alpha = FULL_MATRIX_RANK
    patterns: dict[str, Any] = {}
    if conv_targets:
        patterns = {"rank_pattern": dict.fromkeys(conv_targets, conv_rank), "alpha_pattern": dict.fromkeys(conv_targets, conv_alpha)}
    if spec.type in ("lora", "locon"):
        extra = {"use_dora": True} if spec.dora else {}
        if spec.dropout:
            extra["lora_dropout"] = spec.dropout
        return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True, **patterns, **extra)
    lycoris = {"rank_dropout": spec.rank_dropout, "module_dropout": spec.module_dropout, "init_weights": True}
    if spec.type == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=targets, **patterns, **lycoris)
    return LoKrConfig(r=rank, alpha=alpha, target_modules=targets, decompose_factor=spec.factor, **patterns, **lycoris)


# --- the layers and their weights -------------------------------------------------------------------


def adapter_layers(module: Any, adapter: str = ADAPTER) -> Iterator[tuple[str, Any]]:
    """(path, peft layer) for every layer carrying `adapter`, in model order (any network type)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for path, layer in module.named_modules():
        if isinstance(layer, BaseTunerLayer) and adapter in getattr(layer, "r", {}):
            yield path, layer


def layer_weights(layer: Any, adapter: str = ADAPTER) -> list[torch.nn.Parameter]:
    """A layer's trainable weights of `adapter` in peft's order (LoRA: lora_A, lora_B, then DoRA's magnitude)."""
    weights = []
    for name, weight in layer.named_parameters():
        parts = name.split(".")
        if parts[0] != "base_layer" and adapter in parts:
            weights.append(weight)
    return weights


def _weights(module: Any) -> list[torch.nn.Parameter]:
    return [weight for _, layer in adapter_layers(module) for weight in layer_weights(layer)]


def _keep_float32(weights: list[torch.nn.Parameter]) -> None:
    """Bring network weights back to float32 in place (same Parameter objects), e.g. after `unet.half()`."""
    import torch

    for weight in weights:
        if weight.dtype != torch.float32:
            weight.data = weight.data.float()


def network_parameters(model: LoadedModel) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(UNet network weights, text-encoder network weights), per layer in peft's order, in model order.

    They are always float32: if the base was cast to half after `add_network` (which casts the adapter
    with it), the weights are brought back to float32 here, keeping the same Parameter objects. Call
    it after casting and before building the optimizer. The text-encoder list is empty when the text
    encoders carry no network.
    """
    unet_weights = _weights(model.denoiser)
    text_weights = [weight for text_encoder in model.text_encoders for weight in _weights(text_encoder)]
    _keep_float32(unet_weights + text_weights)
    return unet_weights, text_weights


lora_parameters = network_parameters  # the name callers knew when only LoRA existed


def text_encoder_parameters(model: LoadedModel) -> list[list[torch.nn.Parameter]]:
    """The network weights of each text encoder (SDXL has two, trained with their own learning rates)."""
    return [_weights(text_encoder) for text_encoder in model.text_encoders]


def named_layers(model: LoadedModel, adapter: str = ADAPTER) -> Iterator[tuple[str, Any]]:
    """(kohya stem, peft layer) for every adapted layer: UNet first, then each text encoder.

    The family names the modules (its kohya_unet_name / kohya_text_encoder_name hooks)."""
    family = model.family
    for path, layer in adapter_layers(model.denoiser, adapter):
        yield family.kohya_unet_name(path), layer
    for index, text_encoder in enumerate(model.text_encoders):
        for path, layer in adapter_layers(text_encoder, adapter):
            yield family.kohya_text_encoder_name(index, path), layer
