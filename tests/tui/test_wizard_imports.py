"""Starting the wizard loads no torch, diffusers, transformers or peft: it paints at once, and
walking every step up to Review (model read, dataset checked, plan and estimate) stays light too.
Only gathering the real machine's facts (in a worker) and training import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from wizard_support import demo_folder

HEAVY_LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate")
HERE = Path(__file__).resolve().parent

SCRIPT = """
import asyncio, json, sys
sys.path.insert(0, {here!r})
from wizard_support import make_app, settle, simulated_facts
from engine.config import load_answers

def loaded():
    return sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))

async def main():
    app = make_app({data!r}, answers=load_answers({answers!r}) if {walk!r} else None)
    report = {{}}
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        report["start"] = [app.screen.name, loaded()]
        if {walk!r}:
            for _ in range(4):
                await pilot.press("ctrl+n")
                await settle(pilot)
            report["walk"] = [app.screen.name, loaded()]
    print(json.dumps(report))

asyncio.run(main())
"""


def run_app_script(tmp_path: Path, demo: Path | None) -> dict:
    script = SCRIPT.format(
        here=str(HERE), heavy=HEAVY_LIBRARIES, data=str(tmp_path / "data"),
        answers=str(demo / "answers.toml") if demo else "", walk=demo is not None,
    )  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_starting_the_app_imports_no_torch(tmp_path):
    report = run_app_script(tmp_path, None)
    assert report["start"] == ["home", []]


def test_walking_to_review_imports_no_torch(tmp_path, tmp_path_factory):
    report = run_app_script(tmp_path, demo_folder(tmp_path_factory))
    assert report["start"] == ["environment", []]
    assert report["walk"] == ["review", []]


@pytest.mark.parametrize("command", [["--help"], ["demo", "--help"]])
def test_the_command_line_loads_no_app(command):
    """`lora-wizard --help` builds the parser without importing Textual's app modules."""
    probe = f"import sys\nfrom tui_lora.cli import build_parser\ntry:\n    build_parser().parse_args({command!r})\nexcept SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.startswith('tui_lora.app') or m == 'textual.app'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"
