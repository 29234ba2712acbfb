"""The trained network as the file AUTOMATIC1111, ComfyUI and kohya read: kohya's module names
(the model family's naming hooks), LyCORIS' key suffixes per type (engine.network.codecs), one
`.alpha` per module, nothing else (diffusers refuses a kohya file with any other key)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.network.adapters import ADAPTER, adapter_layers, named_layers
from engine.network.codecs import kind_of, to_file

if TYPE_CHECKING:
    import torch

    from engine.families import LoadedModel


def kohya_state_dict(model: LoadedModel, *, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`<stem>.<suffix>` -> tensor for every adapted layer, in model order.

    A plain LoRA gives `<stem>.lora_down.weight` [r, in(, k, k)], `<stem>.lora_up.weight` [out, r(, 1, 1)]
    and `<stem>.alpha` (0-dim); the other types their LyCORIS keys. Every tensor is a contiguous CPU
    copy in `dtype`.
    """
    import torch

    family_tensors = _family_tensors(model, dtype)
    if family_tensors is not None:
        return family_tensors
    tensors: dict[str, torch.Tensor] = {}
    for stem, layer in named_layers(model):
        for suffix, value in to_file(layer).items():
            key = f"{stem}.{suffix}"
            tensors[key] = torch.tensor(value, dtype=dtype) if isinstance(value, float) else _cpu_copy(value, dtype)
    return tensors


def _cpu_copy(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()


def _family_tensors(model: LoadedModel, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """The family's own file layout of a plain LoRA (FLUX.1 fuses q, k and v), or None: one kohya
    module per layer. The hook takes (module path, lora_A, lora_B, alpha) per layer, so it is asked
    only for a plain LoRA; the other types are written per module with the family's names."""
    parts = [model.denoiser, *model.text_encoders]
    layers = [layer for part in parts for _, layer in adapter_layers(part)]
    if any(kind_of(layer) != "lora" or ADAPTER in layer.lora_magnitude_vector for layer in layers):
        return None

    def trained(module: Any) -> list[tuple[str, Any, Any, float]]:
        return [
            (path, layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight, float(layer.lora_alpha[ADAPTER]))
            for path, layer in adapter_layers(module)
        ]

    text_layers = [layer for encoder in model.text_encoders for layer in trained(encoder)]
    return model.family.kohya_tensors(trained(model.denoiser), text_layers, dtype)
