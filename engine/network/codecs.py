"""One peft layer <-> its tensors in the LyCORIS / kohya file format, per network type.

The file holds what AUTOMATIC1111 and ComfyUI apply, per module `<stem>`:

    LoRA / LoCon  lora_down.weight, lora_up.weight, alpha       dW = up @ down * alpha / rank
    LoHa          hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b, alpha
                                                      dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank
    LoKr          lokr_w1 | lokr_w1_a + lokr_w1_b, lokr_w2 | lokr_w2_a + lokr_w2_b, alpha
                                                      dW = kron(w1, w2) * (alpha / rank if a factor is
                                                      low-rank, else 1)
    DoRA          dora_scale (out, 1[, 1, 1])         W' = (W + dW) * dora_scale / ||W||  (ComfyUI)

Where peft's scale differs, the tensors are converted on the way out and back:
- LoKr with both factors whole: peft scales by alpha / r, the UIs by 1, so the scale is baked into lokr_w1.
- DoRA: peft computes W' = m * (W + dW) / ||W + dW|| with the norm per output row. ComfyUI detects an
  output-axis `dora_scale` by its shape and divides by the norm of the BASE weight's rows, so the
  file carries dora_scale = m * ||W|| / ||W + dW||, which gives peft's W' exactly in ComfyUI.
  AUTOMATIC1111 always normalises per input column: a DoRA file renders differently there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.network.adapters import ADAPTER

if TYPE_CHECKING:
    import torch

DOWN, UP, ALPHA, DORA_SCALE = "lora_down.weight", "lora_up.weight", "alpha", "dora_scale"
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
SUFFIXES = (DOWN, UP, ALPHA, DORA_SCALE, "lora_mid.weight", *LOHA_KEYS, *LOKR_KEYS)


def kind_of(layer: Any) -> str:
    """"lora", "loha" or "lokr": which peft layer family `layer` is."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    if isinstance(layer, LoHaLayer):
        return "loha"
    if isinstance(layer, LoKrLayer):
        return "lokr"
    return "lora"


def stem_and_suffix(key: str) -> tuple[str, str] | None:
    """(`<stem>`, suffix) of a file key; None for a key of no known suffix."""
    for suffix in SUFFIXES:
        if key.endswith(f".{suffix}"):
            return key.removesuffix(f".{suffix}"), suffix
    return None


# --- to the file -------------------------------------------------------------------------------------


def to_file(layer: Any, adapter: str = ADAPTER) -> dict[str, Any]:
    """suffix -> tensor (the alpha as a Python float) for one layer, converted to what the UIs apply."""
    kind = kind_of(layer)
    if kind == "loha":
        tensors: dict[str, Any] = {key: layer_tensor(layer, key, adapter) for key in LOHA_KEYS if adapter in getattr(layer, key)}
        tensors[ALPHA] = float(layer.alpha[adapter])
        return tensors
    if kind == "lokr":
        return _lokr_to_file(layer, adapter)
    tensors = {DOWN: layer.lora_A[adapter].weight, UP: layer.lora_B[adapter].weight, ALPHA: float(layer.lora_alpha[adapter])}
    if adapter in layer.lora_magnitude_vector:
        tensors[DORA_SCALE] = _comfyui_dora_scale(layer, adapter)
    return tensors


def layer_tensor(layer: Any, key: str, adapter: str) -> torch.Tensor:
    return getattr(layer, key)[adapter]


def lokr_is_whole(layer: Any, adapter: str = ADAPTER) -> bool:
    """Both LoKr factors are whole matrices: the UIs apply them at scale 1 whatever the alpha."""
    return adapter in layer.lokr_w1 and adapter in layer.lokr_w2


def _lokr_to_file(layer: Any, adapter: str) -> dict[str, Any]:
    tensors: dict[str, Any] = {key: layer_tensor(layer, key, adapter) for key in LOKR_KEYS if adapter in getattr(layer, key)}
    if lokr_is_whole(layer, adapter):
        # peft applies alpha / r; the UIs apply 1: bake peft's scale into the small factor, and write
        # alpha = rank as LyCORIS does for a full-matrix LoKr.
        tensors["lokr_w1"] = tensors["lokr_w1"].detach().double() * layer.scaling[adapter]
        tensors[ALPHA] = float(layer.r[adapter])
    else:
        tensors[ALPHA] = float(layer.alpha[adapter])
    return tensors


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1).norm(dim=1)


def _dora_norms(layer: Any, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(||W|| per output row, ||W + dW|| per output row) in float64, dW as peft applies it."""
    import torch

    with torch.no_grad():
        base = layer.get_base_layer().weight.detach().double()
        delta = layer.get_delta_weight(adapter).detach().double().reshape(base.shape)
    return _row_norms(base), _row_norms(base + delta)


def _comfyui_dora_scale(layer: Any, adapter: str) -> torch.Tensor:
    base_norm, merged_norm = _dora_norms(layer, adapter)
    magnitude = layer.lora_magnitude_vector[adapter].weight.detach().double().reshape(-1)
    ndim = layer.get_base_layer().weight.dim()
    return (magnitude * base_norm / merged_norm).reshape(-1, *[1] * (ndim - 1))


# --- from the file -----------------------------------------------------------------------------------


def expected_keys(layer: Any, adapter: str = ADAPTER) -> dict[str, tuple[int, ...]]:
    """suffix -> shape of every tensor the file must hold for this layer (alpha optional, not listed)."""
    return {suffix: tuple(value.shape) for suffix, value in to_file_shapes(layer, adapter).items()}


def to_file_shapes(layer: Any, adapter: str) -> dict[str, Any]:
    kind = kind_of(layer)
    keys = LOHA_KEYS if kind == "loha" else LOKR_KEYS if kind == "lokr" else ()
    shapes = {key: layer_tensor(layer, key, adapter) for key in keys if adapter in getattr(layer, key)}
    if kind == "lora":
        shapes = {DOWN: layer.lora_A[adapter].weight, UP: layer.lora_B[adapter].weight}
        if adapter in layer.lora_magnitude_vector:
            base = layer.get_base_layer().weight
            shapes[DORA_SCALE] = base.new_empty((base.shape[0], *[1] * (base.dim() - 1)))
    return shapes


def file_scale(kind: str, tensors: dict[str, torch.Tensor]) -> float:
    """The scale a UI applies to the product of a layer's file tensors (alpha / rank, or 1)."""
    alpha = tensors.get(ALPHA)
    if kind == "lokr":
        low_rank = "lokr_w2_b" if "lokr_w2_b" in tensors else "lokr_w1_b" if "lokr_w1_b" in tensors else None
        if low_rank is None or alpha is None:
            return 1.0
        return float(alpha) / tensors[low_rank].shape[0]
    rank_source = tensors["hada_w1_b"] if kind == "loha" else tensors[DOWN]
    return 1.0 if alpha is None else float(alpha) / rank_source.shape[0]


def peft_scale(layer: Any, adapter: str = ADAPTER) -> float:
    """The scale peft applies to the same product (alpha / r; 1 for peft's LoRA at weight 1 too)."""
    return float(layer.scaling[adapter])


def from_file(layer: Any, tensors: dict[str, torch.Tensor], adapter: str = ADAPTER) -> None:
    """Copy one layer's file tensors (suffix -> tensor, shapes already checked) into the peft layer,
    converting the UIs' scale to peft's so the layer applies what the file describes."""
    import torch

    kind = kind_of(layer)
    # One factor carries the ratio of the scales: the product, hence dW, is what the file says.
    ratio = file_scale(kind, tensors) / peft_scale(layer, adapter)
    scaled = {"lora": UP, "loha": "hada_w2_a", "lokr": "lokr_w1" if "lokr_w1" in tensors else "lokr_w1_a"}[kind]
    with torch.no_grad():
        for suffix, weight in _destinations(layer, kind, adapter).items():
            value = tensors[suffix].double() * (ratio if suffix == scaled else 1.0)
            weight.copy_(value.to(weight.dtype).reshape(weight.shape))
        if DORA_SCALE in tensors:
            base_norm, merged_norm = _dora_norms(layer, adapter)
            magnitude = tensors[DORA_SCALE].double().reshape(-1) * merged_norm / base_norm
            target = layer.lora_magnitude_vector[adapter].weight
            target.copy_(magnitude.reshape(target.shape).to(target.dtype))


def _destinations(layer: Any, kind: str, adapter: str) -> dict[str, torch.nn.Parameter]:
    if kind == "lora":
        return {DOWN: layer.lora_A[adapter].weight, UP: layer.lora_B[adapter].weight}
    keys = LOHA_KEYS if kind == "loha" else LOKR_KEYS
    return {key: getattr(layer, key)[adapter] for key in keys if adapter in getattr(layer, key)}
