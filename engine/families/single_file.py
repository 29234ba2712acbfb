"""Single-file Stable Diffusion checkpoints (.safetensors / .ckpt in the original CompVis/LDM layout).

These are the files AUTOMATIC1111 users keep in `models/Stable-diffusion`. Loading them needs no
network, and each job has its module:

- checkpoint_files.py reads the file safely (a .ckpt is unpickled with `weights_only=True`);
- ldm_config.py derives the family and the exact architecture from the tensor names and shapes,
  with the published configs (templates.py) as templates; sdxl_file.py does SDXL's parts;
- ldm_models.py builds the models with diffusers' own converters and loads them strictly;
- file_prediction.py decides epsilon or v; tokenizers.py finds the tokenizer the file lacks.

This module puts them together: reading a file's architecture, loading it for the family that
engine/families/loading.py looked up, and inspecting it cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.families.base import LoadedModel, ModelFamily, ModelInfo
from engine.families.checkpoint_files import (
    check_single_file_path,
    read_pickle_checkpoint,
    read_safetensors,
    read_safetensors_shapes,
    single_file_note,
)
from engine.families.file_prediction import SD1_PREDICTS_NOISE, decide_prediction, prediction_from_file
from engine.families.ldm_config import (
    Architecture,
    derive_sd_architecture,
    detect_family,
    is_model_tensor,
    normalize_ldm_keys,
)
from engine.families.ldm_models import build_text_encoder, build_unet, build_vae
from engine.families.objectives import NoisePrediction
from engine.families.sdxl_file import derive_sdxl_architecture, inspect_sdxl_file, load_sdxl_single_file
from engine.families.templates import template_scheduler
from engine.families.tokenizers import find_tokenizer, load_tokenizer, missing_tokenizer_error
from engine.messages import Message

Shapes = dict[str, tuple[int, ...]]


def derive_architecture(shapes: Shapes, path: Path) -> Architecture:
    """What the file holds: its family (a ModelFileError for anything else) and its models' configs."""
    family = detect_family(shapes, path)
    if family == "sdxl":
        return derive_sdxl_architecture(shapes, path)
    return derive_sd_architecture(shapes, family, path)


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, str], Architecture]:
    """Model tensors (LDM names), safetensors metadata and architecture of a single-file model.

    A .safetensors file is checked from its header before any weight is read.
    """
    check_single_file_path(path)
    if path.suffix.lower() == ".safetensors":
        shapes, metadata = read_safetensors_shapes(path)
        architecture = derive_architecture(normalize_ldm_keys(dict(shapes)), path)
        tensors = read_safetensors(path, [key for key in shapes if is_model_tensor(key)])
    else:
        loaded, metadata = read_pickle_checkpoint(path, mmap=True), {}
        architecture = derive_architecture(normalize_ldm_keys({key: tuple(value.shape) for key, value in loaded.items()}), path)
        tensors = {key: value for key, value in loaded.items() if is_model_tensor(key)}
    return normalize_ldm_keys(tensors), metadata, architecture


def read_header(path: Path) -> tuple[Shapes, dict[str, str], Architecture]:
    """Tensor shapes (LDM names), metadata and architecture, without reading the weights."""
    check_single_file_path(path)
    if path.suffix.lower() == ".safetensors":
        shapes, metadata = read_safetensors_shapes(path)
    else:  # memory-mapped: the tensors are not read, only their shapes
        shapes, metadata = {key: tuple(value.shape) for key, value in read_pickle_checkpoint(path, mmap=True).items()}, {}
    shapes = normalize_ldm_keys(shapes)
    return shapes, metadata, derive_architecture(shapes, path)


def load_single_file(
    path: Path,
    family: ModelFamily,
    tensors: dict[str, Any],
    metadata: dict[str, str],
    architecture: Architecture,
    *,
    prediction: str = "auto",
    tokenizer_dir: Path | None = None,
) -> LoadedModel:
    """The models of a file of `family` from what `read_checkpoint` read of it, ready to train."""
    if architecture.family == "sdxl":
        return load_sdxl_single_file(path, family, tensors, metadata, architecture, prediction=prediction, tokenizer_dir=tokenizer_dir)
    search = find_tokenizer(path, architecture.family, tokenizer_dir)
    if search.folder is None:
        raise missing_tokenizer_error(path, architecture.family, search)

    unet = build_unet(architecture.unet, tensors, path)
    vae = build_vae(architecture.vae, tensors, path)
    text_encoder = build_text_encoder(architecture.family, architecture.text_encoder, tensors, path)
    tokenizer = load_tokenizer(search.folder, architecture.text_encoder["vocab_size"], path)
    file_note = single_file_note(family.label, path, tensors)
    from_file = prediction_from_file(path, tensors.keys(), metadata)

    prediction_type, reason = decide_prediction(architecture.family, prediction, from_file, unet)
    notes = [file_note, f"{prediction_type} prediction: {reason}", f"tokenizer from {search.folder}"]
    return LoadedModel(
        family=family,
        denoiser=unet,
        vae=vae,
        text_encoders=[text_encoder],
        tokenizers=[tokenizer],
        objective=NoisePrediction(template_scheduler(architecture.family, prediction_type), prediction_type),
        source=path,
        notes=notes,
    )


def inspect_single_file(
    path: Path, family: ModelFamily, shapes: Shapes, metadata: dict[str, str], architecture: Architecture, tokenizer: Path | None = None
) -> ModelInfo:
    """What a file of `family` is, from what `read_header` read of it: no weights are read.

    Its tokenizer is looked up as loading would (and, online, fetched once into the Hugging Face
    cache: a few small files), so a plan that passes here does not fail later for want of one."""
    if architecture.family == "sdxl":
        return inspect_sdxl_file(path, family, shapes, metadata, tokenizer)
    from_file = prediction_from_file(path, shapes.keys(), metadata)
    if from_file is not None:
        prediction, reason = from_file
    elif architecture.family == "sd1":
        prediction, reason = "epsilon", SD1_PREDICTS_NOISE
    else:
        prediction, reason = "unknown", Message("model.prediction.when_loading", "decided when loading, by AUTOMATIC1111's UNet test")
    search = find_tokenizer(path, architecture.family, tokenizer)
    tokenizer_note = search.looked[-1] if search.folder else "not found; looked in: " + "; ".join(search.looked)
    return ModelInfo(
        family=family.name,
        label=family.label,
        layout="single file",
        prediction=prediction,
        prediction_reason=reason,
        tokenizer=search.folder,
        tokenizer_note=tokenizer_note,
        source=path,
    )
