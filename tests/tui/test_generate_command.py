"""`lora-wizard generate` and `lora-wizard reg generate` on the tiny model (64 px, 2 steps): files, seeds,
the weight grid, the errors a user sees (exit 2, no traceback), and resumable regularization images."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.config import load_answers, save_answers
from tests.conftest import write_answers
from tests.engine.test_sampling import random_lora_model, write_lora
from tui_lora.cli import main

FAST = ["--size", "64", "--steps", "2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_lora(random_lora_model(tiny_model_dir, seed=1, text_encoder=True), folder / "usu_bear.safetensors")
    return folder


def generate(model: Path, *args: str) -> int:
    return main(["generate", "--model", str(model), *args])


# --- generate ------------------------------------------------------------------------------------------


def test_the_same_command_twice_writes_the_same_bytes(tiny_model_dir, lora_dir, tmp_path, capsys):
    prompt = "a photo of usu bear <lora:usu_bear:0.8>"
    for name in ("first.png", "second.png"):
        status = generate(tiny_model_dir, prompt, "--lora-dir", str(lora_dir), "--seed", "7", "--out", str(tmp_path / name), *FAST)
        assert status == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "first.png"), str(tmp_path / "second.png")]
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()
    image = Image.open(tmp_path / "first.png")
    assert image.size == (64, 64)
    assert image.info["parameters"].startswith(prompt + "\nSteps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 64x64")


def test_several_images_go_to_a_folder_numbered_after_those_there(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "images"
    assert generate(tiny_model_dir, "a bear", "--seed", "7", "--count", "2", "--out", str(out), "--sampler", "DPM++ 2M", *FAST) == 0
    assert generate(tiny_model_dir, "a bear", "--seed", "7", "--out", str(out), "--sampler", "dpmpp_2m", *FAST) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000-7.png", "00001-8.png", "00002-7.png"]
    assert (out / "00000-7.png").read_bytes() == (out / "00002-7.png").read_bytes()
    assert (out / "00000-7.png").read_bytes() != (out / "00001-8.png").read_bytes()
    assert "Sampler: DPM++ 2M" in Image.open(out / "00001-8.png").info["parameters"]


def test_without_a_seed_a_random_one_is_chosen_and_printed(tiny_model_dir, tmp_path, capsys):
    assert generate(tiny_model_dir, "a bear", "--out", str(tmp_path / "x.png"), *FAST) == 0
    seed = capsys.readouterr().err.split("seed ")[1].split()[0]
    assert f"Seed: {seed}," in Image.open(tmp_path / "x.png").info["parameters"]


def test_weights_make_one_grid_with_a_labelled_cell_per_weight(tiny_model_dir, lora_dir, tmp_path, capsys):
    out = tmp_path / "grids"
    args = ["a photo of usu bear <lora:usu_bear>", "--lora-dir", str(lora_dir), "--seed", "3", "--out", str(out)]
    assert generate(tiny_model_dir, *args, "--weights", "0,0.5,1", "--size", "64x72", "--steps", "2") == 0
    (grid_path,) = out.iterdir()
    assert grid_path.name == "grid-00000-3.png"
    grid = Image.open(grid_path)
    label_height = grid.height - 72
    assert grid.width == 3 * 64 and 0 < label_height < 72
    assert "Grid: usu_bear at weights 0, 0.5, 1, seeds 3..3" in grid.info["parameters"]
    # The weight-0 cell is the base model's image at that seed.
    assert generate(tiny_model_dir, "a photo of usu bear", "--seed", "3", "--out", str(tmp_path / "base.png"), "--size", "64x72", "--steps", "2") == 0
    cell = grid.crop((0, label_height, 64, grid.height))
    assert list(cell.convert("RGB").getdata()) == list(Image.open(tmp_path / "base.png").convert("RGB").getdata())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["a bear <lora:usu_bear:0.8> <lora:nope:1>"], "no LoRA named `nope` (LoRAs found here: usu_bear)"),
        (["a bear <lora:usu_bear:lots>"], "malformed LoRA tag `<lora:usu_bear:lots>`"),
        (["a bear", "--size", "100x64"], "--size 100x64: 100 is not a multiple of 8"),
        (["a bear", "--out", "x.jpg"], "images are written as PNG"),
        (["a bear", "--out", "x.png", "--count", "2"], "--count makes 2 images"),
        (["a bear <lora:usu_bear>", "--weights", "0,half"], "--weights '0,half' is not a list of numbers"),
        (["a bear", "--sampler", "warp"], "unknown sampler `warp`"),
    ],
)
def test_bad_input_is_one_clear_message_and_exit_2(args, says, lora_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status = generate(tmp_path / "no-model-needed", *args, "--lora-dir", str(lora_dir))
    err = capsys.readouterr().err
    assert status == 2
    assert says in err
    assert "Traceback" not in err


def test_a_missing_lora_from_the_installed_command_has_no_traceback(lora_dir, tmp_path):
    command = [shutil.which("lora-wizard")] if shutil.which("lora-wizard") else [sys.executable, "-m", "tui_lora.cli"]
    done = subprocess.run(
        [*command, "generate", "--model", str(tmp_path), "bear <lora:usu_baer:1>", "--lora-dir", str(lora_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "no LoRA named `usu_baer`" in done.stderr and "usu_bear" in done.stderr
    assert "Traceback" not in done.stderr


# --- reg generate --------------------------------------------------------------------------------------


def reg(*args: str) -> int:
    return main(["reg", "generate", *args])


def test_reg_generate_writes_n_images_and_a_second_call_only_the_missing_ones(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "reg"
    args = ["--model", str(tiny_model_dir), "--class", "bear", "--count", "3", "--out", str(out), *FAST]
    assert reg(*args) == 0
    captured = capsys.readouterr()
    folder = out / "1_bear"
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert "reg: 3 images of `bear`" in captured.err and "reg: 3/3 0002.png" in captured.err
    assert captured.out.strip() == f"3 images written, 0 kept: {folder}"

    (folder / "0001.png").unlink()  # an interrupted or pruned folder
    kept = {name: (folder / name).stat().st_mtime_ns for name in ("0000.png", "0002.png")}
    assert reg(*args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"1 images written, 2 kept: {folder}"
    assert "reg: 3/3 0001.png" in captured.err  # 3 of 3 there once it is written
    assert {name: (folder / name).stat().st_mtime_ns for name in kept} == kept

    assert reg(*args) == 0  # complete: nothing to make, no model loaded
    assert "reg: loading" not in capsys.readouterr().err


def test_reg_count_defaults_to_5_per_training_image(tiny_model_dir, tmp_path, capsys):
    concept = tmp_path / "train" / "10_usu bear"
    concept.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(concept / "one.png")
    assert reg("--model", str(tiny_model_dir), "--class", "bear", "--train", str(tmp_path / "train"), "--out", str(tmp_path / "reg"), *FAST) == 0
    assert len(list((tmp_path / "reg" / "1_bear").glob("*.png"))) == 5


def test_reg_generate_reads_the_model_folders_and_resolution_from_an_answers_file(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    train, _ = tiny_dataset
    answers = write_answers(tmp_path / "run", tiny_model_dir, train, tmp_path / "new-reg")
    assert reg(str(answers), "--class", "bear", "--count", "2", "--steps", "2") == 0
    images = sorted((tmp_path / "new-reg" / "1_bear").iterdir())
    assert [p.name for p in images] == ["0000.png", "0001.png"]
    assert Image.open(images[0]).size == (64, 64)  # [dataset] resolution = 64


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--class", "bear", "--count", "3", "--out", "reg"], "no base model given"),
        (["--model", "m", "--class", "bear", "--out", "reg"], "how many images?"),
        (["--model", "m", "--class", "bear", "--count", "3"], "no regularization folder given"),
        (["--model", "m", "--class", "a/b", "--count", "3", "--out", "reg"], "`a/b` cannot be a folder name"),
        (["--model", "m", "--class", "bear", "--count", "0", "--out", "reg"], "--count 0 must be 1 or more"),
    ],
)
def test_reg_generate_bad_input_is_one_clear_message_and_exit_2(args, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert reg(*args) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


# --- another VAE: [model] vae in an answers file, or --vae ---------------------------------------------


@pytest.fixture(scope="module")
def other_vae(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model's VAE with its decoder's last layer changed: the same latents decode to another image."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model_dir, subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(1.5)
        vae.decoder.conv_out.bias.add_(0.3)
    folder = tmp_path_factory.mktemp("other-vae") / "vae"
    vae.save_pretrained(folder)
    return folder


def set_vae(answers_path: Path, vae: Path) -> Path:
    """The answers file at `answers_path` (written by the test) with `[model] vae` set, through the project's loader and saver."""
    answers = load_answers(answers_path, check_paths=False)
    answers.model.vae = vae
    return save_answers(answers, answers_path, overwrite=True)


def pixels(path: Path) -> tuple[tuple[int, int], bytes]:
    """An image's size and RGB bytes."""
    with Image.open(path) as image:
        return image.size, image.convert("RGB").tobytes()


def test_the_answers_files_vae_replaces_the_models_own(tiny_model_dir, tiny_dataset, other_vae, tmp_path, capsys):
    train, _ = tiny_dataset
    same = ["a bear", "--seed", "5", "--steps", "2"]
    assert generate(tiny_model_dir, *same, "--size", "64", "--out", str(tmp_path / "base.png")) == 0
    assert generate(tiny_model_dir, *same, "--size", "64", "--vae", str(other_vae), "--out", str(tmp_path / "vae.png")) == 0
    # The answers file gives the model, its VAE and the size (its resolution, 64 px).
    with_vae = set_vae(write_answers(tmp_path / "with-vae", tiny_model_dir, train), other_vae)
    without = write_answers(tmp_path / "without", tiny_model_dir, train)
    for answers, name in ((with_vae, "answers-vae.png"), (without, "answers-plain.png")):
        assert main(["generate", "--answers", str(answers), *same, "--out", str(tmp_path / name)]) == 0
    assert pixels(tmp_path / "answers-vae.png")[0] == (64, 64)
    assert pixels(tmp_path / "vae.png") != pixels(tmp_path / "base.png")
    assert pixels(tmp_path / "answers-vae.png") == pixels(tmp_path / "vae.png")
    assert pixels(tmp_path / "answers-plain.png") == pixels(tmp_path / "base.png")


def test_a_vae_that_is_not_there_is_one_message(tiny_model_dir, tmp_path, capsys):
    status = generate(tiny_model_dir, "a bear", "--vae", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png"), *FAST)
    err = capsys.readouterr().err
    assert status == 2 and "`[model] vae`: nothing at this path" in err and "Traceback" not in err
    assert main(["generate", "a bear"]) == 2
    assert "no base model given" in capsys.readouterr().err


def reg_images(folder: Path) -> list[tuple[tuple[int, int], bytes]]:
    return [pixels(path) for path in sorted(folder.glob("*.png"))]


def test_reg_generate_uses_the_answers_files_vae_and_vae_on_the_command_line_wins(tiny_model_dir, tiny_dataset, other_vae, tmp_path, capsys):
    train, _ = tiny_dataset
    same = ["--class", "bear", "--count", "2", "--steps", "2", "--seed", "5"]
    plain = write_answers(tmp_path / "plain", tiny_model_dir, train, tmp_path / "reg-plain")
    with_vae = set_vae(write_answers(tmp_path / "with-vae", tiny_model_dir, train, tmp_path / "reg-vae"), other_vae)
    assert reg(str(plain), *same) == 0
    assert reg(str(with_vae), *same) == 0
    # --vae with --model, no answers file; and --vae naming the model's own VAE over the answers file's.
    assert reg("--model", str(tiny_model_dir), "--vae", str(other_vae), "--out", str(tmp_path / "reg-option"), "--size", "64", *same) == 0
    own_vae = tiny_model_dir / "vae"
    assert reg(str(with_vae), "--vae", str(own_vae), "--out", str(tmp_path / "reg-own"), *same) == 0
    base = reg_images(tmp_path / "reg-plain" / "1_bear")
    assert len(base) == 2 and base[0][0] == (64, 64)
    assert reg_images(tmp_path / "reg-vae" / "1_bear") != base
    assert reg_images(tmp_path / "reg-option" / "1_bear") == reg_images(tmp_path / "reg-vae" / "1_bear")
    assert reg_images(tmp_path / "reg-own" / "1_bear") == base


@pytest.mark.parametrize("variant", ["loha", "lokr_full", "locon_dora"])
def test_a_lycoris_file_makes_a_weight_grid_whose_cells_differ(variant, tiny_model_dir, tmp_path, capsys):
    """LoHa, LoKr and DoRA files, which diffusers does not read, load through `<lora:name:w>` too."""
    import torch

    from engine.network import kohya_state_dict, save_lora_file
    from tests.engine.test_network_types import trained_like

    folder = tmp_path / "loras"
    folder.mkdir()
    save_lora_file(folder / "net.safetensors", kohya_state_dict(trained_like(tiny_model_dir, variant), dtype=torch.float16), {})
    out = tmp_path / "grids"
    args = ["a photo of usu bear <lora:net>", "--lora-dir", str(folder), "--seed", "3", "--out", str(out)]
    assert generate(tiny_model_dir, *args, "--weights", "0,1", "--size", "64x64", "--steps", "2") == 0
    grid = Image.open(next(out.iterdir()))
    top = grid.height - 64
    cells = [grid.crop((x, top, x + 64, grid.height)).tobytes() for x in (0, 64)]
    assert cells[0] != cells[1]
