"""Loading and inspecting a base model: which file layout it is (a diffusers folder or a single
file), which family (engine/families/registry.py), and the layout's loader given that family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.families.base import LoadedModel, ModelInfo
from engine.families.diffusers_folder import (
    check_diffusers_folder,
    inspect_diffusers_folder,
    load_diffusers_folder,
)
from engine.families.flux import FluxOptions, inspect_flux, is_flux_model, load_flux_model
from engine.families.registry import FAMILIES, family_from_unet_config
from engine.families.single_file import inspect_single_file, load_single_file, read_checkpoint, read_header
from engine.families.vae import load_vae
from engine.library_logs import silence_known_noise


def load_base_model(
    path: str | Path,
    *,
    prediction: str = "auto",
    tokenizer: str | Path | None = None,
    vae: str | Path | None = None,
    flux: Any = None,
) -> LoadedModel:
    """Load a base model from a diffusers folder or a single .safetensors / .ckpt file, offline;
    with `vae`, that VAE (folder or file, engine/families/vae.py) replaces the model's own.
    A FLUX.1 model (engine/families/flux.py) takes its other files and settings from `flux`
    (a FluxOptions, from `flux_options(answers.model, answers.training)`)."""
    silence_known_noise()
    path = Path(path)
    if is_flux_model(path, flux):
        return load_flux_model(path, flux if flux is not None else FluxOptions(tokenizer=Path(tokenizer) if tokenizer else None))
    if path.is_dir():
        family = family_from_unet_config(check_diffusers_folder(path), path)
        model = load_diffusers_folder(path, family, prediction=prediction)
    else:
        tensors, metadata, architecture = read_checkpoint(path)
        family = FAMILIES[architecture.family]
        tokenizer_dir = Path(tokenizer) if tokenizer else None
        model = load_single_file(path, family, tensors, metadata, architecture, prediction=prediction, tokenizer_dir=tokenizer_dir)
    if vae is not None:
        model.vae = load_vae(Path(vae), model.vae)
        model.notes.append(f"VAE from {vae} (replaces the model's own)")
    return model


def inspect_base_model(path: str | Path, tokenizer: str | Path | None = None, *, flux: Any = None) -> ModelInfo:
    """Family, layout, prediction type and tokenizer of a base model, from headers and configs only.
    A FLUX.1 model's other files come from `flux` (a FluxOptions), as for `load_base_model`."""
    path = Path(path)
    if is_flux_model(path, flux):
        return inspect_flux(path, flux if flux is not None else FluxOptions(tokenizer=Path(tokenizer) if tokenizer else None))
    if path.is_dir():
        return inspect_diffusers_folder(path, family_from_unet_config(check_diffusers_folder(path), path))
    shapes, metadata, architecture = read_header(path)
    family = FAMILIES[architecture.family]
    return inspect_single_file(path, family, shapes, metadata, architecture, Path(tokenizer) if tokenizer else None)
