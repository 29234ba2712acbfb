"""`lora-wizard train FILE [--dry-run]` with a FLUX.1 file in the wrong slot: one message naming the
file, its slot and what it looks like, exit status 2, no traceback, nothing written (issue 17)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tomli_w
import tomllib

from tests.conftest import write_answers
from tests.tui.test_bad_inputs import MAX_MESSAGE_LINES, Workspace, train

SLOTS = {"path": "transformer", "ae": "vae", "clip_l": "clip", "t5xxl": "t5"}


@pytest.fixture
def flux_workspace(tmp_path, tiny_flux, tiny_dataset) -> Workspace:
    train_dir, reg_dir = tiny_dataset
    shutil.copytree(train_dir, tmp_path / "dataset" / "train")
    shutil.copytree(tiny_flux.transformer.parent, tmp_path / "model")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "home").mkdir()
    return Workspace(tmp_path, tmp_path / "model", tmp_path / "dataset" / "train", reg_dir, {})


def _answers(ws: Workspace, **files: Path) -> Path:
    model = {key: str(ws.model / file_name(slot)) for key, slot in SLOTS.items()}
    model.update({key: str(path) for key, path in files.items()})
    path = write_answers(ws.root, Path(model.pop("path")), ws.train_dir, network={"train_text_encoder": False})
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data["model"].update(model)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def file_name(slot: str) -> str:
    return {"transformer": "flux1-dev.safetensors", "vae": "ae.safetensors", "clip": "clip_l.safetensors", "t5": "t5xxl_fp16.safetensors"}[slot]


WRONG = [
    ("t5xxl", "clip_l.safetensors", "`[model] t5xxl` should be the T5-XXL text encoder, but this file is a CLIP text encoder"),
    ("clip_l", "t5xxl_fp16.safetensors", "`[model] clip_l` should be the CLIP-L text encoder, but this file is a T5 text encoder"),
    ("ae", "flux1-dev.safetensors", "`[model] ae` should be the FLUX.1 autoencoder, but this file is a FLUX.1 dev transformer"),
    ("path", "ae.safetensors", "`[model] path` should be the FLUX.1 transformer, but this file is the FLUX.1 autoencoder"),
]


# Every slot with --dry-run; one without (the same checks run before training: shown once, to keep the suite short).
CASES = [(*case, True) for case in WRONG] + [(*WRONG[0], False)]


@pytest.mark.parametrize(("slot", "wrong", "says", "dry_run"), CASES, ids=[f"{c[0]}-{'dry-run' if c[3] else 'train'}" for c in CASES])
def test_a_wrong_file_in_each_slot_is_refused_with_exit_2(flux_workspace, slot, wrong, says, dry_run):
    ws = flux_workspace
    answers = _answers(ws, **{slot: ws.model / wrong})
    result = train(ws, answers, dry_run=dry_run)
    message = "\n".join(result.message)
    assert result.returncode == 2, message
    assert "Traceback" not in message, message
    assert says in message and str(ws.model / wrong) in message, message
    assert len(result.message) < MAX_MESSAGE_LINES, message
    assert result.written == [], result.written


def test_dry_run_names_the_family_from_the_headers(flux_workspace):
    ws = flux_workspace
    result = train(ws, _answers(ws), dry_run=True)
    assert result.returncode == 0, "\n".join(result.message)
    assert "FLUX.1 dev" in result.stdout
    # The family names its denoiser: FLUX.1 trains a transformer, not a UNet.
    assert "transformer only" in result.stdout and "transformer lr" in result.stdout, result.stdout
    assert "UNet" not in result.stdout, result.stdout
