"""The layering rules, enforced: engine/ never loads a UI library, and the command line and the
app never load torch before training starts (the wizard must paint in under a second)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UI_LIBRARIES = ("textual", "rich")
HEAVY_LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate")


def engine_modules() -> list[str]:
    import engine

    names = ["engine"]
    for info in pkgutil.walk_packages(engine.__path__, prefix="engine."):
        names.append(info.name)
    return names


def loaded_after(code: str) -> set[str]:
    script = code + "\nimport sys, json\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", engine_modules())
def test_engine_module_loads_no_ui_library(module):
    loaded = loaded_after(f"import {module}")
    assert not loaded & set(UI_LIBRARIES), f"{module} imported {loaded & set(UI_LIBRARIES)}"


def test_command_line_help_loads_no_torch():
    loaded = loaded_after("from tui_lora.cli import build_parser\nbuild_parser().format_help()")
    assert not loaded & set(HEAVY_LIBRARIES), f"`lora-wizard --help` imported {loaded & set(HEAVY_LIBRARIES)}"


def test_validating_answers_loads_no_torch(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "t").mkdir()
    answers = tmp_path / "a.toml"
    answers.write_text('[model]\npath="m"\n[dataset]\ntrain_dir="t"\n[output]\nname="x"\n', encoding="utf-8")
    loaded = loaded_after(f"from engine.config import load_answers\nload_answers({str(answers)!r})")
    assert not loaded & set(HEAVY_LIBRARIES)
