"""The prediction type (epsilon or v) of a single file, which says it only sometimes: a `v_pred`
marker tensor, its metadata, an AUTOMATIC1111-style .yaml beside it, else AUTOMATIC1111's test of the
UNet itself (SD 2.x; SD 1.x always predicts noise)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

V_WORDS = {"v", "v_prediction", "v-prediction", "vpred", "v_pred"}
EPSILON_WORDS = {"epsilon", "eps"}


def prediction_from_file(path: Path, keys: Any, metadata: dict[str, str]) -> tuple[str, str] | None:
    """(prediction type, reason) when the file or its companion .yaml says which; None when it does not."""
    if "v_pred" in keys:
        return "v_prediction", "the file carries a `v_pred` marker tensor"
    stated = (metadata.get("modelspec.prediction_type") or metadata.get("prediction_type") or "").strip().lower()
    if stated in V_WORDS:
        return "v_prediction", f"its metadata says prediction_type={stated}"
    if stated in EPSILON_WORDS:
        return "epsilon", f"its metadata says prediction_type={stated}"
    architecture = metadata.get("modelspec.architecture", "")
    if architecture.startswith("stable-diffusion-v2"):
        if architecture.endswith("-v"):
            return "v_prediction", f"its metadata says architecture={architecture}"
        return "epsilon", f"its metadata says architecture={architecture}"
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.is_file():  # AUTOMATIC1111's convention: an LDM config beside the model decides
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
        if re.search(r"^\s*parameterization:\s*[\"']?v[\"']?\s*$", text, re.MULTILINE):
            return "v_prediction", f"{yaml_path.name} says parameterization: v"
        return "epsilon", f"{yaml_path.name} sets no v parameterization"
    return None


def unet_predicts_v(unet: Any) -> tuple[bool, float]:
    """AUTOMATIC1111's test for SD 2.x (modules/sd_models_config.py, is_using_v_parameterization_for_sd2).

    At the last timestep a flat grey latent is almost pure noise: an epsilon model returns about the
    input, a v model (v = alpha * noise - sigma * x0) returns something far below it.
    """
    import torch

    latents = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    conditioning = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
    with torch.no_grad():
        output = unet(latents, torch.tensor([999]), encoder_hidden_states=conditioning).sample
    score = (output - latents).mean().item()
    return score < -1, score


def decide_prediction(family: str, requested: str, from_file: tuple[str, str] | None, unet: Any) -> tuple[str, str]:
    if requested in ("epsilon", "v_prediction"):
        return requested, "set in the answers file"
    if requested != "auto":
        raise ValueError(f"prediction must be auto, epsilon or v_prediction, not {requested!r}")
    if from_file is not None:
        return from_file
    if family == "sd1":
        return "epsilon", "SD 1.x models predict noise"
    is_v, score = unet_predicts_v(unet)
    verdict = "below" if is_v else "not below"
    return ("v_prediction" if is_v else "epsilon"), f"AUTOMATIC1111's UNet test: mean(output - input) = {score:.2f}, {verdict} -1"
