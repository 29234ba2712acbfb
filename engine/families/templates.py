"""The published configs of each family's components, shipped in `configs/` (SD 1.5, SD 2.1, SDXL base).

A single file carries no configs: its architecture is derived from its tensor shapes with these as
templates (engine/families/ldm_config.py), and its training scheduler is the family's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"
TEMPLATE_FOLDERS = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}


def load_template(family: str, part: str) -> dict[str, Any]:
    """The published config of one component (SD 1.5 / SD 2.1 / SDXL), shipped with the package."""
    return json.loads((CONFIG_DIR / TEMPLATE_FOLDERS[family] / f"{part}.json").read_text(encoding="utf-8"))


def template_scheduler(family: str, prediction_type: str) -> Any:
    """The family's published DDPM training scheduler (a single file carries none), set to `prediction_type`."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(load_template(family, "scheduler"), prediction_type=prediction_type)
