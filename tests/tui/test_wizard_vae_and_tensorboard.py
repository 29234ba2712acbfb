"""The wizard's optional VAE (`[model] vae`, on the Model step) and TensorBoard logs (`[output]
tensorboard`, on the Parameters step): refused when wrong, off by default, saved when set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from wizard_support import (  # noqa: F401
    anyio_backend,
    clear_and_type,
    demo_folder,
    make_app,
    settle,
    shown,
    widget_text,
)

from engine.config import load_answers

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.anyio


def app_at(step: str, demo: Path, data: Path):
    """The demo's answers (model, dataset, name `usu_bear`), opened at `step`."""
    app = make_app(data, answers=load_answers(demo / "answers.toml"))
    app.draft.step = step
    return app


async def save_from_parameters(pilot, workspace: Path) -> dict:
    """Next to Review, Ctrl+S (usu_bear.toml in the working folder); the file as TOML."""
    await pilot.press("ctrl+n")
    await settle(pilot)
    assert pilot.app.screen.name == "review"
    await pilot.press("ctrl+s")
    await settle(pilot)
    return tomllib.loads((workspace / "usu_bear.toml").read_text(encoding="utf-8"))


async def test_a_vae_and_tensorboard_logs_are_saved_when_set(demo, workspace, tmp_path_factory):
    vae = demo / "model" / "vae"  # a diffusers AutoencoderKL folder
    app = app_at("model", demo, tmp_path_factory.mktemp("data"))
    async with app.run_test(size=(80, 30)) as pilot:
        await settle(pilot)
        assert "fp16-safe VAE" in shown(app)  # the field's help
        app.screen.query_one("#vae").focus()
        await clear_and_type(pilot, str(demo / "train"))  # a folder without a VAE
        await settle(pilot, 0.4)
        assert "holds no AutoencoderKL" in widget_text(app.screen.query_one("#row-vae").message)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.name == "model"  # Next refused while the VAE is wrong
        await clear_and_type(pilot, str(vae))
        await settle(pilot, 0.4)
        assert "AutoencoderKL" not in shown(app)
        app.go_to("parameters")
        await settle(pilot)
        checkbox = app.screen.query_one("#field-output-tensorboard")
        checkbox.focus()  # scrolls it into view
        await settle(pilot)
        assert checkbox.value is False and "TensorBoard logs" in shown(app)
        await pilot.press("space")
        await settle(pilot)
        saved = await save_from_parameters(pilot, workspace)
    assert saved["model"]["vae"] == str(vae)
    assert saved["output"]["tensorboard"] is True
    answers = load_answers(workspace / "usu_bear.toml")
    assert (answers.model.vae, answers.output.tensorboard) == (vae, True)


async def test_without_them_the_file_keeps_the_models_vae_and_no_logs(demo, workspace, tmp_path_factory):
    app = app_at("parameters", demo, tmp_path_factory.mktemp("data"))
    async with app.run_test(size=(80, 30)) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#field-output-tensorboard").value is False
        saved = await save_from_parameters(pilot, workspace)
    assert "vae" not in saved["model"]
    assert saved["output"].get("tensorboard", False) is False
    answers = load_answers(workspace / "usu_bear.toml")
    assert (answers.model.vae, answers.output.tensorboard) == (None, False)
