"""FLUX.1 in the wizard (issue 17): the Model step asks for the autoencoder, CLIP-L and T5-XXL
files only for a FLUX.1 transformer, checks each for its slot as it is typed, and Parameters starts
from FLUX.1's defaults for the card (fp8 weights, offloaded blocks, 512 px on 12 GB); switching back
to an SD model restores SD's; the saved answers are what `lora-wizard train --dry-run` reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_wizard_gpus_and_sdxl import RTX_3060, RTX_4090, field, new_lora, row_shown, save_answers
from wizard_support import (  # noqa: F401
    anyio_backend,
    clear_and_type,
    demo_folder,
    flux_demo_folder,
    gpu,
    machine_with,
    make_app,
    settle,
    shown,
    widget_text,
)

pytestmark = pytest.mark.anyio

RTX_4060_TI_16GB = gpu("NVIDIA GeForce RTX 4060 Ti", 16, (8, 9))
H100 = gpu("NVIDIA H100 80GB HBM3", 80, (9, 0))
SLOTS = {"ae": "ae.safetensors", "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors"}


@pytest.fixture(scope="module")
def flux_demo(tmp_path_factory) -> Path:
    return flux_demo_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return demo_folder(tmp_path_factory)


def flux_lora(flux: Path, step: str = "parameters", *, files: bool = True):
    """A new LoRA on the FLUX.1 demo's transformer file (with its three other files, or not yet)."""
    draft = new_lora(flux, step)
    draft.set("model.path", str(flux / "model" / "flux1-dev.safetensors"))
    for slot, name in SLOTS.items():
        if files:
            draft.set(f"model.{slot}", str(flux / "model" / name))
    return draft


def slot_rows_shown(app) -> list[bool]:
    return [app.screen.query_one(f"#row-flux-{slot}").display for slot in SLOTS]


async def type_into(pilot, widget_id: str, text: str) -> None:
    pilot.app.screen.query_one(widget_id).focus()
    await clear_and_type(pilot, text)


async def test_a_flux_transformer_asks_for_its_three_files_and_an_sd_model_hides_them(flux_demo, demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"), facts=machine_with(RTX_4090))
    app.draft = flux_lora(flux_demo, "model", files=False)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot, 0.4)
        assert slot_rows_shown(app) == [True, True, True]
        assert "A FLUX.1 transformer: give its autoencoder, CLIP-L and T5-XXL files below." in shown(app)
        await pilot.press("ctrl+n")  # refused: the files are missing, the first one is named
        await settle(pilot, 0.4)
        assert app.screen.name == "model" and "Give the FLUX.1 autoencoder file." in shown(app)
        for slot, name in SLOTS.items():
            await type_into(pilot, f"#flux-{slot}", str(flux_demo / "model" / name))
        await settle(pilot, 0.4)
        assert "FLUX.1 dev · single files" in shown(app)
        assert app.draft.model_family == "flux1-dev"
        assert [app.draft.get(f"model.{slot}") for slot in SLOTS] == [str(flux_demo / "model" / name) for name in SLOTS.values()]
        assert (app.draft.get("dataset.resolution"), app.draft.get("network.dim"), app.draft.get("network.train_text_encoder")) == (1024, 16, False)
        # An SD 1.x model: the fields go, and so do their answers (the engine would take the path for FLUX.1's).
        await type_into(pilot, "#model-path", str(demo / "model"))
        await settle(pilot, 0.4)
        assert "SD 1.x · diffusers folder" in shown(app)
        assert slot_rows_shown(app) == [False, False, False]
        assert [app.draft.get(f"model.{slot}") for slot in SLOTS] == [None, None, None]
        assert (app.draft.get("dataset.resolution"), app.draft.get("network.dim"), app.draft.get("training.fp8_base")) == (None, 8, False)


@pytest.mark.parametrize(
    ("slot", "wrong", "says"),
    [
        ("t5xxl", "clip_l.safetensors", "`[model] t5xxl` should be the T5-XXL text encoder, but this file is a CLIP text encoder"),
        ("clip_l", "t5xxl_fp16.safetensors", "`[model] clip_l` should be the CLIP-L text encoder, but this file is a T5 text encoder"),
        ("ae", "flux1-dev.safetensors", "`[model] ae` should be the FLUX.1 autoencoder, but this file is a FLUX.1 dev transformer"),
    ],
    ids=["t5xxl", "clip_l", "ae"],
)
async def test_a_wrong_file_in_a_slot_is_named_under_it_and_next_stays(flux_demo, workspace, tmp_path_factory, slot, wrong, says):
    app = make_app(tmp_path_factory.mktemp("data"), facts=machine_with(RTX_4090))
    app.draft = flux_lora(flux_demo, "model")
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot, 0.4)
        assert "FLUX.1 dev · single files" in shown(app)
        await type_into(pilot, f"#flux-{slot}", str(flux_demo / "model" / wrong))
        await settle(pilot, 0.4)
        row = app.screen.query_one(f"#row-flux-{slot}")
        assert row.has_error and says in row.error
        assert [app.screen.query_one(f"#row-flux-{other}").has_error for other in SLOTS if other != slot] == [False, False]
        await pilot.press("ctrl+n")
        await settle(pilot, 0.4)
        assert app.screen.name == "model"


# Per card: (resolution, fp8 weights, offloaded blocks). Batch size 1 and gradient checkpointing on each.
FLUX_CARDS = {
    "80GB": (H100, 1024, False, False),
    "24GB": (RTX_4090, 1024, True, False),
    "16GB": (RTX_4060_TI_16GB, 1024, True, True),
    "12GB": (RTX_3060, 512, True, True),
}


@pytest.mark.parametrize("card_class", list(FLUX_CARDS))
async def test_flux_defaults_per_card_are_shown_and_saved(flux_demo, workspace, tmp_path_factory, card_class):
    card, resolution, fp8, offload = FLUX_CARDS[card_class]
    app = make_app(tmp_path_factory.mktemp("data"), facts=machine_with(card))
    app.draft = flux_lora(flux_demo)  # the Model step was not visited: the family is read here
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        assert row_shown(app, "training.fp8_base") and row_shown(app, "training.offload_blocks") and row_shown(app, "training.timestep_sampling")
        assert not row_shown(app, "training.text_encoder_2_lr")
        assert field(app, "dataset.resolution").value == str(resolution)
        assert (field(app, "training.fp8_base").value, field(app, "training.offload_blocks").value) == (fp8, offload)
        assert field(app, "training.batch_size").value == "1" and field(app, "training.gradient_checkpointing").value is True
        assert (field(app, "network.dim").value, field(app, "training.unet_lr").value) == ("16", "0.0001")
        assert field(app, "training.timestep_sampling").value == "shift"
        note = widget_text(app.screen.query_one("#defaults-note"))
        assert f"FLUX.1, as kohya recommends: {resolution} px, the transformer only" in note and "batch size 1" in note
        saved = await save_answers(pilot, workspace)
        # Review: the answers, and the check's FLUX.1 estimate of them fits the card (nothing to do).
        estimate = widget_text(app.screen.query_one("#estimate"))
        assert estimate.startswith("Estimate: ~") and "What to do" not in estimate, estimate
        assert 't5xxl = "' in widget_text(app.screen.query_one("#toml"))
    training = saved["training"]
    assert (training["fp8_base"], training["offload_blocks"], training["gradient_checkpointing"], training["batch_size"]) == (fp8, offload, True, 1)
    assert (saved["dataset"]["resolution"], saved["network"]["dim"], saved["network"]["train_text_encoder"]) == (resolution, 16, False)
    assert {slot: Path(saved["model"][slot]).name for slot in SLOTS} == SLOTS


async def test_an_sd_model_shows_no_flux_fields(demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"), facts=machine_with(RTX_4090))
    app.draft = new_lora(demo)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        assert not any(row_shown(app, key) for key in ("training.fp8_base", "training.offload_blocks", "training.timestep_sampling"))
        assert "FLUX.1" not in widget_text(app.screen.query_one("#defaults-note"))


async def test_switching_from_flux_to_sd1_restores_sd_defaults_and_the_saved_file_trains(flux_demo, demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"), facts=machine_with(RTX_3060))
    app.draft = flux_lora(flux_demo, "model")
    app.draft.set("training.epochs", 1)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot, 0.4)
        app.go_to("parameters")
        await settle(pilot)
        assert (field(app, "dataset.resolution").value, field(app, "training.offload_blocks").value) == ("512", True)
        saved = await save_answers(pilot, workspace)
        flux_file = workspace / "flux.toml"
        (workspace / "usu_bear.toml").rename(flux_file)
        app.go_to("model")
        await settle(pilot, 0.4)
        await type_into(pilot, "#model-path", str(demo / "model"))
        await settle(pilot, 0.4)
        app.go_to("parameters")
        await settle(pilot)
        assert field(app, "dataset.resolution").value == ""  # SD 1.x's own 512
        assert not row_shown(app, "training.fp8_base")
        assert field(app, "training.batch_size").value == "2"  # SD 1.x on 12 GB
        assert (app.draft.get("training.fp8_base"), app.draft.get("training.offload_blocks"), app.draft.get("network.dim")) == (False, False, 8)
    assert saved["model"]["path"].endswith("flux1-dev.safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "tui_lora.cli", "train", str(flux_file), "--dry-run"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FLUX.1 dev" in result.stdout


async def test_a_flux_file_field_completes_and_opens_the_path_picker(flux_demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"), facts=machine_with(RTX_4090))
    app.draft = flux_lora(flux_demo, "model", files=False)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot, 0.4)
        await type_into(pilot, "#flux-ae", str(flux_demo / "model" / "ae"))
        await pilot.press("tab")  # completes the one file there that starts so
        await settle(pilot, 0.4)
        assert app.screen.query_one("#flux-ae").value == str(flux_demo / "model" / "ae.safetensors")
        assert app.draft.get("model.ae") == str(flux_demo / "model" / "ae.safetensors")
        app.screen.query_one("#flux-clip_l").focus()
        await pilot.press("ctrl+o")
        await settle(pilot)
        assert type(app.screen).__name__ == "PathPicker"
        assert app.screen.title_text == "Pick FLUX.1's CLIP-L text encoder: clip_l.safetensors"
        assert app.screen.root == flux_demo / "model"  # beside the transformer
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.name == "model"
