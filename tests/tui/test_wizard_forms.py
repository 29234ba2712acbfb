"""Each step's fields: invalid values shown inline and not accepted, completion, the model's
type and tokenizer, preparing a flat folder, Next refused while something is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from wizard_support import (  # noqa: F401
    anyio_backend,
    clear_and_type,
    demo_folder,
    make_app,
    settle,
    shown,
    type_text,
    widget_text,
)

from engine.config import load_answers
from tui_lora.widgets.path_input import Completion, complete_path, path_completion

pytestmark = pytest.mark.anyio


def app_at(step: str, demo: Path, data: Path, **kwargs):
    app = make_app(data, answers=load_answers(demo / "answers.toml"), **kwargs)
    app.draft.step = step
    return app


def row(app, key: str):
    return app.screen.query_one("#row-field-" + key.replace(".", "-"))


@pytest.mark.parametrize(
    ("key", "typed", "reason"),
    [
        ("training.batch_size", "0", "Not accepted: at least 1"),
        ("training.batch_size", "two", "Not accepted: a whole number"),
        ("training.unet_lr", "fast", "Not accepted: a number"),
        ("training.unet_lr", "2", "Not accepted: at most 1.0"),
        ("dataset.resolution", "500", "Not accepted: a multiple of 8"),
        ("output.name", "my/lora", "Not accepted: a plain file name"),
        ("output.name", "usu.safetensors", "Not accepted: a plain file name"),
        ("samples.prompts", "usu bear --q 3", "unknown prompt option `--q`"),
        ("samples.every_epochs", "-1", "Not accepted: at least 0"),
    ],
)
async def test_an_invalid_value_is_shown_inline_and_not_accepted(demo, workspace, tmp_path_factory, key, typed, reason):
    app = app_at("parameters", demo, tmp_path_factory.mktemp("data"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.screen.query_one("#field-" + key.replace(".", "-")).focus()
        await clear_and_type(pilot, typed)
        await settle(pilot)
        assert row(app, key).has_error
        assert reason in shown(app)
        # Not accepted: the draft keeps the last value that was (typing passes through others,
        # e.g. `my` on the way to `my/lora`), so the answers stay valid.
        assert str(app.draft.get(key)) != typed
        app.draft.build_answers()
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.name == "parameters"  # Next refuses while a field is wrong
        assert "Fix the fields marked in red" in shown(app)
        assert app.focused.id == "field-" + key.replace(".", "-")  # ... and goes to it


async def test_a_corrected_value_is_accepted(demo, workspace, tmp_path_factory):
    app = app_at("parameters", demo, tmp_path_factory.mktemp("data"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await clear_and_type(pilot, "0")
        await settle(pilot)
        assert row(app, "training.batch_size").has_error
        await clear_and_type(pilot, "4")
        await settle(pilot)
        assert not row(app, "training.batch_size").has_error
        assert app.draft.get("training.batch_size") == 4
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.name == "review"


async def test_the_reason_is_in_japanese_too(demo, workspace, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    app = app_at("parameters", demo, tmp_path_factory.mktemp("data"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await clear_and_type(pilot, "0")
        await settle(pilot)
        assert "受け付けません: 1 以上にしてください" in shown(app)


async def test_warmup_longer_than_max_steps_is_refused(demo, workspace, tmp_path_factory):
    app = app_at("parameters", demo, tmp_path_factory.mktemp("data"))
    app.draft.set("training.max_steps", 5)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.screen.query_one("#field-training-warmup_steps").focus()
        await clear_and_type(pilot, "9")
        await settle(pilot)
        assert "Not accepted: more than the max steps" in shown(app)
        assert app.draft.get("training.warmup_steps") == 0


async def test_parameters_start_from_the_environment_check(demo, workspace, tmp_path_factory):
    """A new LoRA on the simulated 6 GB card: batch size 1 and gradient checkpointing on."""
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "parameters"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#field-training-batch_size").value == "1"
        assert app.screen.query_one("#field-training-gradient_checkpointing").value is True
        assert "Defaults fit NVIDIA GeForce GTX 1660 SUPER" in shown(app)
        # A value the user chose is never replaced by a recommendation.
        await clear_and_type(pilot, "3")
        await settle(pilot)
        app.apply_recommendations(app.recommendations)
        assert app.draft.get("training.batch_size") == 3


async def test_the_model_step_shows_the_type_and_refuses_what_is_not_a_model(demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "model"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await type_text(pilot, str(demo / "train"))
        await settle(pilot, 0.4)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.name == "model"
        assert "has no `unet` folder" in shown(app)  # the engine's reason, with its fix
        assert "fix: copy the complete model folder" in shown(app)
        await clear_and_type(pilot, str(demo / "model"))
        await settle(pilot, 0.4)
        text = shown(app)
        assert "SD 1.x · diffusers folder · predicts epsilon" in text
        assert "Tokenizer:" in text and "not found" not in text and "has no `unet`" not in text
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.name == "dataset"


async def test_tab_completes_a_path_and_then_moves_on(demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "model"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await type_text(pilot, str(demo / "mo"))
        await settle(pilot)
        await pilot.press("tab")
        assert app.focused.value == str(demo / "model") + "/"
        assert app.focused.id == "model-path"
        await pilot.press("tab")  # nothing left to complete: the focus moves on
        assert app.focused.id == "browse"


def test_path_completion(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    # As far as the matches agree: `model` (a file and a folder), then each in full.
    assert complete_path(str(tmp_path / "mod")) == str(tmp_path / "model")
    assert path_completion(str(tmp_path / "model")).candidates == ("model.safetensors", "models/")
    assert complete_path(str(tmp_path / "model.")) == str(tmp_path / "model.safetensors")
    assert complete_path(str(tmp_path / "mod"), suffixes=(".ckpt",)) == str(tmp_path / "models") + "/"
    assert complete_path(str(tmp_path / "no"), folders_only=True) is None
    assert complete_path(str(tmp_path / "no")) == str(tmp_path / "notes.txt")
    assert complete_path(str(tmp_path) + "/") is None  # after a separator Tab moves on
    assert complete_path("mod", cwd=tmp_path) == "model"


def test_path_completion_never_goes_past_a_folder_typed_in_full(tmp_path):
    """Issue 20 item 1: `photos` beside `photos_bad` stays `photos` (both are listed);
    `tc/abc` beside `tc/abc_more` stays `tc/abc`."""
    for folder in ("photos", "photos_bad", "tc/abc", "tc/abc_more"):
        (tmp_path / folder).mkdir(parents=True)
    photos = path_completion("photos", folders_only=True, cwd=tmp_path)
    assert photos.value is None and photos.candidates == ("photos/", "photos_bad/")
    nested = path_completion(str(tmp_path / "tc" / "abc"), folders_only=True)
    assert nested.value is None and nested.candidates == ("abc/", "abc_more/")
    assert complete_path("photos_", folders_only=True, cwd=tmp_path) == "photos_bad/"
    assert complete_path("tc/abc_", cwd=tmp_path) == "tc/abc_more/"
    (tmp_path / "photos_bad").rmdir()
    assert path_completion("photos", cwd=tmp_path) == Completion(None)  # typed in full, alone: Tab moves on


async def test_the_path_picker_chooses_a_folder_by_keys(demo, workspace, tmp_path_factory):
    (workspace / "photos").mkdir()
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "dataset"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("tab", "ctrl+o")  # on the training root: pick it from a tree
        await settle(pilot)
        assert type(app.screen).__name__ == "PathPicker"
        await pilot.press("down", "c")  # the first folder under the working folder
        await settle(pilot)
        assert app.screen.name == "dataset"
        assert app.draft.get("dataset.train_dir") == str(workspace / "photos")


async def test_a_flat_folder_is_prepared_into_kohya_folders(demo, workspace, tmp_path_factory):
    photos = workspace / "photos"
    photos.mkdir()
    for image in sorted((demo / "train" / "10_usu bear").glob("*.png")):
        shutil.copy(image, photos / image.name)
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "dataset"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter")  # the second mode: a folder of images to lay out
        await settle(pilot)
        await pilot.press("tab")
        await type_text(pilot, "photos")
        await pilot.press("tab", "tab")  # -> Browse -> token
        await type_text(pilot, "sks")
        await pilot.press("tab")
        await type_text(pilot, "bear")
        await pilot.press("tab", "tab", "tab")  # -> repeats (empty: chosen) -> training root to create -> Prepare
        assert app.focused.id == "prepare-button"
        await pilot.press("enter")
        await settle(pilot, 0.3)
        concept = workspace / "train" / "38_sks bear"
        assert sorted(p.name for p in concept.iterdir()) == sorted(p.name for p in photos.iterdir())
        assert app.draft.get("dataset.train_dir") == str(Path("train"))
        assert app.draft.choices["dataset_mode"] == "existing"
        assert widget_text(app.screen.query_one("#prepare-result")).startswith("Prepared train/38_sks bear: 4 images × 38 repeats")
        concepts = [widget_text(w) for w in app.screen.query(".concept")]  # then checked
        assert concepts[0].startswith("train 38_sks bear: 4 images × 38 = 152 per epoch")


async def test_preparing_leaves_out_an_image_the_check_would_refuse(demo, workspace, tmp_path_factory):
    photos = workspace / "photos"
    photos.mkdir()
    for image in sorted((demo / "train" / "10_usu bear").glob("*.png")):
        shutil.copy(image, photos / image.name)
    (photos / "broken.png").write_bytes(b"not an image")
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "dataset"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter")
        await settle(pilot)
        app.screen.query_one("#images-dir").value = "photos"
        app.screen.query_one("#token").value = "sks"
        app.screen.query_one("#class-word").value = "bear"
        await settle(pilot)
        app.screen.query_one("#prepare-button").press()
        await settle(pilot, 0.3)
        concept = workspace / "train" / "38_sks bear"  # repeats for the 4 images kept
        assert "broken.png" not in {p.name for p in concept.iterdir()}
        result = widget_text(app.screen.query_one("#prepare-result"))
        assert "Left out 1 file that training would refuse" in result
        assert "broken.png: the image cannot be decoded" in result
        assert app.screen.report is not None and app.screen.report.errors == []  # Next is not blocked


async def test_the_dataset_check_uses_the_models_resolution_and_groups_repeated_warnings(demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "dataset"
    app.draft.model_family = "sdxl"  # as the Model step leaves it for an SDXL model; no resolution chosen yet
    app.draft.set("dataset.train_dir", str(demo / "train"))
    app.draft.set("dataset.reg_dir", str(demo / "reg"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, 0.3)
        report = app.screen.report
        assert report.resolution == 1024  # SDXL's, not 512
        small = [p for p in report.problems if p.code == "image.small"]
        assert len(small) == 12  # the demo's 64 px images: 4 training, 8 regularization
        rows = [widget_text(w) for w in app.screen.query("#problems StatusRow .status-text")]
        about_size = [row for row in rows if "smaller than the training resolution (1024 px)" in row]
        assert len(about_size) == 1 and "and 11 more files" in about_size[0], rows


async def test_next_waits_for_the_dataset_check_and_refuses_errors(demo, workspace, tmp_path_factory):
    broken = workspace / "broken" / "10_usu bear"
    broken.mkdir(parents=True)
    (broken / "a.png").write_bytes(b"not an image")
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "dataset"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("tab")
        await type_text(pilot, "broken")
        await pilot.press("ctrl+n")  # before the check ran: it runs, then decides
        await settle(pilot, 0.5)
        assert app.screen.name == "dataset"
        text = shown(app)
        assert "1 error," in text and "broken/10_usu bear/a.png" in text  # the file is named
        assert "The check found 1 error: fix it first" in text


async def test_switches_read_their_state_as_text(demo, workspace, tmp_path_factory):
    """Issue 20 item 2: on/off fields say `[x] on` or `[ ] off` in words, not by the colour of
    an X that is drawn either way."""
    app = app_at("parameters", demo, tmp_path_factory.mktemp("data"))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for key, label in (("training.gradient_checkpointing", "Gradient checkpointing"), ("output.tensorboard", "TensorBoard logs")):
            switch = app.screen.query_one("#field-" + key.replace(".", "-"))
            switch.focus()  # scrolls it into view
            await settle(pilot)
            before = switch.value
            assert f"{label} {'[x] on' if before else '[ ] off'}" in shown(app)
            await pilot.press("space")
            await settle(pilot)
            assert app.draft.get(key) is (not before)
            assert f"{label} {'[ ] off' if before else '[x] on'}" in shown(app)
