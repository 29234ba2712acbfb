"""Starting from an existing network file (`[network] init_from`), of the same type as the run.

Whole parts, as kohya's --network_weights: the UNet and each text encoder is loaded from the file
entirely or not at all. The file's tensors go through engine.network.codecs, so a file trained with
another alpha (or baked for the UIs: full-matrix LoKr, DoRA) gives the layers exactly its effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelFileError
from engine.network.adapters import adapter_layers
from engine.network.codecs import DORA_SCALE, DOWN, UP, expected_keys, from_file, kind_of, stem_and_suffix
from engine.network.targets import text_encoder_lora_targets

if TYPE_CHECKING:
    import torch

    from engine.families import LoadedModel

@dataclass(eq=False)
class LoraPart:
    """One part of the model as a LoRA file names it: the UNet or one text encoder."""

    label: str  # for people: "the UNet (`lora_unet_*`)"
    stems: frozenset[str]  # kohya's stems of every default target of the part
    layers: dict[str, Any]  # stem -> LoRA layer, in model order; empty when this run does not adapt the part

    @property
    def adapted(self) -> bool:
        return bool(self.layers)


@dataclass(frozen=True)
class InitFromResult:
    """What `load_lora_file_into` did with each part of the model (labels of `LoraPart`s)."""

    loaded: tuple[str, ...]  # parts whose LoRA layers now hold the file's weights
    kept_fresh: tuple[str, ...]  # trained parts the file has nothing for: they keep their fresh initialisation
    ignored: tuple[str, ...]  # parts the file has but this run does not adapt (`train_text_encoder = false`)

    @property
    def notes(self) -> list[str]:
        """One line per way the file and the run differ, for the user; empty when the file fits exactly."""
        notes = []
        if self.kept_fresh:
            notes.append(
                f"the `[network] init_from` file has no layers for {_and_list(self.kept_fresh)}: "
                "those LoRA layers start fresh, as in a new run"
            )
        if self.ignored:
            notes.append(
                f"the `[network] init_from` file's layers for {_and_list(self.ignored)} are ignored: "
                "this run does not train the text encoders (`[network] train_text_encoder = false`)"
            )
        return notes


def _and_list(labels: tuple[str, ...]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def lora_parts(model: LoadedModel) -> list[LoraPart]:
    """The UNet and each text encoder, with kohya's stems of all their default targets and their LoRA layers."""
    family = model.family
    unet_layers = {family.kohya_unet_name(path): layer for path, layer in adapter_layers(model.denoiser)}
    parts = [LoraPart("the UNet (`lora_unet_*`)", frozenset(unet_layers), unet_layers)]
    several = len(model.text_encoders) > 1
    for index, text_encoder in enumerate(model.text_encoders):
        layers = {family.kohya_text_encoder_name(index, path): layer for path, layer in adapter_layers(text_encoder)}
        stems = frozenset(layers)
        if not layers:  # a text encoder without LoRA still names its targets: a file's keys for it are known
            stems = frozenset(family.kohya_text_encoder_name(index, path) for path in text_encoder_lora_targets(text_encoder))
        name = f"text encoder {index + 1}" if several else "the text encoder"
        parts.append(LoraPart(f"{name} (`{family.text_encoder_prefixes[index]}_*`)", stems, layers))
    return parts


def load_lora_file_into(model: LoadedModel, path: Path) -> InitFromResult:
    """Copy a network file into the adapter `add_network` injected (for `[network] init_from`).

    For the UNet and each text encoder, the file holds either all of that part's layers (every
    tensor of the type; alpha optional) or none. A part the run trains that the file lacks keeps its
    fresh initialisation; a text encoder the run does not adapt (`train_text_encoder = false`) has
    its file keys ignored. The result says which parts were loaded, kept fresh or ignored.

    A ModelFileError names the file and the first key that does not fit when: the file is of another
    network type, a key names no layer of this model, a part is partly present, a layer has another
    rank or shape, or the file has nothing for the parts the run trains. A file trained with another
    alpha keeps its effect; a file without alpha keys counts as alpha = rank, as the web UIs read it.
    """
    import torch

    path = Path(path)
    file_tensors = _read_lora_file(path)
    parts = lora_parts(model)
    in_file = _parts_in_file(path, file_tensors, parts, model.family.label)
    loaded = [part for part in in_file if part.adapted]
    if loaded:
        _check_same_type(path, file_tensors, next(iter(loaded[0].layers.values())))
    for part in loaded:
        _check_whole_part(path, file_tensors, part)
    if not loaded:
        raise _nothing_to_load(path, parts, in_file)
    # Check every layer before changing any, so a bad file leaves the adapter as it was.
    layer_tensors = [
        (layer, _file_tensors_of(path, file_tensors, stem, layer)) for part in loaded for stem, layer in part.layers.items()
    ]
    with torch.no_grad():
        for layer, tensors in layer_tensors:
            from_file(layer, tensors)
    return InitFromResult(
        loaded=tuple(part.label for part in loaded),
        kept_fresh=tuple(part.label for part in parts if part.adapted and part not in in_file),
        ignored=tuple(part.label for part in in_file if not part.adapted),
    )


TYPE_NAMES = {"lora": "LoRA / LoCon", "dora": "LoRA / LoCon with DoRA", "loha": "LoHa", "lokr": "LoKr"}


def file_network_kind(file_tensors: dict[str, Any]) -> str:
    """"lora", "dora", "loha" or "lokr", from the file's key suffixes."""
    suffixes = {found[1] for key in file_tensors if (found := stem_and_suffix(key))}
    if any(suffix.startswith("hada_") for suffix in suffixes):
        return "loha"
    if any(suffix.startswith("lokr_") for suffix in suffixes):
        return "lokr"
    return "dora" if DORA_SCALE in suffixes else "lora"


def _layer_network_kind(layer: Any) -> str:
    kind = kind_of(layer)
    return "dora" if kind == "lora" and layer.lora_magnitude_vector else kind


def _check_same_type(path: Path, file_tensors: dict[str, Any], layer: Any) -> None:
    file_kind, run_kind = file_network_kind(file_tensors), _layer_network_kind(layer)
    if file_kind != run_kind:
        raise ModelFileError(
            f"this file holds a {TYPE_NAMES[file_kind]} network; this run trains a {TYPE_NAMES[run_kind]} one",
            where=path,
            fix="start from a file of the type this run trains (set `[network] type` / `dora` to the file's), "
            "or remove `[network] init_from`",
        )


def _file_tensors_of(path: Path, file_tensors: dict[str, torch.Tensor], stem: str, layer: Any) -> dict[str, torch.Tensor]:
    """suffix -> tensor of one layer from the file, each shape-checked against the layer."""
    tensors = {suffix: _fitting_tensor(path, file_tensors, f"{stem}.{suffix}", shape) for suffix, shape in expected_keys(layer).items()}
    if f"{stem}.alpha" in file_tensors:
        tensors["alpha"] = file_tensors[f"{stem}.alpha"].item()
    return tensors


def _read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    fix = "give a LoRA .safetensors file written by lora-wizard or kohya sd-scripts, or remove `[network] init_from`"
    if not path.is_file():
        raise ModelFileError("no LoRA file here", where=path, fix=fix)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read this LoRA file: {exc}", where=path, fix=fix) from None


NOT_THIS_MODEL_FIX = "start from a LoRA trained on this model family with kohya's default LoRA layers, or remove `[network] init_from`"


def _stem_of(key: str) -> str | None:
    """The layer stem of a network file key (`<stem>.lora_down.weight`, `<stem>.hada_w1_a`, ...); None for any other key."""
    found = stem_and_suffix(key)
    return found[0] if found else None


def _parts_in_file(path: Path, file_tensors: dict[str, torch.Tensor], parts: list[LoraPart], family_label: str) -> list[LoraPart]:
    """The parts the file has keys for, in model order; a key naming no LoRA layer of any part is an error."""
    stems_in_file = {_stem_of(key) for key in file_tensors}
    known_stems = frozenset().union(*(part.stems for part in parts))
    unexpected = sorted(key for key in file_tensors if _stem_of(key) not in known_stems)
    if unexpected:
        raise ModelFileError(
            f"this LoRA does not fit the model: key `{unexpected[0]}` names no LoRA layer of this {family_label} model "
            f"({len(unexpected)} such keys)",
            where=path,
            fix=NOT_THIS_MODEL_FIX,
        )
    return [part for part in parts if part.stems & stems_in_file]


def _check_whole_part(path: Path, file_tensors: dict[str, torch.Tensor], part: LoraPart) -> None:
    """A part the file has keys for has the down and up weights of every one of its layers."""
    expected = {f"{stem}.{suffix}" for stem, layer in part.layers.items() for suffix in expected_keys(layer)}
    missing = sorted(expected - set(file_tensors))
    if missing:
        raise ModelFileError(
            f"this LoRA does not fit the model: it has layers for {part.label} but key `{missing[0]}` is missing "
            f"({len(missing)} missing keys; a part is loaded whole or not at all)",
            where=path,
            fix=NOT_THIS_MODEL_FIX,
        )


def _nothing_to_load(path: Path, parts: list[LoraPart], in_file: list[LoraPart]) -> ModelFileError:
    """The error for a file with no layers of any part this run trains."""
    trained = _and_list(tuple(part.label for part in parts if part.adapted))
    if not in_file:
        return ModelFileError(
            f"this LoRA holds no LoRA layers, nothing to start {trained} from",
            where=path,
            fix="give a LoRA .safetensors file written by lora-wizard or kohya sd-scripts, or remove `[network] init_from`",
        )
    return ModelFileError(
        f"this LoRA has layers only for {_and_list(tuple(part.label for part in in_file))}, "
        f"none for what this run trains: {trained}",
        where=path,
        fix="set `[network] train_text_encoder = true` to train the parts it has, "
        "start from a LoRA with UNet layers, or remove `[network] init_from`",
    )


def _fitting_tensor(path: Path, file_tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...]) -> torch.Tensor:
    tensor = file_tensors[key]
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    rank_axis = 1 if key.endswith(UP) else 0
    if key.endswith((DOWN, UP)) and tensor.ndim == len(shape) and tensor.shape[rank_axis] != shape[rank_axis]:
        raise ModelFileError(
            f"this LoRA has rank {tensor.shape[rank_axis]} but `[network] dim` is {shape[rank_axis]} "
            f"(first differing key `{key}`)",
            where=path,
            fix=f"set `[network] dim = {tensor.shape[rank_axis]}` to continue from this file, or remove `[network] init_from`",
        )
    raise ModelFileError(
        f"this LoRA does not fit the model: key `{key}` has shape {list(tensor.shape)}, the model needs {list(shape)}",
        where=path,
        fix="start from a file trained on this base model family with the same `[network]` settings "
        "(dim, conv_dim, factor, full_matrix), or remove `[network] init_from`",
    )
