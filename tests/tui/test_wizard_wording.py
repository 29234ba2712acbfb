"""The wizard words remedies for its own fields (the engine's name the answers file's keys), a
stale error goes when the path changes, engine values read as words, and counts agree in number."""

from __future__ import annotations

import pytest
from wizard_support import anyio_backend, clear_and_type, make_app, settle, shown, type_text  # noqa: F401

from engine.config import load_answers
from tui_lora.i18n import counted, t
from tui_lora.run_view import describe

pytestmark = pytest.mark.anyio


async def test_a_missing_model_is_fixed_in_the_field_and_the_old_error_goes(demo, workspace, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("data"))
    app.draft.step = "model"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await type_text(pilot, str(demo / "nothing"))
        await settle(pilot, 0.4)
        await pilot.press("ctrl+n")
        await settle(pilot)
        text = shown(app)
        assert "the base model does not exist" in text and "check the Model field above" in text
        assert "answers file" not in text
        screen_error = app.screen.query_one("#screen-error")
        assert str(screen_error.render()).strip()
        await clear_and_type(pilot, str(demo / "nothing-either"))
        await settle(pilot, 0.4)
        assert not str(screen_error.render()).strip()  # the error of the path Next was pressed on is gone with it
        assert shown(app).count("the base model does not exist") == 1  # the new path's, once


async def test_an_existing_lora_is_fixed_with_the_name_field_not_an_answers_key(demo, workspace, tmp_path_factory):
    answers = load_answers(demo / "answers.toml")
    app = make_app(tmp_path_factory.mktemp("data"), answers=answers)
    app.draft.set("output.dir", str(workspace / "output"))
    (workspace / "output").mkdir()
    (workspace / "output" / "usu_bear.safetensors").write_bytes(b"a LoRA trained before")
    app.draft.step = "review"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, 0.3)
        text = shown(app)
        assert "already exists" in text
        assert "choose another LoRA name on the Parameters step" in text
        assert "overwrite = true" not in text


def test_engine_values_read_as_words_and_counts_agree():
    assert describe({"kind": "ready", "device": "cpu", "precision": "no"}) == "training on cpu in fp32"
    assert describe({"kind": "ready", "device": "cuda:0", "precision": "bf16"}) == "training on cuda:0 in bf16 mixed precision"
    assert counted("epochs", 1) == "1 epoch" and counted("epochs", 2) == "2 epochs"
    assert counted("images", 1) == "1 image" and counted("errors", 0) == "0 errors"
    assert t("review.steps", steps=counted("steps", 2), epochs=counted("epochs", 1)) == "2 steps (1 epoch):"
