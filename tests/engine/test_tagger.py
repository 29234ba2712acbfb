"""The WD14-style tagger and the caption files it writes, with tiny ONNX models built here (no
downloads: the Hugging Face cache is a temporary folder and HF_HUB_OFFLINE is on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.autotag import TagOptions, tag_folder
from engine.caption_files import CaptionSet, read_tags
from engine.errors import UserError
from engine.tagger import DEFAULT_TAGGER, Tagger, TaggerError, locate_model, providers_for
from engine.tiny_tagger import build_tiny_tagger

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


@pytest.fixture(scope="module")
def tiny_tagger_dir(tmp_path_factory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def concept_folder(root: Path, colours: dict[str, tuple[int, int, int]], name: str = "10_usu bear") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for stem, colour in colours.items():
        Image.new("RGB", (96, 96), colour).save(folder / f"{stem}.png")
    return folder


def test_the_input_size_and_layout_are_read_from_the_model(tmp_path, tiny_tagger_dir):
    tagger = Tagger.load(tiny_tagger_dir, device="cpu")
    assert (tagger.size, tagger.channels_last, tagger.provider) == (448, True, "CPUExecutionProvider")
    small = Tagger.load(build_tiny_tagger(tmp_path / "small", size=64, batch=1), device="cpu")
    assert (small.size, small.fixed_batch) == (64, 1)
    # A 200x100 image is padded square on white, then resized to the model's side, BGR.
    array = small.preprocess(Image.new("RGB", (200, 100), RED))
    assert array.shape == (64, 64, 3) and array.dtype == np.float32
    assert tuple(array[32, 32]) == (0.0, 0.0, 255.0)  # the middle: red, as B, G, R
    assert tuple(array[2, 32]) == (255.0, 255.0, 255.0)  # the top band: white padding
    # A graph with a fixed batch of 1 still tags a batch of several.
    scores = small.predict(np.stack([array, array, array]))
    assert scores.shape == (3, len(small.vocabulary.names))


def test_captions_follow_thresholds_first_and_dropped_tags(tmp_path, tiny_tagger_dir):
    folder = concept_folder(tmp_path / "train", {"red": RED, "blue": BLUE, "green": GREEN})
    tagger = Tagger.load(tiny_tagger_dir, device="cpu")
    result = tag_folder(tmp_path / "train", tagger, TagOptions(drop_tags=("outdoors",), batch_size=2))
    assert len(result.written) == 3 and not result.failed
    # The folder's token and class first; character 0.73 < 0.85; general >= 0.35 by score; outdoors dropped.
    assert (folder / "red.txt").read_text(encoding="utf-8") == "usu, bear, red hair, solo\n"
    assert read_tags(folder / "blue.png", ".txt") == ["usu", "bear", "blue sky", "solo"]
    assert read_tags(folder / "green.png", ".txt") == ["usu", "bear", "^_^", "solo"]  # a kaomoji keeps its underscore

    options = TagOptions(first_tags=("sks",), general_threshold=0.9, character_threshold=0.7, underscores_to_spaces=False, existing="replace", caption_extension=".caption")
    tag_folder(folder, tagger, options)
    assert read_tags(folder / "red.png", ".caption") == ["sks", "usu_(character)", "red_hair"]
    assert read_tags(folder / "red.png", ".txt") == ["usu", "bear", "red hair", "solo"]  # another extension: untouched


def test_an_existing_caption_is_kept_unless_replace_or_append_is_asked(tmp_path, tiny_tagger_dir):
    folder = concept_folder(tmp_path, {"red": RED, "blue": BLUE}, name="photos")
    (folder / "red.txt").write_text("my own words, red hair\n", encoding="utf-8")
    tagger = Tagger.load(tiny_tagger_dir, device="cpu")

    kept = tag_folder(folder, tagger, TagOptions())
    assert kept.kept == [folder / "red.png"] and kept.written == [folder / "blue.txt"]
    assert (folder / "red.txt").read_text(encoding="utf-8") == "my own words, red hair\n"
    assert read_tags(folder / "blue.png", ".txt") == ["blue sky", "solo", "outdoors"]  # no concept folder: nothing first

    tag_folder(folder, tagger, TagOptions(existing="append"))
    assert read_tags(folder / "red.png", ".txt") == ["my own words", "red hair", "solo", "outdoors"]
    tag_folder(folder, tagger, TagOptions(existing="replace", drop_tags=("Solo",)))
    assert read_tags(folder / "red.png", ".txt") == ["red hair", "outdoors"]


def test_an_undecodable_image_is_named_and_skipped(tmp_path, tiny_tagger_dir):
    folder = concept_folder(tmp_path, {"a": RED, "c": BLUE}, name="5_usu")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = tag_folder(folder, Tagger.load(tiny_tagger_dir, device="cpu"), TagOptions(batch_size=3))
    assert [Path(e.where) for e in result.failed] == [folder / "b.png"]
    assert "cannot be decoded" in result.failed[0].message
    assert sorted(p.name for p in result.written) == ["a.txt", "c.txt"]
    assert not (folder / "b.txt").exists()


def make_cache(cache: Path, repo: str, model_dir: Path) -> None:
    """The Hugging Face cache layout, as a download leaves it."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for name in ("model.onnx", "selected_tags.csv"):
        (snapshot / name).write_bytes((model_dir / name).read_bytes())


def test_offline_the_cached_model_is_used_and_a_missing_one_says_what_to_download(tmp_path, tiny_tagger_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    with pytest.raises(TaggerError) as missing:
        locate_model(DEFAULT_TAGGER, cache_dir=cache)
    message = missing.value.render()
    assert "HF_HUB_OFFLINE" in message and str(cache) in message
    assert f"https://huggingface.co/{DEFAULT_TAGGER}/resolve/main/model.onnx" in message
    assert "selected_tags.csv" in message and "--model DIR" in message

    make_cache(cache, DEFAULT_TAGGER, tiny_tagger_dir)
    model, tags = locate_model(DEFAULT_TAGGER, cache_dir=cache)
    assert model.read_bytes() == (tiny_tagger_dir / "model.onnx").read_bytes() and tags.name == "selected_tags.csv"


def test_bad_tagger_folders_and_missing_onnxruntime_are_user_errors(tmp_path, tiny_tagger_dir, monkeypatch):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes((tiny_tagger_dir / "model.onnx").read_bytes())
    with pytest.raises(TaggerError, match="selected_tags.csv is missing"):
        Tagger.load(tmp_path / "half")
    with pytest.raises(TaggerError, match="not a Hugging Face repository id"):
        locate_model("no/such/thing")
    with pytest.raises(UserError, match="between 0 and 1"):
        TagOptions(general_threshold=1.5)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(TaggerError, match="onnxruntime is not installed") as missing:
        Tagger.load(tiny_tagger_dir)
    assert "lora-wizard[captions]" in missing.value.render()


def test_the_cuda_provider_is_used_when_there_and_asked_for_by_name_only_when_there():
    assert providers_for("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers_for("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert providers_for("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(TaggerError, match="no CUDA provider") as refused:
        providers_for("cuda", ["CPUExecutionProvider"])
    assert "onnxruntime-gpu" in refused.value.render()


def test_caption_edits_are_written_and_bulk_remove_and_replace_touch_every_file(tmp_path):
    folder = concept_folder(tmp_path, {"a": RED, "b": BLUE, "c": GREEN}, name="3_usu bear")
    (folder / "a.txt").write_text("usu, long_hair, smile\n", encoding="utf-8")
    (folder / "b.txt").write_text("usu, long hair\n", encoding="utf-8")
    captions = CaptionSet.load(tmp_path, ".txt")
    assert captions.frequency() == [("long_hair", 2), ("usu", 2), ("smile", 1)]  # ties: by name
    captions.set_tags(folder / "c.png", ["usu", "hat", "usu"])
    assert (folder / "c.txt").read_text(encoding="utf-8") == "usu, hat\n"
    assert captions.replace_everywhere("long hair", "short hair") == [folder / "a.png", folder / "b.png"]
    assert captions.remove_everywhere("usu") == [folder / "a.png", folder / "b.png", folder / "c.png"]
    assert [read_tags(folder / f"{s}.png", ".txt") for s in "abc"] == [["short hair", "smile"], ["short hair"], ["hat"]]
    captions.remove_everywhere("short hair")
    assert not (folder / "b.txt").exists()  # no tag left: no empty caption file (kohya refuses one)
    assert not list(folder.glob(".*.tmp"))
