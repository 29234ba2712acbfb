"""The embedded demo: a tiny model, a small kohya-style dataset and an answers file, offline."""

from __future__ import annotations

from pathlib import Path

from engine.config import Answers, save_answers
from engine.tiny import build_tiny_sd1_pipeline, write_synthetic_dataset

DEMO_RESOLUTION = 64


def demo_answers(folder: Path) -> Answers:
    """Answers for the demo folder: relative paths, so the folder can be moved."""
    return Answers.model_validate(
        {
            "model": {"path": "model"},
            "dataset": {"train_dir": "train", "reg_dir": "reg", "resolution": DEMO_RESOLUTION},
            "network": {"dim": 4, "alpha": 4},
            "training": {"epochs": 2, "batch_size": 2, "unet_lr": 1e-3, "text_encoder_lr": 5e-4, "log_every_steps": 5},
            "output": {"dir": "output", "name": "usu_bear"},
        }
    )


def create_demo(folder: Path, *, overwrite: bool = False) -> Path:
    """Build the demo in `folder` and return its answers file."""
    folder = Path(folder)
    answers_path = folder / "answers.toml"
    if answers_path.exists() and not overwrite:
        return answers_path
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model" / "model_index.json").exists():
        build_tiny_sd1_pipeline(folder / "model")
    if not (folder / "train").exists():
        write_synthetic_dataset(folder, size=DEMO_RESOLUTION)
    save_answers(demo_answers(folder), answers_path, overwrite=True)
    return answers_path
