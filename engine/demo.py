"""The embedded demo: a tiny model, a small kohya-style dataset and an answers file, offline.

`sdxl=True` builds the tiny SDXL-shaped model instead of the SD 1.x one, trained as kohya recommends
for SDXL: the UNet only, the text encoders' outputs cached. `flux=True` builds a tiny FLUX.1 dev model
in kohya's four single files (engine/tiny_flux.py), trained as kohya trains FLUX.1: the transformer
only, CLIP-L and T5 outputs cached, `shift` timestep sampling.
"""

from __future__ import annotations

from pathlib import Path

from engine.config import Answers, save_answers
from engine.errors import UserError
from engine.library_logs import silence_known_noise
from engine.tiny import build_tiny_sd1_pipeline, write_synthetic_dataset
from engine.tiny_sdxl import build_tiny_sdxl_pipeline

DEMO_RESOLUTION = 64


FLUX_DEMO_FILES = {"path": "model/flux1-dev.safetensors", "ae": "model/ae.safetensors", "clip_l": "model/clip_l.safetensors", "t5xxl": "model/t5xxl_fp16.safetensors"}


def demo_answers(folder: Path, *, sdxl: bool = False, flux: bool = False) -> Answers:
    """Answers for the demo folder: relative paths, so the folder can be moved."""
    if flux:
        return Answers.model_validate(
            {
                "model": FLUX_DEMO_FILES,
                "dataset": {"train_dir": "train", "reg_dir": "reg", "resolution": DEMO_RESOLUTION},
                "network": {"dim": 4, "alpha": 4, "train_text_encoder": False},
                "training": {"epochs": 2, "batch_size": 2, "unet_lr": 1e-3, "log_every_steps": 5},
                "output": {"dir": "output", "name": "usu_bear_flux"},
            }
        )
    return Answers.model_validate(
        {
            "model": {"path": "model"},
            "dataset": {"train_dir": "train", "reg_dir": "reg", "resolution": DEMO_RESOLUTION},
            "network": {"dim": 4, "alpha": 4, "train_text_encoder": not sdxl},
            "training": {"epochs": 2, "batch_size": 2, "unet_lr": 1e-3, "text_encoder_lr": 5e-4, "log_every_steps": 5},
            "output": {"dir": "output", "name": "usu_bear_sdxl" if sdxl else "usu_bear"},
        }
    )


def _kind(sdxl: bool, flux: bool) -> str:
    return "FLUX.1" if flux else "SDXL" if sdxl else "SD 1.x"


def _built_kind(model: Path) -> str | None:
    """Which demo a folder's model/ holds, or None when it holds none yet."""
    if (model / FLUX_DEMO_FILES["path"].removeprefix("model/")).exists():
        return "FLUX.1"
    if (model / "model_index.json").exists():
        return "SDXL" if (model / "text_encoder_2").is_dir() else "SD 1.x"
    return None


def create_demo(folder: Path, *, overwrite: bool = False, sdxl: bool = False, flux: bool = False) -> Path:
    """Build the demo in `folder` and return its answers file."""
    folder = Path(folder)
    answers_path = folder / "answers.toml"
    model = folder / "model"
    built, wanted = _built_kind(model), _kind(sdxl, flux)
    if built is not None and built != wanted:
        kind, other = built, wanted
        raise UserError(
            f"this folder holds the {kind} demo, not the {other} one",
            where=folder,
            fix=f"give another folder for the {other} demo",
        )
    if answers_path.exists() and not overwrite:
        return answers_path
    folder.mkdir(parents=True, exist_ok=True)
    if built is None:
        silence_known_noise()
    if built is None and flux:
        from engine.tiny_flux import write_tiny_flux_files

        write_tiny_flux_files(model, variant="dev")
    elif built is None:
        (build_tiny_sdxl_pipeline if sdxl else build_tiny_sd1_pipeline)(model)
    if not (folder / "train").exists():
        write_synthetic_dataset(folder, size=DEMO_RESOLUTION)
    save_answers(demo_answers(folder, sdxl=sdxl, flux=flux), answers_path, overwrite=True)
    return answers_path
