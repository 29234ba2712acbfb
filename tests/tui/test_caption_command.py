"""`lora-wizard dataset caption`: caption files written with thresholds, first and dropped tags;
existing captions kept unless asked; the answers file's extension; the offline message; a broken
image named and skipped. Tiny ONNX taggers built here, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.caption_files import read_tags
from engine.tagger import DEFAULT_TAGGER
from engine.tiny_tagger import build_tiny_tagger
from tests.conftest import write_answers
from tui_lora.cli import main


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def train_root(tmp_path: Path) -> Path:
    folder = tmp_path / "train" / "20_usu bear"
    folder.mkdir(parents=True)
    Image.new("RGB", (80, 120), (250, 10, 10)).save(folder / "red.png")
    Image.new("RGB", (120, 80), (10, 10, 250)).save(folder / "blue.jpg")
    return tmp_path / "train"


def test_the_command_writes_captions_with_thresholds_first_and_dropped_tags(tmp_path, tagger_dir, capsys):
    train = train_root(tmp_path)
    folder = train / "20_usu bear"
    status = main(["dataset", "caption", str(train), "--model", str(tagger_dir), "--device", "cpu", "--drop", "solo", "--character", "0.7"])
    out = capsys.readouterr().out
    assert status == 0
    assert "448 px input" in out and "2 caption files written (.txt)" in out
    assert f"Next: lora-wizard dataset check {train} --caption-extension .txt" in out
    assert read_tags(folder / "red.png", ".txt") == ["usu", "bear", "usu (character)", "red hair", "outdoors"]
    assert read_tags(folder / "blue.jpg", ".txt") == ["usu", "bear", "usu (character)", "blue sky", "outdoors"]

    # Asked again: the captions are kept, whatever the new options say.
    before = (folder / "red.txt").read_bytes()
    assert main(["dataset", "caption", str(train), "--model", str(tagger_dir), "--general", "0.9", "--first", "sks"]) == 0
    assert "2 existing captions kept" in capsys.readouterr().out
    assert (folder / "red.txt").read_bytes() == before
    # Replacing is asked for by name.
    assert main(["dataset", "caption", str(train), "--model", str(tagger_dir), "--general", "0.9", "--first", "sks", "--existing", "replace", "--keep-underscores"]) == 0
    assert read_tags(folder / "red.png", ".txt") == ["sks", "red_hair"]


def test_an_answers_file_gives_the_root_and_extension_and_a_different_one_is_refused(tmp_path, tagger_dir, capsys):
    train = train_root(tmp_path)
    answers = write_answers(tmp_path, tmp_path, train, dataset={"caption_extension": ".caption"})
    assert main(["dataset", "caption", str(answers), "--model", str(tagger_dir)]) == 0
    assert read_tags(train / "20_usu bear" / "red.png", ".caption")[:3] == ["usu", "bear", "red hair"]
    assert not list(train.glob("*/*.txt"))

    assert main(["dataset", "caption", str(answers), "--model", str(tagger_dir), "--caption-extension", ".txt"]) == 2
    err = capsys.readouterr().err
    assert "differs from the answers file's .caption" in err and "Traceback" not in err


def test_a_broken_image_is_named_and_the_others_are_tagged(tmp_path, tagger_dir, capsys):
    train = train_root(tmp_path)
    (train / "20_usu bear" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    status = main(["dataset", "caption", str(train), "--model", str(tagger_dir)])
    out, err = capsys.readouterr()
    assert status == 2
    assert f"skipped: {train / '20_usu bear' / 'broken.png'}: the image cannot be decoded" in err
    assert "2 caption files written" in out and "Traceback" not in err


def test_a_flat_folder_is_tagged_and_the_next_step_is_to_lay_it_out(tmp_path, tagger_dir, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (10, 250, 10)).save(photos / "g.webp")
    assert main(["dataset", "caption", str(photos), "--model", str(tagger_dir), "--first", "sks, dog", "--caption-extension", ".caption"]) == 0
    out = capsys.readouterr().out
    assert read_tags(photos / "g.webp", ".caption") == ["sks", "dog", "^_^", "solo", "outdoors"]
    assert f"Next: lora-wizard dataset prepare {photos} --token TOKEN --class CLASS --out TRAIN_ROOT --caption-extension .caption" in out


def test_offline_without_the_model_it_says_what_to_download_and_where(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    train = train_root(tmp_path)
    assert main(["dataset", "caption", str(train)]) == 2
    err = capsys.readouterr().err
    assert f"this tagger is not in the Hugging Face cache ({tmp_path / 'hub'})" in err
    assert f"https://huggingface.co/{DEFAULT_TAGGER}/resolve/main/model.onnx" in err
    assert "--model DIR" in err and "Traceback" not in err
    assert not list(train.glob("*/*.txt"))


def test_the_download_bar_reports_bytes_instead_of_drawing():
    from tui_lora.screens.captions import download_bar

    reports = []
    with download_bar(lambda done, total: reports.append((done, total)))(total=300, desc="model.onnx") as bar:
        bar.update(100)
        bar.update(200)
    assert reports == [(100, 300), (300, 300)]
