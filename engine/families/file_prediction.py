"""The prediction type (epsilon or v) of a single file, which says it only sometimes: a `v_pred`
marker tensor, its metadata, an AUTOMATIC1111-style .yaml beside it, else AUTOMATIC1111's test of the
UNet itself (SD 2.x; SD 1.x always predicts noise)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.messages import Message

V_WORDS = {"v", "v_prediction", "v-prediction", "vpred", "v_pred"}
EPSILON_WORDS = {"epsilon", "eps"}
SD1_PREDICTS_NOISE = Message("model.prediction.sd1", "SD 1.x models predict noise")


def prediction_from_file(path: Path, keys: Any, metadata: dict[str, str]) -> tuple[str, str] | None:
    """(prediction type, reason) when the file or its companion .yaml says which; None when it does not."""
    if "v_pred" in keys:
        return "v_prediction", Message("model.prediction.v_pred_tensor", "the file carries a `v_pred` marker tensor")
    stated = (metadata.get("modelspec.prediction_type") or metadata.get("prediction_type") or "").strip().lower()
    if stated in V_WORDS or stated in EPSILON_WORDS:
        said = Message("model.prediction.metadata", "its metadata says {setting}", setting=f"prediction_type={stated}")
        return ("v_prediction" if stated in V_WORDS else "epsilon"), said
    architecture = metadata.get("modelspec.architecture", "")
    if architecture.startswith("stable-diffusion-v2"):
        said = Message("model.prediction.metadata", "its metadata says {setting}", setting=f"architecture={architecture}")
        return ("v_prediction" if architecture.endswith("-v") else "epsilon"), said
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.is_file():  # AUTOMATIC1111's convention: an LDM config beside the model decides
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
        if re.search(r"^\s*parameterization:\s*[\"']?v[\"']?\s*$", text, re.MULTILINE):
            return "v_prediction", Message("model.prediction.yaml_v", "{file} says parameterization: v", file=yaml_path.name)
        return "epsilon", Message("model.prediction.yaml_epsilon", "{file} sets no v parameterization", file=yaml_path.name)
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
        return requested, Message("model.prediction.answers", "set in the answers file")
    if requested != "auto":
        raise ValueError(f"prediction must be auto, epsilon or v_prediction, not {requested!r}")
    if from_file is not None:
        return from_file
    if family == "sd1":
        return "epsilon", SD1_PREDICTS_NOISE
    is_v, score = unet_predicts_v(unet)
    if is_v:
        return "v_prediction", Message("model.prediction.unet_test_v", "AUTOMATIC1111's UNet test: mean(output - input) = {score}, below -1", score=f"{score:.2f}")
    return "epsilon", Message("model.prediction.unet_test_epsilon", "AUTOMATIC1111's UNet test: mean(output - input) = {score}, not below -1", score=f"{score:.2f}")
