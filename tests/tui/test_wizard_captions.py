"""The Dataset step's Captions: tagging with a tiny ONNX tagger built here (thresholds, first and
dropped tags, existing captions kept unless asked), editing several captions with the keyboard
only, bulk remove / replace across the dataset, the files on disk after each, the pre-flight
check reading them, and the fine-tune style."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from wizard_support import anyio_backend, clear_and_type, make_app, settle, type_text  # noqa: F401

from engine.caption_files import read_tags
from engine.tiny_tagger import build_tiny_tagger

pytestmark = pytest.mark.anyio
COLOURS = {"a": (250, 10, 10), "b": (10, 10, 250), "c": (10, 250, 10)}  # red, blue, green
SIZE = (110, 40)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def concept(workspace: Path) -> Path:
    folder = workspace / "train" / "10_usu bear"
    folder.mkdir(parents=True)
    for stem, colour in COLOURS.items():
        Image.new("RGB", (64, 64), colour).save(folder / f"{stem}.png")
    return folder


def app_on_dataset(data: Path):
    app = make_app(data)
    app.draft.step = "dataset"
    app.draft.set("dataset.train_dir", "train")
    return app


async def tab_to(pilot, widget_id: str, *, back: bool = False) -> None:
    """Press Tab (or Shift+Tab) until the widget has the focus, as a user would."""
    for _ in range(40):
        if pilot.app.focused is not None and pilot.app.focused.id == widget_id:
            return
        await pilot.press("shift+tab" if back else "tab")
    raise AssertionError(f"Tab never reached #{widget_id} (focus: {pilot.app.focused})")


async def open_captions(pilot) -> None:
    await settle(pilot)
    await tab_to(pilot, "open-captions")
    await pilot.press("enter")
    await settle(pilot)
    assert pilot.app.screen.name == "captions"


async def test_the_captions_step_tags_with_thresholds_first_and_dropped_tags_and_keeps_captions(workspace, tagger_dir, tmp_path_factory):
    folder = concept(workspace)
    (folder / "b.txt").write_text("my own caption\n", encoding="utf-8")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    app = app_on_dataset(tmp_path_factory.mktemp("data"))
    async with app.run_test(size=SIZE) as pilot:
        await open_captions(pilot)
        await tab_to(pilot, "tagger-model")
        await clear_and_type(pilot, str(tagger_dir))
        await tab_to(pilot, "character-threshold")
        await clear_and_type(pilot, "0.7")
        await tab_to(pilot, "drop-tags")
        await type_text(pilot, "outdoors")
        await pilot.press("ctrl+g")
        await settle(pilot, 0.2)
        assert read_tags(folder / "a.png", ".txt") == ["usu", "bear", "usu (character)", "red hair", "solo"]
        assert read_tags(folder / "c.png", ".txt") == ["usu", "bear", "usu (character)", "^_^", "solo"]
        assert (folder / "b.txt").read_text(encoding="utf-8") == "my own caption\n"  # kept: not asked
        status = str(app.screen.query_one("#tag-status").render())
        assert "2 caption files written (.txt) for 4 images; 1 existing captions kept" in status
        assert "Skipped: train/10_usu bear/broken.png: the image cannot be decoded" in status  # named; the rest tagged

        # Asked: replace, with a higher general threshold and .caption files (the answers follow).
        await tab_to(pilot, "existing")
        await pilot.press("down", "enter")  # keep -> replace
        await tab_to(pilot, "caption-extension", back=True)
        await pilot.press("down", "enter")  # .txt -> .caption
        await tab_to(pilot, "general-threshold", back=True)
        await clear_and_type(pilot, "0.9")
        await pilot.press("ctrl+g")
        await settle(pilot, 0.2)
        assert app.draft.get("dataset.caption_extension") == ".caption"
        assert read_tags(folder / "b.png", ".caption") == ["usu", "bear", "usu (character)", "blue sky"]
        assert (folder / "b.txt").read_text(encoding="utf-8") == "my own caption\n"  # another extension: untouched
        await pilot.press("escape")
        await settle(pilot, 0.2)
        assert app.screen.name == "dataset"
        assert [c.captions for c in app.screen.report.train_concepts] == [3]  # the check reads .caption now
        assert [p.path.name for p in app.screen.report.errors] == ["broken.png"]


async def test_captions_are_edited_by_keyboard_and_bulk_edits_reach_every_file(workspace, tmp_path_factory):
    folder = concept(workspace)
    (folder / "a.txt").write_text("usu, bear, smile, outdoors\n", encoding="utf-8")
    (folder / "b.txt").write_text("usu, bear, outdoors, hat\n", encoding="utf-8")
    app = app_on_dataset(tmp_path_factory.mktemp("data"))
    async with app.run_test(size=SIZE) as pilot:
        await open_captions(pilot)
        assert app.focused.id == "caption-images"  # captions exist: the review first
        # a.png: remove `smile`, move `outdoors` left, add a tag.
        await pilot.press("tab")
        assert app.focused.id == "caption-chips"
        await pilot.press("right", "right", "delete", "shift+left")
        await pilot.press("tab")
        await type_text(pilot, "red scarf")
        await pilot.press("enter")
        await settle(pilot)
        assert (folder / "a.txt").read_text(encoding="utf-8") == "usu, outdoors, bear, red scarf\n"
        # b.png: remove its first tag.
        await tab_to(pilot, "caption-images", back=True)
        await pilot.press("down", "tab", "delete")
        await settle(pilot)
        assert read_tags(folder / "b.png", ".txt") == ["bear", "outdoors", "hat"]
        # c.png has no caption yet: two tags at once.
        await tab_to(pilot, "caption-images", back=True)
        await pilot.press("down")
        await tab_to(pilot, "tag-add")
        await type_text(pilot, "usu, hat")
        await pilot.press("enter")
        await settle(pilot)
        assert read_tags(folder / "c.png", ".txt") == ["usu", "hat"]

        # The frequency table: bear 2, hat 2, outdoors 2, usu 2, red scarf 1.
        await tab_to(pilot, "tag-frequency")
        await pilot.press("down", "down", "delete")  # `outdoors`: asked first
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert read_tags(folder / "a.png", ".txt") == ["usu", "bear", "red scarf"]
        assert read_tags(folder / "b.png", ".txt") == ["bear", "hat"]
        await pilot.press("r")  # the row under the cursor now: `usu`
        assert app.focused.id == "tag-replace"
        await clear_and_type(pilot, "sks")
        await pilot.press("enter")
        await settle(pilot)
        on_disk = {stem: (folder / f"{stem}.txt").read_text(encoding="utf-8") for stem in "abc"}
        assert on_disk == {"a": "sks, bear, red scarf\n", "b": "bear, hat\n", "c": "sks, hat\n"}
        assert not list(folder.glob(".*.tmp"))

        await pilot.press("escape")
        await settle(pilot, 0.2)
        # The pre-flight check reads the edited files: no caption holds the folder's token `usu` now.
        report = app.screen.report
        assert sorted(p.path.name for p in report.problems if p.code == "caption.no_token") == ["a.txt", "b.txt", "c.txt"]


async def test_the_fine_tune_style_drops_regularization_and_shuffles_after_the_first_tags(workspace, tmp_path_factory):
    concept(workspace)
    (workspace / "reg" / "1_bear").mkdir(parents=True)
    app = app_on_dataset(tmp_path_factory.mktemp("data"))
    app.draft.set("dataset.reg_dir", "reg")
    app.draft.set("model.path", str(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#row-reg-dir").display
        await tab_to(pilot, "dataset-style")
        await pilot.press("down", "enter")  # fine-tune
        await settle(pilot)
        assert app.draft.choices["dataset_style"] == "finetune"
        assert app.draft.get("dataset.reg_dir") is None and not app.screen.query_one("#row-reg-dir").display
        assert (app.draft.get("dataset.shuffle_tags"), app.draft.get("dataset.keep_tokens")) == (True, 2)
        summary = str(app.screen.query_one("#captions-summary").render())
        assert "0 of 3 training images have a .txt caption: fine-tune style wants one for every image" in summary
        answers = app.draft.build_answers()
        assert answers.dataset.reg_dir is None and answers.dataset.shuffle_tags and answers.dataset.keep_tokens == 2


async def test_without_onnxruntime_the_screen_says_how_to_install_it_and_editing_still_works(workspace, tmp_path_factory, monkeypatch):
    import sys

    folder = concept(workspace)
    (folder / "a.txt").write_text("usu, bear\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    app = app_on_dataset(tmp_path_factory.mktemp("data"))
    async with app.run_test(size=SIZE) as pilot:
        await open_captions(pilot)
        assert app.screen.query_one("#tag-button").disabled
        assert "pip install 'lora-wizard[captions]'" in str(app.screen.query_one("#tag-status").render())
        await pilot.press("tab", "delete")
        await settle(pilot)
        assert (folder / "a.txt").read_text(encoding="utf-8") == "bear\n"
