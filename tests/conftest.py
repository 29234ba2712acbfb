"""Shared fixtures: a tiny SD 1.x model and a kohya-style dataset, built once per session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny SD 1.x-shaped diffusers folder (random weights, real on-disk format)."""
    from engine.tiny import build_tiny_sd1_pipeline

    return build_tiny_sd1_pipeline(tmp_path_factory.mktemp("tiny-sd1") / "model")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(train root, reg root) in kohya's layout: `10_usu bear/` x4 images, `1_bear/` x8 images."""
    from engine.tiny import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("dataset"), size=64)


def write_answers(folder: Path, model: Path, train: Path, reg: Path | None = None, **sections) -> Path:
    """An answers file for the tiny model; `sections` override keys, e.g. training={"max_steps": 4};
    a None value removes the key (its default applies)."""
    import tomli_w

    data = {
        "model": {"path": str(model)},
        "dataset": {"train_dir": str(train), "resolution": 64},
        "network": {"dim": 4, "alpha": 4},
        "training": {"max_steps": 6, "batch_size": 2, "unet_lr": 1e-3, "text_encoder_lr": 1e-3, "log_every_steps": 2},
        "output": {"dir": str(folder / "output"), "name": "tiny"},
    }
    if reg is not None:
        data["dataset"]["reg_dir"] = str(reg)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
        data[section] = {k: v for k, v in data[section].items() if v is not None}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "answers.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path
