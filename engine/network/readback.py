"""A network file back onto a model as a peft adapter of its own type, for making images.

diffusers' `load_lora_weights` reads kohya LoRA files (lora_down / lora_up), but not LoHa (hada_*),
LoKr (lokr_*) or DoRA's dora_scale. Those files are read here: each module's rank and alpha come
from its tensors, peft builds the layers (LoraConfig with use_dora, LoHaConfig, LoKrConfig), and
engine.network.codecs copies the tensors in, undoing the conversions of the export, so the model
applies what ComfyUI applies. Several files load as several adapters; weights go through peft's
`set_scale`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelFileError
from engine.network.adapters import adapter_layers
from engine.network.codecs import ALPHA, DORA_SCALE, DOWN, UP, expected_keys, from_file, stem_and_suffix
from engine.network.init_from import file_network_kind
from engine.network.types import FULL_MATRIX_RANK

if TYPE_CHECKING:
    import torch

    from engine.families import LoadedModel

FIX = "use a network file trained for this model family (SD 1.x files for SD 1.x models, and so on)"


def diffusers_reads(path: Path) -> bool:
    """True for a plain kohya LoRA file (only lora_down / lora_up / alpha keys), which diffusers loads itself."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    suffixes = {found[1] for key in keys if (found := stem_and_suffix(key))}
    return suffixes <= {DOWN, UP, ALPHA}


def load_network_file(model: LoadedModel, path: Path, adapter: str) -> int:
    """Add the file's network to `model` as peft adapter `adapter`; the number of layers loaded.

    A ModelFileError names the file when a module of the file is not in the model or a tensor does
    not fit; the model is then left without the adapter."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    tensors = load_file(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    by_stem: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        found = stem_and_suffix(key)
        if found is None:
            raise ModelFileError(f"key `{key}` is not a LoRA / LyCORIS key", where=path, fix=FIX)
        by_stem.setdefault(found[0], {})[found[1]] = value
    tucker = sorted(key for key in tensors if key.endswith((".lora_mid.weight", ".hada_t1", ".hada_t2", ".lokr_t2")))
    if tucker:
        raise ModelFileError(
            f"this file has Tucker-decomposed convolutions (`{tucker[0]}`), which lora-wizard cannot load",
            where=path,
            fix="make images with it in AUTOMATIC1111 or ComfyUI, which read them",
        )
    kind = file_network_kind(tensors)
    placed = _place_stems(model, by_stem, path)
    try:
        for part, layers in placed.items():
            _inject_part(part, layers, kind, _lokr_factor(metadata, layers) if kind == "lokr" else -1, adapter)
            modules = dict(part.named_modules())
            for module_path, stem_tensors in layers.items():
                _copy_in(modules[module_path], stem_tensors, adapter, path)
    except Exception:
        remove_adapter(model, adapter)
        raise
    return len(by_stem)


def remove_adapter(model: LoadedModel, adapter: str) -> None:
    for part in (model.denoiser, *model.text_encoders):
        for _, layer in list(adapter_layers(part, adapter)):
            layer.delete_adapter(adapter)


def _place_stems(model: LoadedModel, by_stem: dict[str, dict[str, Any]], path: Path) -> dict[Any, dict[str, dict[str, Any]]]:
    """part -> {module path -> that module's file tensors}; every stem must name a module of the model."""
    from torch import nn

    family = model.family
    where: dict[str, tuple[Any, str]] = {}
    for module_path, module in model.denoiser.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            try:
                where[family.kohya_unet_name(module_path)] = (model.denoiser, module_path)
            except KeyError:
                continue
    for index, encoder in enumerate(model.text_encoders):
        for module_path, module in encoder.named_modules():
            if isinstance(module, nn.Linear):
                try:
                    where[family.kohya_text_encoder_name(index, module_path)] = (encoder, module_path)
                except (KeyError, IndexError, ValueError):  # an encoder the family never adapts (FLUX.1's T5)
                    continue
    unknown = sorted(set(by_stem) - set(where))
    if unknown:
        raise ModelFileError(
            f"only {len(by_stem) - len(unknown)} of the {len(by_stem)} layers of this file match the base model "
            f"(`{unknown[0]}` does not); the rest would be ignored",
            where=path,
            fix=FIX,
        )
    placed: dict[Any, dict[str, dict[str, Any]]] = {}
    for stem, stem_tensors in by_stem.items():
        part, module_path = where[stem]
        placed.setdefault(part, {})[module_path] = stem_tensors
    return placed


def _rank_and_alpha(kind: str, tensors: dict[str, Any]) -> tuple[int, float]:
    if kind in ("lora", "dora"):
        rank = tensors[DOWN].shape[0]
    elif kind == "loha":
        rank = tensors["hada_w1_b"].shape[0]
    else:
        low_rank = next((tensors[key].shape[0] for key in ("lokr_w2_b", "lokr_w1_b") if key in tensors), None)
        if low_rank is None:  # whole factors: peft keeps them whole at this rank; scale 1
            return FULL_MATRIX_RANK, float(FULL_MATRIX_RANK)
        rank = low_rank
    alpha = float(tensors[ALPHA].item()) if ALPHA in tensors else float(rank)
    return rank, alpha


def _lokr_factor(metadata: dict[str, str], layers: dict[str, dict[str, Any]]) -> int:
    """LoKr's factor: the lycoris metadata's, else the small factor's side of the first layer
    (-1 when that is the split near the square root, which peft and LyCORIS make alike)."""
    try:
        return int(json.loads(metadata.get("ss_network_args", "{}")).get("factor", ""))
    except (ValueError, TypeError, AttributeError):
        pass
    first = next(iter(layers.values()))
    w1 = first["lokr_w1"] if "lokr_w1" in first else first["lokr_w1_a"]
    return int(w1.shape[0])


def _inject_part(part: Any, layers: dict[str, dict[str, Any]], kind: str, factor: int, adapter: str) -> None:
    from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model

    ranks = {module_path: _rank_and_alpha(kind, tensors) for module_path, tensors in layers.items()}
    targets = list(layers)
    patterns = {
        "rank_pattern": {module_path: rank for module_path, (rank, _) in ranks.items()},
        "alpha_pattern": {module_path: alpha for module_path, (_, alpha) in ranks.items()},
    }
    rank, alpha = next(iter(ranks.values()))
    if kind in ("lora", "dora"):
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, use_dora=kind == "dora", **patterns)
    elif kind == "loha":
        config = LoHaConfig(r=rank, alpha=alpha, target_modules=targets, **patterns)
    else:
        both = any("lokr_w1_a" in tensors for tensors in layers.values())
        config = LoKrConfig(r=rank, alpha=alpha, target_modules=targets, decompose_factor=factor, decompose_both=both, **patterns)
    inject_adapter_in_model(config, part, adapter_name=adapter)


def _copy_in(layer: Any, tensors: dict[str, Any], adapter: str, path: Path) -> None:
    for suffix, shape in expected_keys(layer, adapter).items():
        if suffix not in tensors or tuple(tensors[suffix].shape) != shape:
            found = list(tensors[suffix].shape) if suffix in tensors else "nothing"
            raise ModelFileError(
                f"this file's layer does not fit the base model: `{suffix}` is {found}, the layer needs {list(shape)}",
                where=path,
                fix=FIX,
            )
    values = {suffix: value for suffix, value in tensors.items() if suffix != ALPHA}
    if ALPHA in tensors:
        values[ALPHA] = float(tensors[ALPHA].item())
    if DORA_SCALE in values:
        values[DORA_SCALE] = values[DORA_SCALE].float()
    from_file(layer, values, adapter)
