"""`lora-wizard dataset check` and `dataset prepare`: the bad-dataset corpus through the command
line (message, file, exit status, no traceback), the answers-file and --model forms, and a
prepared layout that the check passes and training accepts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.dataset_prepare import choose_repeats
from tests.conftest import write_answers
from tests.engine.test_dataset_check import CASES, RESOLUTION, Case, good_train, make_images, training_accepts
from tui_lora.cli import main


def check_args(kwargs: dict) -> list[str]:
    args = ["dataset", "check", str(kwargs["train_dir"]), "--resolution", str(RESOLUTION)]
    if kwargs.get("reg_dir"):
        args += ["--reg", str(kwargs["reg_dir"])]
    return args


def lora_wizard(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `lora-wizard` command, as a user runs it."""
    command = [shutil.which("lora-wizard")] if shutil.which("lora-wizard") else [sys.executable, "-m", "tui_lora.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


COMMAND_CASES = [c for c in CASES if not c.needs_tokenizer]


@pytest.mark.parametrize("case", COMMAND_CASES, ids=[c.id for c in COMMAND_CASES])
def test_each_bad_dataset_prints_its_problem_and_file_without_traceback(case: Case, tmp_path, monkeypatch, capsys):
    kwargs = case.build(tmp_path, monkeypatch)
    status = main(check_args(kwargs))
    out, err = capsys.readouterr()
    assert status == (2 if case.severity == "error" else 0)
    marker = "ERROR" if case.severity == "error" else "warn "
    assert f"{marker}  {tmp_path / case.file}: " in out, out
    assert case.says in out
    assert "Traceback" not in out + err


def test_a_good_dataset_prints_the_rows_and_exits_0(tmp_path, capsys):
    train = good_train(tmp_path)
    make_images(tmp_path / "reg" / "1_bear", 100)
    status = main([*check_args({"train_dir": train, "reg_dir": tmp_path / "reg"}), "--batch-size", "2"])
    out = capsys.readouterr().out
    assert status == 0
    assert "repeats 20 · token usu · class bear · 20 images · 0 captions · 64x64 px · 400 items/epoch = 200 steps" in out
    assert "repeats 1 · class bear · 100 images" in out
    assert "Per epoch: 400 training + 400 regularization items = 400 steps at batch size 2" in out
    assert "0 errors, 0 warnings, 120 images read: ready to train" in out


def test_many_problems_of_one_kind_are_summed_up_and_json_lists_them_all(tmp_path, capsys):
    train = good_train(tmp_path)
    for image in sorted((train / "20_usu bear").iterdir()):
        image.with_suffix(".txt").write_text("a bear", encoding="utf-8")
    assert main(check_args({"train_dir": train})) == 0
    out = capsys.readouterr().out
    assert out.count("does not contain the instance token") == 4
    assert "… and 16 more in" in out
    assert main([*check_args({"train_dir": train}), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert sum(p["code"] == "caption.no_token" for p in document["problems"]) == 20


def test_json_output(tmp_path, capsys):
    kwargs = CASES[0].build(tmp_path, None)
    assert main([*check_args(kwargs), "--json"]) == 2
    document = json.loads(capsys.readouterr().out)
    assert document["status"] == "error"
    assert [(p["severity"], p["code"], p["path"]) for p in document["problems"]] == [("error", "folder.name", str(tmp_path / "train" / "usu dog"))]
    assert document["concepts"][0]["folder"] == str(tmp_path / "train" / "20_usu bear")


def test_the_answers_file_gives_folders_resolution_batch_and_model(tmp_path, tiny_model_dir, capsys):
    train = good_train(tmp_path, "20_zzqx bear")
    make_images(tmp_path / "reg" / "1_bear", 20)
    answers = write_answers(
        tmp_path, tiny_model_dir, train, tmp_path / "reg",
        dataset={"resolution": RESOLUTION, "caption_extension": ".txt"}, training={"batch_size": 4},
    )
    assert main(["dataset", "check", str(answers), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["train_dir"], document["reg_dir"]) == (str(train), str(tmp_path / "reg"))
    assert (document["resolution"], document["batch_size"], document["tokenizer_checked"]) == (RESOLUTION, 4, True)
    assert [p["code"] for p in document["problems"]] == ["token.pieces"]
    assert document["per_epoch"]["steps"] == 200


def test_model_option_checks_the_instance_token_with_its_tokenizer(tmp_path, tiny_model_dir, capsys):
    train = good_train(tmp_path, "20_zzqx bear")
    assert main([*check_args({"train_dir": train}), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "splits the instance token `zzqx` into 4 pieces" in out
    assert "e.g. shs" in out  # the article's tokens that the tiny tokenizer keeps whole


def test_a_model_without_readable_tokenizer_is_a_warning_and_the_rest_is_checked(tmp_path, capsys):
    train = good_train(tmp_path)
    assert main([*check_args({"train_dir": train}), "--model", str(tmp_path / "no-such-model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "the instance token is not checked" in out and "no-such-model.safetensors" in out


def test_an_answers_file_whose_dataset_is_missing_reports_it(tmp_path, capsys):
    answers = write_answers(tmp_path, tmp_path / "model", tmp_path / "train")
    assert main(["dataset", "check", str(answers)]) == 2
    out = capsys.readouterr().out
    assert f"{tmp_path / 'train'}: the training folder does not exist" in out


def test_the_installed_command_reports_a_corrupt_image_without_traceback(tmp_path):
    train = good_train(tmp_path)
    (train / "20_usu bear" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = lora_wizard("dataset", "check", "train", "--resolution", "64", cwd=tmp_path)
    assert result.returncode == 2
    assert "train/20_usu bear/broken.jpg: the image cannot be decoded" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# prepare


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and modification time."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def flat_folder(folder: Path, count: int = 20, names: str = "photo{:04d}.png") -> list[Path]:
    images = make_images(folder, count, names=names)
    images[0].with_suffix(".txt").write_text("usu bear, sitting", encoding="utf-8")
    (folder / "notes.md").write_text("where I took them", encoding="utf-8")
    return images


def test_prepare_builds_a_layout_that_check_passes_and_training_accepts(tmp_path, capsys):
    images = flat_folder(tmp_path / "photos")
    before = snapshot(tmp_path / "photos")

    assert main(["dataset", "prepare", str(tmp_path / "photos"), "--token", "usu", "--class", "bear", "--out", str(tmp_path / "train")]) == 0
    out = capsys.readouterr().out
    concept = tmp_path / "train" / "8_usu bear"  # 150 / 20 images, rounded
    assert f"Prepared {concept}" in out and "left behind (not images or .txt captions): notes.md" in out
    assert sorted(p.name for p in concept.iterdir()) == sorted([*(i.name for i in images), images[0].with_suffix(".txt").name])
    assert os.stat(concept / images[0].name).st_ino == os.stat(images[0]).st_ino  # hard links: no extra space
    assert snapshot(tmp_path / "photos") == before  # the originals: same files, same bytes, untouched

    assert main(["dataset", "check", str(tmp_path / "train"), "--resolution", str(RESOLUTION)]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out
    assert training_accepts(tmp_path / "train")


def test_prepare_leaves_out_and_lists_what_the_check_would_refuse(tmp_path, capsys):
    images = flat_folder(tmp_path / "photos")
    broken = tmp_path / "photos" / "photo9999.png"
    broken.write_bytes(b"not an image")
    broken.with_suffix(".txt").write_text("usu bear, broken", encoding="utf-8")
    images[1].with_suffix(".txt").write_bytes(b"\xff\xfe not utf-8 \x81")

    assert main(["dataset", "prepare", str(tmp_path / "photos"), "--token", "usu", "--class", "bear", "--out", str(tmp_path / "train")]) == 0
    out = capsys.readouterr().out
    assert "left out: photo9999.png: the image cannot be decoded" in out
    assert f"left out: {images[1].with_suffix('.txt').name}: the caption file is not UTF-8 text" in out
    concept = next((tmp_path / "train").iterdir())
    linked = {p.name for p in concept.iterdir()}
    assert broken.name not in linked and broken.with_suffix(".txt").name not in linked  # with its caption
    assert images[1].name not in linked and images[0].name in linked  # the image of the bad caption too
    assert main(["dataset", "check", str(tmp_path / "train"), "--resolution", str(RESOLUTION)]) == 0
    assert "0 errors" in capsys.readouterr().out


def test_prepare_of_only_unusable_images_says_so(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"not an image")
    assert main(["dataset", "prepare", str(tmp_path / "photos"), "--token", "usu", "--class", "bear", "--out", str(tmp_path / "train")]) == 2
    err = capsys.readouterr().err
    assert "none of the images can be used; a.png: the image cannot be decoded" in err
    assert not (tmp_path / "train").exists() or not any((tmp_path / "train").iterdir())


def test_prepare_refuses_to_overwrite_a_concept_folder(tmp_path, capsys):
    flat_folder(tmp_path / "photos")
    args = ["dataset", "prepare", str(tmp_path / "photos"), "--token", "usu", "--class", "bear", "--out", str(tmp_path / "train")]
    assert main(args) == 0
    concept_files = snapshot(tmp_path / "train" / "8_usu bear")
    capsys.readouterr()
    assert main([*args, "--repeats", "3"]) == 2
    err = capsys.readouterr().err
    assert "a concept folder for `usu bear` already exists" in err and "8_usu bear" in err
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["8_usu bear"]
    assert snapshot(tmp_path / "train" / "8_usu bear") == concept_files


def test_prepare_copies_when_it_cannot_link_and_takes_given_repeats(tmp_path, monkeypatch, capsys):
    images = flat_folder(tmp_path / "photos", 5)

    def no_links(*_args, **_kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    args = ["dataset", "prepare", str(tmp_path / "photos"), "--token", "usu", "--class", "bear", "--repeats", "3", "--out", str(tmp_path / "train")]
    assert main(args) == 0
    assert "(6 copied)" in capsys.readouterr().out
    copy = tmp_path / "train" / "3_usu bear" / images[1].name
    assert copy.read_bytes() == images[1].read_bytes() and os.stat(copy).st_ino != os.stat(images[1]).st_ino


def test_prepare_with_japanese_names(tmp_path, capsys):
    flat_folder(tmp_path / "写真", names="画像{}.png")
    assert main(["dataset", "prepare", str(tmp_path / "写真"), "--token", "usu", "--class", "くま", "--out", str(tmp_path / "train")]) == 0
    assert (tmp_path / "train" / "8_usu くま").is_dir()
    assert main(["dataset", "check", str(tmp_path / "train"), "--resolution", str(RESOLUTION)]) == 0
    out = capsys.readouterr().out
    assert "10_usu くま" not in out and "token usu · class くま · 20 images" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", "usu bear", "--class", "bear"], "must be one word"),
        (["--token", "usu", "--class", "bear/cub"], "without path characters"),
        (["--token", "usu", "--class", "bear", "--repeats", "0"], "repeats must be 1 or more"),
    ],
)
def test_prepare_refuses_bad_names_and_repeats(tmp_path, capsys, args, message):
    flat_folder(tmp_path / "photos", 2)
    assert main(["dataset", "prepare", str(tmp_path / "photos"), *args, "--out", str(tmp_path / "train")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "train").exists() or not any((tmp_path / "train").iterdir())


def test_prepare_of_a_folder_without_images_says_so(tmp_path, capsys):
    good_train(tmp_path, count=1)
    assert main(["dataset", "prepare", str(tmp_path / "train"), "--token", "usu", "--class", "bear", "--out", str(tmp_path / "out")]) == 2
    assert "looks like a training root already" in capsys.readouterr().err


def test_the_repeats_rule_aims_at_about_150_images_per_epoch():
    assert [choose_repeats(n) for n in (1, 2, 15, 20, 40, 149, 400)] == [100, 75, 10, 8, 4, 1, 1]
    assert all(100 <= n * choose_repeats(n) <= 200 for n in range(2, 101))


def test_bmp_and_jpeg_sources_keep_their_names(tmp_path):
    from engine.dataset_prepare import prepare_dataset

    source = tmp_path / "photos"
    source.mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(source / "a.jpg")
    Image.new("RGB", (64, 64), (4, 5, 6)).save(source / "a.bmp")
    (source / "a.txt").write_text("usu bear", encoding="utf-8")
    result = prepare_dataset(source, token="usu", class_word="bear", out=tmp_path / "train")
    assert sorted(p.name for p in result.concept_folder.iterdir()) == ["a.bmp", "a.jpg", "a.txt"]
    assert (result.images, result.captions, result.repeats) == (2, 1, 75)
