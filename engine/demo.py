"""The embedded demo: a tiny model, a small kohya-style dataset and an answers file, offline.

`sdxl=True` builds the tiny SDXL-shaped model instead of the SD 1.x one, trained as kohya recommends
for SDXL: the UNet only, the text encoders' outputs cached.
"""

from __future__ import annotations

from pathlib import Path

from engine.config import Answers, save_answers
from engine.errors import UserError
from engine.library_logs import silence_known_noise
from engine.tiny import build_tiny_sd1_pipeline, build_tiny_sdxl_pipeline, write_synthetic_dataset

DEMO_RESOLUTION = 64


def demo_answers(folder: Path, *, sdxl: bool = False) -> Answers:
    """Answers for the demo folder: relative paths, so the folder can be moved."""
    return Answers.model_validate(
        {
            "model": {"path": "model"},
            "dataset": {"train_dir": "train", "reg_dir": "reg", "resolution": DEMO_RESOLUTION},
            "network": {"dim": 4, "alpha": 4, "train_text_encoder": not sdxl},
            "training": {"epochs": 2, "batch_size": 2, "unet_lr": 1e-3, "text_encoder_lr": 5e-4, "log_every_steps": 5},
            "output": {"dir": "output", "name": "usu_bear_sdxl" if sdxl else "usu_bear"},
        }
    )


def create_demo(folder: Path, *, overwrite: bool = False, sdxl: bool = False) -> Path:
    """Build the demo in `folder` and return its answers file."""
    folder = Path(folder)
    answers_path = folder / "answers.toml"
    model = folder / "model"
    if (model / "model_index.json").exists() and (model / "text_encoder_2").is_dir() != sdxl:
        kind, other = ("SD 1.x", "SDXL") if sdxl else ("SDXL", "SD 1.x")
        raise UserError(
            f"this folder holds the {kind} demo, not the {other} one",
            where=folder,
            fix=f"give another folder for the {other} demo",
        )
    if answers_path.exists() and not overwrite:
        return answers_path
    folder.mkdir(parents=True, exist_ok=True)
    if not (model / "model_index.json").exists():
        silence_known_noise()
        (build_tiny_sdxl_pipeline if sdxl else build_tiny_sd1_pipeline)(model)
    if not (folder / "train").exists():
        write_synthetic_dataset(folder, size=DEMO_RESOLUTION)
    save_answers(demo_answers(folder, sdxl=sdxl), answers_path, overwrite=True)
    return answers_path
