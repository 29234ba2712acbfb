"""engine.sampling on the tiny model (64 px, 2 steps): kohya prompt lines, samplers, `<lora:name:w>` tags,
seeded images, LoRA weights (0 = exactly the base model), two LoRAs at once, the weight grid, samples
from the training loop's live model, and resumable regularization images."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import UserError
from engine.generate import generate, weight_grid
from engine.image_maker import ImageMaker
from engine.lora_tags import parse_lora_tags, resolve_lora_files
from engine.png_files import png_bytes
from engine.prompts import SamplePrompt, parse_prompt_line, parse_prompts
from engine.reg_images import default_reg_count, generate_regularization
from engine.samplers import sampler_key
from engine.sampling import sample_file_name, sample_images
from tests.conftest import randomize_lora_weights

PROMPT = SamplePrompt("a photo of usu bear", width=64, height=64, steps=2)
SEED = 1234


# --- helpers: LoRA files made with engine.network on the tiny model ----------------------------------------


def random_lora_model(model_dir: Path, *, seed: int, text_encoder: bool):
    """The tiny model with a LoRA whose weights, down and up, are random from `seed` (a fresh LoRA is a no-op)."""
    from engine.families import load_base_model
    from engine.network import add_lora

    model = load_base_model(model_dir)
    add_lora(model, dim=4, alpha=4, train_text_encoder=text_encoder)
    randomize_lora_weights(model, seed=seed, scale=0.3, only_up=False)
    return model


def write_lora(model, path: Path) -> Path:
    import torch

    from engine.network import kohya_state_dict, save_lora_file

    return save_lora_file(path, kohya_state_dict(model, dtype=torch.float32), {}, overwrite=True)


def merged_lora(path_a: Path, weight_a: float, path_b: Path, weight_b: float, out: Path) -> Path:
    """One rank-8 LoRA whose delta is weight_a x A + weight_b x B: [down_A; down_B] and [w_a up_A, w_b up_B].

    Every module gets rank 8 and alpha 8 (scale 1, as A and B have): a module only one of them has
    is padded with zeros, so the file has one alpha for all (diffusers mis-scales mixed alphas).
    """
    import torch
    from safetensors.torch import load_file, save_file

    a, b = load_file(path_a), load_file(path_b)
    stems = {key.rsplit(".", 2)[0] for key in (*a, *b) if key.endswith("lora_down.weight")}
    merged = {}
    for stem in stems:
        downs, ups = [], []
        for tensors, weight, other in ((a, weight_a, b), (b, weight_b, a)):
            down_key, up_key = f"{stem}.lora_down.weight", f"{stem}.lora_up.weight"
            if down_key in tensors:
                downs.append(tensors[down_key])
                ups.append(tensors[up_key] * weight)
            else:
                downs.append(torch.zeros_like(other[down_key]))
                ups.append(torch.zeros_like(other[up_key]))
        merged[f"{stem}.lora_down.weight"] = torch.cat(downs, dim=0).contiguous()
        merged[f"{stem}.lora_up.weight"] = torch.cat(ups, dim=1).contiguous()
        merged[f"{stem}.alpha"] = torch.tensor(8.0)
    save_file(merged, out)
    return out


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """`usu.safetensors` (UNet + text encoder) and `style.safetensors` (UNet only), with nonzero weights."""
    folder = tmp_path_factory.mktemp("loras")
    write_lora(random_lora_model(tiny_model_dir, seed=1, text_encoder=True), folder / "usu.safetensors")
    write_lora(random_lora_model(tiny_model_dir, seed=2, text_encoder=False), folder / "sub" / "style.safetensors")
    return folder


@pytest.fixture(scope="module")
def maker(tiny_model_dir) -> ImageMaker:
    return ImageMaker.from_path(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def base_image(maker) -> Image.Image:
    return generate(maker, PROMPT.prompt, PROMPT, [SEED])[0].image


# --- kohya prompt lines --------------------------------------------------------------------------------


def test_a_prompt_line_reads_every_kohya_option():
    line = "a photo of usu bear, smiling --n blurry, lowres --w 512 --h 768 --s 20 --l 6.5 --d 42 --ss dpmpp_2m"
    assert parse_prompt_line(line) == SamplePrompt(
        "a photo of usu bear, smiling", negative="blurry, lowres", width=512, height=768, steps=20, cfg=6.5, seed=42, sampler="dpmpp_2m"
    )


def test_options_a_line_omits_come_from_the_defaults_and_case_does_not_matter():
    defaults = SamplePrompt("", width=64, height=64, steps=2, cfg=3.0, sampler="ddim")
    assert parse_prompt_line("usu bear --D 7 --SS k_euler_a", defaults) == replace(defaults, prompt="usu bear", seed=7, sampler="euler_a")


def test_sides_are_rounded_down_to_a_multiple_of_8_and_steps_clamped_as_kohya_does():
    prompt = parse_prompt_line("x --w 100 --h 30 --s 5000")
    assert (prompt.width, prompt.height, prompt.steps) == (96, 64, 1000)


def test_a_prompt_file_skips_comments_and_blank_lines():
    text = "# samples\n\nfirst --d 1\n  \n#second --d 2\nthird\n"
    assert [p.prompt for p in parse_prompts(text)] == ["first", "third"]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("x --q 3", "unknown prompt option `--q`"),
        ("x --w wide", "`--w` needs a number"),
        ("x --n", "`--n` needs a value"),
        (" --d 3", "without a prompt"),
        ("x --ss warp_drive", "unknown sampler `warp_drive`"),
    ],
)
def test_a_bad_prompt_line_is_a_clear_error(line, says):
    with pytest.raises(UserError) as caught:
        parse_prompt_line(line, where="prompts.txt")
    assert says in caught.value.render()


@pytest.mark.parametrize(("name", "key"), [("Euler a", "euler_a"), ("k_euler", "euler"), ("DPM++ 2M", "dpmpp_2m"), ("dpmsolver++", "dpmpp_2m"), ("DPM++ 2M Karras", "dpmpp_2m_karras"), ("PLMS", "pndm")])
def test_sampler_names_of_kohya_and_the_web_ui_are_understood(name, key):
    assert sampler_key(name) == key


def test_each_sampler_maps_to_its_diffusers_scheduler_with_the_models_config(maker):
    from engine.pipelines import build_scheduler

    schedulers = {name: build_scheduler(maker.model, name) for name in ("euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim")}
    assert type(schedulers["euler_a"]).__name__ == "EulerAncestralDiscreteScheduler"
    assert type(schedulers["dpmpp_2m"]).__name__ == "DPMSolverMultistepScheduler"
    assert schedulers["dpmpp_2m"].config.algorithm_type == "dpmsolver++"
    assert schedulers["dpmpp_2m_karras"].config.use_karras_sigmas
    for scheduler in schedulers.values():
        assert scheduler.config.beta_schedule == maker.model.objective.scheduler.config.beta_schedule
        assert scheduler.config.prediction_type == maker.model.objective.prediction_type


# --- <lora:name:weight> tags ---------------------------------------------------------------------------


def test_lora_tags_are_taken_out_of_the_prompt_with_their_weights():
    clean, tags = parse_lora_tags("a photo of usu bear <lora:usu:0.8>, forest <LORA:style-v1.0> <lora:x:-0.5>")
    assert clean == "a photo of usu bear , forest"
    assert tags == [("usu", 0.8), ("style-v1.0", 1.0), ("x", -0.5)]


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ("bear <lora:usu:strong>", "malformed LoRA tag `<lora:usu:strong>`: the weight `strong` is not a number"),
        ("bear <lora:usu:0.8", "malformed LoRA tag `<lora:usu:0.8`"),
        ("bear <lora::1>", "malformed LoRA tag `<lora::1`"),
        ("bear <lora:usu:1:2>", "malformed LoRA tag"),
    ],
)
def test_a_malformed_tag_is_a_clear_error(prompt, says):
    with pytest.raises(UserError) as caught:
        parse_lora_tags(prompt)
    assert says in caught.value.render()
    assert "<lora:usu_bear:0.8>" in caught.value.render()  # the fix shows a good tag


def test_a_lora_named_twice_is_an_error():
    with pytest.raises(UserError, match="LoRA `usu` is named twice"):
        parse_lora_tags("<lora:usu> bear <lora:usu:0.5>")


def test_a_missing_lora_lists_the_loras_found(lora_dir):
    with pytest.raises(UserError) as caught:
        resolve_lora_files(["usu", "bare"], lora_dir)
    message = caught.value.render()
    assert "no LoRA named `bare`" in message
    assert "LoRAs found here: style, usu" in message
    assert str(lora_dir) in message


def test_a_missing_lora_in_an_empty_folder_says_so(tmp_path):
    with pytest.raises(UserError) as caught:
        resolve_lora_files(["usu"], tmp_path)
    assert "holds no .safetensors files" in caught.value.render()
    assert "--lora-dir" in caught.value.render()


# --- images --------------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_image(maker, base_image, tiny_model_dir):
    again = ImageMaker.from_path(tiny_model_dir, device="cpu")  # a fresh load, as a rerun does
    first = generate(again, PROMPT.prompt, PROMPT, [SEED])[0]
    assert png_bytes(first.image) == png_bytes(base_image)
    assert first.image.size == (64, 64)
    other = generate(maker, PROMPT.prompt, PROMPT, [SEED + 1])[0]
    assert png_bytes(other.image) != png_bytes(base_image)


def test_a_batch_gives_each_seed_its_own_image(maker, base_image):
    batch = maker.images(PROMPT, [SEED + 1, SEED])
    # Batched convolutions round differently in the last bits: the same image, not the same bytes.
    assert np.abs(pixels(batch[1]) - pixels(base_image)).max() <= 1
    assert np.abs(pixels(batch[0]) - pixels(base_image)).max() > 10


def test_weight_0_is_exactly_the_base_model_and_weight_1_differs(maker, base_image, lora_dir):
    zero = generate(maker, f"{PROMPT.prompt} <lora:usu:0>", PROMPT, [SEED], lora_dir=lora_dir)[0]
    one = generate(maker, f"{PROMPT.prompt} <lora:usu:1>", PROMPT, [SEED], lora_dir=lora_dir)[0]
    half = generate(maker, f"{PROMPT.prompt} <lora:usu:0.5>", PROMPT, [SEED], lora_dir=lora_dir)[0]
    assert png_bytes(zero.image) == png_bytes(base_image)
    assert np.abs(pixels(one.image) - pixels(base_image)).max() > 10
    assert png_bytes(half.image) not in (png_bytes(one.image), png_bytes(base_image))
    assert "<lora:usu:1>" in one.parameters and "Seed: 1234" in one.parameters and "Sampler: Euler a" in one.parameters


def test_a_loaded_lora_left_out_of_the_prompt_is_off(maker, base_image, lora_dir):
    generate(maker, f"{PROMPT.prompt} <lora:usu:1>", PROMPT, [SEED], lora_dir=lora_dir)
    assert png_bytes(generate(maker, PROMPT.prompt, PROMPT, [SEED])[0].image) == png_bytes(base_image)


def test_a_lora_that_does_not_fit_is_refused_and_leaves_the_model_as_it_was(maker, base_image, lora_dir, tmp_path):
    """diffusers drops layers naming no module without a word, and fails half-way on wrong shapes."""
    import torch
    from safetensors.torch import load_file, save_file

    from engine.errors import ModelFileError

    tensors = load_file(lora_dir / "usu.safetensors")
    renamed = {key.replace("down_blocks_0", "down_blocks_9"): value for key, value in tensors.items()}
    save_file(renamed, tmp_path / "other_model.safetensors")
    wider = {k: torch.zeros(v.shape[0], 2 * v.shape[1], *v.shape[2:]) if k.endswith("lora_down.weight") else v for k, v in tensors.items()}
    save_file(wider, tmp_path / "wider.safetensors")
    with pytest.raises(ModelFileError, match=r"only \d+ of the \d+ layers of this LoRA match the base model"):
        generate(maker, "bear <lora:other_model>", PROMPT, [SEED], lora_dir=tmp_path)
    with pytest.raises(ModelFileError, match="size mismatch"):
        generate(maker, "bear <lora:wider>", PROMPT, [SEED], lora_dir=tmp_path)
    assert png_bytes(generate(maker, PROMPT.prompt, PROMPT, [SEED])[0].image) == png_bytes(base_image)
    assert png_bytes(generate(maker, f"{PROMPT.prompt} <lora:usu:0>", PROMPT, [SEED], lora_dir=lora_dir)[0].image) == png_bytes(base_image)


def test_two_loras_at_once_add_their_weighted_deltas(maker, base_image, lora_dir, tmp_path):
    both = generate(maker, f"{PROMPT.prompt} <lora:usu:0.7> <lora:style:0.3>", PROMPT, [SEED], lora_dir=lora_dir)[0]
    usu_only = generate(maker, f"{PROMPT.prompt} <lora:usu:0.7>", PROMPT, [SEED], lora_dir=lora_dir)[0]
    style_only = generate(maker, f"{PROMPT.prompt} <lora:style:0.3>", PROMPT, [SEED], lora_dir=lora_dir)[0]
    # The reference: one LoRA file holding 0.7 x usu + 0.3 x style, loaded at weight 1.
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    merged_lora(lora_dir / "usu.safetensors", 0.7, lora_dir / "sub" / "style.safetensors", 0.3, merged_dir / "merged.safetensors")
    reference = generate(maker, f"{PROMPT.prompt} <lora:merged:1>", PROMPT, [SEED], lora_dir=merged_dir)[0]
    assert np.abs(pixels(both.image) - pixels(reference.image)).max() <= 1
    for single in (usu_only.image, style_only.image, base_image):
        assert np.abs(pixels(both.image) - pixels(single)).max() > 3


def test_the_grid_has_one_labelled_cell_per_weight_at_the_requested_size(maker, base_image, lora_dir):
    weights = [0, 0.5, 1]
    prompt = replace(PROMPT, width=64, height=72)
    grid = weight_grid(maker, f"{PROMPT.prompt} <lora:usu:0.8>", prompt, weights, [SEED, SEED + 1], lora_dir=lora_dir)
    top = grid.label_height
    assert grid.image.size == (3 * 64, top + 2 * 72)
    assert [len(row) for row in grid.cells] == [3, 3]
    for row in range(2):
        for column in range(3):
            cell = grid.image.crop((column * 64, top + row * 72, (column + 1) * 64, top + (row + 1) * 72))
            assert cell.size == (64, 72)
            assert png_bytes(cell) == png_bytes(grid.cells[row][column])
    # A cell is exactly what `generate` makes at its weight: weight 0 is the base model.
    for weight, column in ((0, 0), (1, 2)):
        expected = generate(maker, f"{PROMPT.prompt} <lora:usu:{weight}>", prompt, [SEED + 1], lora_dir=lora_dir)[0].image
        assert png_bytes(grid.cells[1][column]) == png_bytes(expected)
    assert png_bytes(grid.cells[0][0]) == png_bytes(generate(maker, PROMPT.prompt, prompt, [SEED])[0].image)
    assert png_bytes(grid.cells[0][1]) != png_bytes(grid.cells[0][2])
    # Each column's label is drawn (dark pixels on white) and says something different.
    labels = [np.asarray(grid.image.crop((c * 64, 0, (c + 1) * 64, top)).convert("L")) for c in range(3)]
    assert all((label < 128).sum() > 10 for label in labels)
    assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])


def test_samples_from_the_live_training_model_match_its_saved_lora(tiny_model_dir, maker, lora_dir, tmp_path):
    """What the training loop samples is what the saved LoRA gives in diffusers; training state is left as it was."""
    import torch

    live = random_lora_model(tiny_model_dir, seed=1, text_encoder=True)  # the same weights as usu.safetensors
    live.denoiser.train()
    live.text_encoders[0].train()
    rng_before = torch.get_rng_state()
    prompts = [replace(PROMPT, seed=SEED), replace(PROMPT, prompt="a bear", seed=None)]
    paths = sample_images(live, prompts, tmp_path / "samples", name="tiny", step=100, seed=42)
    assert [p.name for p in paths][0] == sample_file_name("tiny", 0, SEED, step=100) == f"tiny_000100_00_{SEED}.png"
    assert paths[1].name.startswith("tiny_000100_01_")
    assert live.denoiser.training and live.text_encoders[0].training and live.denoiser.down_blocks[0].training
    assert torch.equal(torch.get_rng_state(), rng_before)
    from_file = generate(maker, f"{PROMPT.prompt} <lora:usu:1>", PROMPT, [SEED], lora_dir=lora_dir)[0].image
    assert np.abs(pixels(Image.open(paths[0])) - pixels(from_file)).max() <= 1
    # The same call again writes the same bytes (no timestamp in the name or the file).
    again = sample_images(live, prompts, tmp_path / "again", name="tiny", step=100, seed=42)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    assert "parameters" in Image.open(io.BytesIO(paths[0].read_bytes())).info


def test_epoch_samples_are_named_after_the_epoch():
    assert sample_file_name("usu", 3, 7, step=40, epoch=2) == "usu_e000002_03_7.png"


# --- regularization images -----------------------------------------------------------------------------


def test_reg_images_resume_after_an_interruption_writing_only_the_missing_ones(maker, tmp_path):
    reg_root = tmp_path / "reg"
    settings = dict(seed=5, size=64, steps=2)

    def interrupt_after_two(done, total, path):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_regularization(maker, "bear", reg_root, 4, progress=interrupt_after_two, **settings)
    folder = reg_root / "1_bear"
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png"]
    (folder / ".0002.png.abc123.tmp").write_bytes(b"half a png")  # what a killed atomic write leaves
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir() if not p.name.startswith(".")}

    seen = []
    result = generate_regularization(maker, "bear", reg_root, 4, progress=lambda d, t, p: seen.append((d, t, p.name)), **settings)
    assert [p.name for p in result.written] == ["0002.png", "0003.png"]
    assert [p.name for p in result.kept] == ["0000.png", "0001.png"]
    assert seen == [(3, 4, "0002.png"), (4, 4, "0003.png")]
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    for name, (mtime, data) in kept.items():
        assert (folder / name).stat().st_mtime_ns == mtime and (folder / name).read_bytes() == data
    assert Image.open(folder / "0003.png").size == (64, 64)
    assert "Steps: 2" in Image.open(folder / "0003.png").info["parameters"]

    # Each image is seeded by its number: a deleted one comes back with the same bytes.
    original = (folder / "0001.png").read_bytes()
    os.remove(folder / "0001.png")
    again = generate_regularization(maker, "bear", reg_root, 4, **settings)
    assert [p.name for p in again.written] == ["0001.png"]
    assert (folder / "0001.png").read_bytes() == original
    assert len({(folder / f"{i:04d}.png").read_bytes() for i in range(4)}) == 4


def test_a_complete_reg_folder_needs_no_model(tmp_path):
    folder = tmp_path / "reg" / "1_bear"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "0000.png")
    result = generate_regularization(tmp_path / "no-model-here", "bear", tmp_path / "reg", 1)
    assert result.written == [] and [p.name for p in result.kept] == ["0000.png"]


def test_the_default_reg_count_is_5_per_training_image(tiny_dataset):
    train_dir, _ = tiny_dataset
    assert default_reg_count(train_dir) == 5 * 4


def test_a_class_that_cannot_be_a_folder_name_is_refused(tmp_path):
    with pytest.raises(UserError, match="cannot be a folder name"):
        generate_regularization(tmp_path / "model", "bear/cat", tmp_path / "reg", 3)
