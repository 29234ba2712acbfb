"""First-run noise: library lines that read like errors are silenced where the engine loads a
model (only those lines), and what `lora-wizard check` says cites no file a user does not have."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

from engine.library_logs import silence_known_noise

REPOSITORY = Path(__file__).resolve().parents[2]

# A fresh process: transformers warns about the image processor once per process.
LOAD_AND_CAST = """
import sys, torch
from engine.families import load_base_model
model = load_base_model(sys.argv[1])
model.vae.to(dtype=torch.float16)
model.denoiser.to(dtype=torch.float16)
import transformers
transformers.CLIPImageProcessor  # what diffusers' pipelines name for their safety checker
"""


def test_loading_and_casting_a_model_prints_no_noise(tiny_model_dir):
    done = subprocess.run([sys.executable, "-c", LOAD_AND_CAST, str(tiny_model_dir)], capture_output=True, text=True, timeout=300, cwd=REPOSITORY)
    assert done.returncode == 0, done.stderr
    assert "requires torchvision" not in done.stderr
    assert "should be kept in float32" not in done.stderr


def test_other_lines_of_the_same_loggers_still_show(caplog):
    silence_known_noise()
    logger = logging.getLogger("diffusers.models.modeling_utils")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.addHandler(caplog.handler)
        try:
            logger.warning("There are modules in UNet2DConditionModel that should be kept in float32: ['conv_in'].")
            logger.warning("There are modules in AutoencoderKL that should be kept in float32: [].")
        finally:
            logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records] == ["There are modules in UNet2DConditionModel that should be kept in float32: ['conv_in']."]


def test_the_check_cites_only_files_of_the_repository(capsys):
    from tui_lora.cli import main

    main(["check"])
    out = capsys.readouterr().out
    cited = re.findall(r"[\w./-]+\.md\b", out)
    assert [name for name in cited if not (REPOSITORY / name).is_file()] == []
    assert "performance-facts" not in out
