"""SDXL on a tiny SDXL-shaped model (engine/tiny_sdxl.py), offline: loading, conditioning, training, kohya's names.

The checked-in list tests/engine/data/sdxl_lora_modules.txt holds kohya's 986 SDXL module stems
(722 UNet in the original SGM naming, 72 CLIP-L `lora_te1_`, 192 OpenCLIP bigG `lora_te2_`), produced
from the real SDXL configuration (engine/families/configs/sdxl) built without weights. Regenerate it
(only when the naming is meant to change) with:

    python -m tests.engine.test_sdxl --write-sdxl-list
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.config import answers_from_dict, load_answers
from engine.errors import ModelFileError, UserError
from engine.events import EventLog
from engine.families import ImageGeometry, LoadedModel, inspect_base_model, load_base_model
from engine.families.sdxl import SDXL, time_ids
from engine.families.sgm_names import block_table, sdxl_block_table, sgm_module_path, sgm_state_dict
from engine.families.templates import load_template
from engine.generate import generate
from engine.image_maker import ImageMaker
from engine.network import (
    add_lora,
    kohya_metadata,
    kohya_module_stems,
    kohya_state_dict,
    save_lora_file,
)
from engine.plan import prepare_plan
from engine.png_files import png_bytes
from engine.prompts import SamplePrompt
from engine.sampling import sample_images
from engine.tiny import write_synthetic_dataset
from engine.tiny_sdxl import write_tiny_sdxl_single_file
from engine.train import Trainer
from tests.conftest import (
    copy_with_nan_vae,
    library_warnings,
    randomize_lora_weights,
    relative_difference,
    write_answers,
)

DATA = Path(__file__).parent / "data"
SDXL_LIST = DATA / "sdxl_lora_modules.txt"
SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
RESOLUTION = 96  # buckets of 64x128, 96x96 and 128x64 (multiples of 32, area up to 96x96)
BUCKETS = {"buckets": True, "min_bucket": 64, "max_bucket": 128, "bucket_step": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the reference list ----------------------------------------------------------------------------


def real_sdxl_models():
    """SDXL's UNet and both text encoders from the shipped configs, on the meta device (no weights)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(load_template("sdxl", "unet"))
        first = CLIPTextModel(CLIPTextConfig(**load_template("sdxl", "text_encoder")))
        second = CLIPTextModelWithProjection(CLIPTextConfig(**load_template("sdxl", "text_encoder_2")))
    return unet, first, second


def sdxl_module_stems() -> list[str]:
    unet, first, second = real_sdxl_models()
    return kohya_module_stems(SDXL, unet, [first, second])


def checked_in_stems() -> list[str]:
    return SDXL_LIST.read_text(encoding="utf-8").split()


# --- names -----------------------------------------------------------------------------------------


def test_sdxl_stems_match_checked_in_list():
    stems = sdxl_module_stems()
    assert stems == checked_in_stems()
    assert len(stems) == 986  # kohya: "create LoRA for U-Net: 722 modules", te1 72, te2 192
    assert sum(s.startswith("lora_unet_") for s in stems) == 722
    assert sum(s.startswith("lora_te1_text_model_encoder_layers_") for s in stems) == 72
    assert sum(s.startswith("lora_te2_text_model_encoder_layers_") for s in stems) == 192
    # Names as kohya's SDXL LoRAs spell them, block by block (input 4-8, middle 1, output 0-5).
    for stem in (
        "lora_unet_input_blocks_4_1_proj_in",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k",
        "lora_unet_input_blocks_7_1_transformer_blocks_9_ff_net_0_proj",
        "lora_unet_input_blocks_8_1_proj_out",
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        "lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_out_0",
        "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_v",
        "lora_unet_output_blocks_3_1_transformer_blocks_1_attn1_to_out_0",
        "lora_unet_output_blocks_5_1_proj_out",
        "lora_te1_text_model_encoder_layers_11_mlp_fc2",
        "lora_te2_text_model_encoder_layers_31_self_attn_out_proj",
    ):
        assert stem in stems
    assert not any(part in s for s in stems for part in ("down_blocks", "up_blocks", "mid_block", "attentions"))
    assert "lora_unet_input_blocks_1_1_proj_in" not in stems  # SDXL's first level has no attention


def test_sgm_table_is_the_inverse_of_diffusers_single_file_converter():
    """Renaming every SDXL UNet tensor to SGM names and back with diffusers' own converter gives each
    tensor its own name again: ResNets, samplers, embeddings and attention blocks alike."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet, _, _ = real_sdxl_models()
    state_dict = unet.state_dict()
    original = sgm_state_dict(state_dict, dict(unet.config))
    assert "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight" in original
    assert "input_blocks.3.0.op.weight" in original and "output_blocks.2.2.conv.weight" in original
    assert "label_emb.0.0.weight" in original and "middle_block.2.out_layers.3.weight" in original
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in original.items()}, dict(unet.config))
    assert back.keys() == state_dict.keys()
    assert all(back[key] is state_dict[key] for key in state_dict)


def test_sgm_names_map_back_with_diffusers_lora_converter():
    """diffusers reads kohya's SDXL UNet keys back to its own module paths: every one of the 722."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    from engine.network import unet_lora_targets

    unet, _, _ = real_sdxl_models()
    paths = unet_lora_targets(unet)
    sgm_keys = {f"{SDXL.kohya_unet_name(path)}.lora_down.weight": torch.zeros(1) for path in paths}
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(sgm_keys), unet.config)
    # It renumbers the blocks and keeps the block words, which _convert_unet_lora_key renames next.
    words = {"lora_unet_input_blocks_": "lora_unet_down_blocks_", "lora_unet_middle_block_": "lora_unet_mid_block_",
             "lora_unet_output_blocks_": "lora_unet_up_blocks_"}
    renamed = []
    for key in mapped:
        for sgm_word, diffusers_word in words.items():
            key = key.replace(sgm_word, diffusers_word)
        renamed.append(key)
    assert sorted(renamed) == sorted(f"lora_unet_{path.replace('.', '_')}.lora_down.weight" for path in paths)


def test_block_table_follows_the_layout():
    table = sdxl_block_table()
    assert table["down_blocks.1.attentions.1"] == "input_blocks.5.1"
    assert table["down_blocks.2.attentions.0"] == "input_blocks.7.1"
    assert table["mid_block.attentions.0"] == "middle_block.1"
    assert table["up_blocks.0.attentions.2"] == "output_blocks.2.1"
    assert table["up_blocks.1.upsamplers.0"] == "output_blocks.5.2"
    assert "up_blocks.2.attentions.0" not in table and "up_blocks.2.upsamplers.0" not in table
    assert sgm_module_path("down_blocks.0.resnets.1.conv_shortcut", table) == "input_blocks.2.0.skip_connection"
    # SD 1.5's layout (4 levels, attention first): the same rule gives the LDM names.
    sd15 = block_table(load_template("sd1", "unet"))
    assert sd15["down_blocks.0.attentions.0"] == "input_blocks.1.1"
    assert sd15["up_blocks.0.upsamplers.0"] == "output_blocks.2.1"  # no attention in that level: index 1
    with pytest.raises(KeyError, match="no original"):
        sgm_module_path("down_blocks.0.attentions.0.proj_in", table)  # SDXL's level 0 has no attention


# --- the tiny model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_dir(tiny_sdxl_model_dir) -> Path:
    return tiny_sdxl_model_dir


@pytest.fixture(scope="module")
def sdxl_file(sdxl_dir, tmp_path_factory) -> Path:
    return write_tiny_sdxl_single_file(sdxl_dir, tmp_path_factory.mktemp("tiny-sdxl-file") / "tiny_sdxl.safetensors")


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """kohya folders whose images are landscape (2:1), portrait (1:2) and square."""
    from PIL import Image

    train_dir, reg_dir = write_synthetic_dataset(tmp_path_factory.mktemp("sdxl-data"), images=4, reg_images=4, size=96)
    images = sorted((train_dir / "10_usu bear").glob("*.png"))
    Image.open(images[0]).resize((192, 96)).save(images[0])
    Image.open(images[1]).resize((96, 192)).save(images[1])
    return train_dir, reg_dir


def test_tiny_model_has_sdxl_shape(sdxl_dir):
    model = load_base_model(sdxl_dir)
    assert model.family is SDXL and len(model.text_encoders) == 2 and len(model.tokenizers) == 2
    config = model.denoiser.config
    assert config.addition_embed_type == "text_time" and config.use_linear_projection
    assert list(config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    widths = [encoder.config.hidden_size for encoder in model.text_encoders]
    assert widths[0] != widths[1] and config.cross_attention_dim == sum(widths)
    assert model.tokenizers[1].pad_token == "!" and model.tokenizers[0].pad_token == "<|endoftext|>"
    # Every tiny stem is a real SDXL stem, in the same order: the tiny model has SDXL's names.
    stems = kohya_module_stems(SDXL, model.denoiser, model.text_encoders)
    reference = checked_in_stems()
    assert [s for s in reference if s in set(stems)] == stems
    info = inspect_base_model(sdxl_dir)
    assert (info.family, info.label, info.layout) == ("sdxl", "SDXL", "diffusers folder")


def test_conditioning_as_diffusers_sdxl_pipeline(sdxl_dir):
    """encode() gives what StableDiffusionXLPipeline.encode_prompt gives: penultimate layers side by
    side, the second encoder's pooled projection; clip skip 2 is the pipeline's clip_skip=1."""
    from diffusers import StableDiffusionXLPipeline

    model = load_base_model(sdxl_dir)
    pipeline = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    caption = "a photo of usu bear"
    with torch.no_grad():
        for clip_skip, pipeline_skip in ((1, None), (2, 1)):
            ours = SDXL.encode(model, SDXL.tokenize(model, [caption]), clip_skip)
            theirs, _, pooled, _ = pipeline.encode_prompt(caption, do_classifier_free_guidance=False, clip_skip=pipeline_skip)
            assert ours["encoder_hidden_states"].shape == (1, 77, 80)
            torch.testing.assert_close(ours["encoder_hidden_states"], theirs)
            torch.testing.assert_close(ours["text_embeds"], pooled)
    # time_ids as the pipeline's _get_add_time_ids: original (h, w), crop (top, left), target (h, w).
    geometry = ImageGeometry(original=(300, 200), crop_top_left=(0, 10), target=(128, 64))
    expected = pipeline._get_add_time_ids((200, 300), (0, 10), (64, 128), dtype=torch.float32, text_encoder_projection_dim=48)
    torch.testing.assert_close(time_ids([geometry]), expected)


def test_size_conditioning_reaches_the_unet(sdxl_dir):
    model = load_base_model(sdxl_dir)
    with torch.no_grad():
        conditioning = SDXL.encode(model, SDXL.tokenize(model, ["usu bear"]), 1)
        latents = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(0))
        timestep = torch.tensor([400])
        plain = SDXL.predict(model, latents, timestep, conditioning, [ImageGeometry((128, 64), (0, 0), (128, 64))])
        cropped = SDXL.predict(model, latents, timestep, conditioning, [ImageGeometry((512, 128), (0, 96), (128, 64))])
        default = SDXL.predict(model, latents, timestep, conditioning)  # no geometry: the latents' own size
    assert not torch.allclose(plain, cropped)
    torch.testing.assert_close(default, plain)


# --- training and the file it writes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(sdxl_dir, mixed_dataset, tmp_path_factory):
    """The tiny SDXL model trained (UNet and both text encoders) on mixed aspect ratios, fp32 output."""
    train_dir, reg_dir = mixed_dataset
    answers = write_answers(
        tmp_path_factory.mktemp("sdxl-run"), sdxl_dir, train_dir, reg_dir,
        dataset={"resolution": RESOLUTION, **BUCKETS},
        training={"max_steps": 6, "batch_size": 2, "unet_lr": 1e-2, "text_encoder_lr": 1e-2},
        output={"dtype": "fp32"},
    )
    plan = prepare_plan(load_answers(answers))
    events = []
    trainer = Trainer(plan, EventLog(None, listeners=[events.append]))
    trainer.setup()
    trainer.run()
    return trainer, events


def test_training_uses_buckets_and_each_images_geometry(trained):
    trainer, events = trained
    plan = trainer.plan
    assert plan.family_label == "SDXL"
    assert set(plan.bucket_counts()) == {(128, 64), (64, 128), (96, 96)}
    landscape = next(p for p, size in plan.sizes.items() if size == (128, 64))
    assert trainer.geometry(landscape) == ImageGeometry((192, 96), (0, 0), (128, 64))
    losses = [event["loss"] for event in events if event["kind"] == "step"]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.te_params  # both text encoders trained: te1 and te2 LoRA weights
    assert {name.split(".")[0] for name in trainer.state.lora()} == {"unet", "te0", "te1"}


def saved_file(trainer: Trainer) -> Path:
    return trainer.answers.lora_path


def test_file_holds_only_kohya_keys_with_sdxl_names(trained):
    trainer, _ = trained
    tensors = load_file(saved_file(trainer))
    suffixes = (".lora_down.weight", ".lora_up.weight", ".alpha")
    assert all(key.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) and key.endswith(suffixes) for key in tensors)
    stems = list(dict.fromkeys(key.split(".", 1)[0] for key in tensors))
    assert len(tensors) == 3 * len(stems)
    assert set(stems) <= set(checked_in_stems())
    assert any(s.startswith("lora_te1_") for s in stems) and any(s.startswith("lora_te2_") for s in stems)
    assert tensors["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"].shape == (4, 48)  # linear, not 1x1 conv


def test_metadata_is_sdxl(trained):
    trainer, _ = trained
    with safe_open(saved_file(trainer), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["ss_v2"] == "False"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["modelspec.implementation"] == SGM_IMPLEMENTATION
    assert metadata["modelspec.prediction_type"] == "epsilon"
    assert metadata["ss_resolution"] == "(96, 96)" and metadata["modelspec.resolution"] == "96x96"
    assert metadata["ss_network_module"] == "networks.lora"


def test_metadata_at_sdxl_default_resolution(sdxl_dir, mixed_dataset):
    """With no resolution in the answers, an SDXL run trains at 1024 and says so as kohya does."""
    train_dir, reg_dir = mixed_dataset
    answers = answers_from_dict(
        {"model": {"path": str(sdxl_dir)}, "dataset": {"train_dir": str(train_dir)}, "output": {"name": "usu_bear"}}
    )
    plan = prepare_plan(answers)
    assert plan.resolution == 1024
    stats = {
        "started_at": 1.0, "finished_at": 2.0, "steps": 10, "epoch": 1, "max_train_steps": 10, "num_train_images": 40,
        "num_reg_images": 0, "num_batches_per_epoch": 40, "resolution": plan.resolution, "dataset_dirs": {},
        "reg_dataset_dirs": {}, "tag_frequency": {}, "session_id": 1, "mixed_precision": "bf16",
    }
    metadata = kohya_metadata(model=load_base_model(sdxl_dir), answers=answers, stats=stats)
    assert metadata["ss_resolution"] == "(1024, 1024)" and metadata["modelspec.resolution"] == "1024x1024"
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"


@torch.no_grad()
def model_outputs(unet, first, second, tokenizers) -> list[torch.Tensor]:
    """CLIP-L penultimate hidden states, bigG penultimate hidden states and pooled projection, and the
    UNet's prediction on them, for a fixed caption, latent and size conditioning."""
    caption = ["a photo of usu bear"]
    ids = [t(caption, padding="max_length", max_length=t.model_max_length, return_tensors="pt").input_ids for t in tokenizers]
    first_hidden = first(ids[0], output_hidden_states=True).hidden_states[-2]
    second_out = second(ids[1], output_hidden_states=True)
    context = torch.cat([first_hidden, second_out.hidden_states[-2]], dim=-1)
    latents = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(7))
    added = {"text_embeds": second_out.text_embeds, "time_ids": time_ids([ImageGeometry((192, 96), (0, 0), (128, 64))])}
    prediction = unet(latents, torch.tensor([500]), encoder_hidden_states=context, added_cond_kwargs=added).sample
    return [first_hidden, second_out.hidden_states[-2], second_out.text_embeds, prediction]


def diffusers_outputs(model_dir: Path, lora_file: Path) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """(base outputs, outputs with the LoRA, warnings) of a fresh StableDiffusionXLPipeline loading `lora_file`."""
    import diffusers  # noqa: F401  (its import logs about torchvision: before the capture)
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(model_dir, dtype=torch.float32)
    parts = (pipeline.unet, pipeline.text_encoder, pipeline.text_encoder_2, (pipeline.tokenizer, pipeline.tokenizer_2))
    base = model_outputs(*parts)
    with library_warnings() as messages:
        pipeline.load_lora_weights(lora_file)
    return base, model_outputs(*parts), messages


def engine_outputs(model: LoadedModel) -> list[torch.Tensor]:
    return model_outputs(model.denoiser, *model.text_encoders, model.tokenizers)


def test_diffusers_loads_the_trained_file_like_the_engine(trained, sdxl_dir):
    trainer, _ = trained
    engine = engine_outputs(trainer.outputs.unwrapped_model())
    base, loaded, messages = diffusers_outputs(sdxl_dir, saved_file(trainer))
    assert messages == []  # no "not loaded", unexpected or missing keys
    for got, want in zip(loaded, engine, strict=True):  # te1, te2 hidden states, te2 pooled, UNet
        assert relative_difference(got, want) < 1e-5
    for got, want in zip(base, engine, strict=True):
        assert relative_difference(got, want) > 3e-2  # the trained LoRA changes every output


def randomized_lora(model_dir: Path, scale: float = 0.1) -> LoadedModel:
    """The model with a LoRA whose up weights are random (a fresh LoRA changes nothing)."""
    model = load_base_model(model_dir)
    torch.manual_seed(0)  # the down weights' random start: the same LoRA on every call
    add_lora(model, dim=4, alpha=2.0, train_text_encoder=True)  # alpha != dim: the scale must carry over
    randomize_lora_weights(model, seed=1, scale=scale)
    return model


def test_diffusers_puts_each_sgm_key_on_its_own_layer(sdxl_dir, tmp_path):
    """A strong LoRA on every layer reproduces exactly; the same weights with two same-shaped blocks
    swapped (input_blocks 4 and 5) do not: a wrong SGM name would load onto the wrong layer silently."""
    model = randomized_lora(sdxl_dir)
    engine = engine_outputs(model)
    tensors = kohya_state_dict(model, dtype=torch.float32)
    path = save_lora_file(tmp_path / "strong.safetensors", tensors, {})
    base, loaded, messages = diffusers_outputs(sdxl_dir, path)
    assert messages == []
    for got, want in zip(loaded, engine, strict=True):
        assert relative_difference(got, want) < 1e-5
    for got, want in zip(base, engine, strict=True):
        assert relative_difference(got, want) > 3e-2

    def swap(key: str) -> str:
        return key.replace("input_blocks_4_", "input_blocks_X_").replace("input_blocks_5_", "input_blocks_4_").replace("input_blocks_X_", "input_blocks_5_")

    swapped = save_lora_file(tmp_path / "swapped.safetensors", {swap(k): v for k, v in tensors.items()}, {})
    _, wrong, messages = diffusers_outputs(sdxl_dir, swapped)
    assert messages == []  # diffusers loads it without a word ...
    assert relative_difference(wrong[3], engine[3]) > 1e-2  # ... onto the wrong layers


# --- a single SGM-layout file ----------------------------------------------------------------------


def test_single_file_loads_offline_as_the_folder(sdxl_file, sdxl_dir):
    from_file = load_base_model(sdxl_file)
    from_folder = load_base_model(sdxl_dir)
    assert from_file.family is SDXL and from_file.objective.prediction_type == "epsilon"
    for part in ("denoiser", "vae"):
        file_config, folder_config = dict(getattr(from_file, part).config), dict(getattr(from_folder, part).config)
        assert {k: v for k, v in file_config.items() if k != "sample_size" and not k.startswith("_")} == {
            k: v for k, v in folder_config.items() if k != "sample_size" and not k.startswith("_")
        }
    for got, want in zip(engine_outputs(from_file), engine_outputs(from_folder), strict=True):
        assert relative_difference(got, want) < 1e-5
    with torch.no_grad():
        pixels = torch.rand(1, 3, 64, 64) * 2 - 1
        torch.testing.assert_close(from_file.vae.encode(pixels).latent_dist.mean, from_folder.vae.encode(pixels).latent_dist.mean)
    info = inspect_base_model(sdxl_file)
    assert (info.family, info.layout, info.prediction, info.tokenizer) == ("sdxl", "single file", "epsilon", sdxl_file.parent / "tokenizer")


def test_single_file_without_tokenizer_2_pads_like_sdxl(sdxl_file, sdxl_dir, tmp_path):
    """With only `tokenizer/` beside the file, the second tokenizer is the first padding with "!": the
    same token ids as SDXL's own tokenizer_2."""
    alone = tmp_path / sdxl_file.name
    alone.symlink_to(sdxl_file)
    shutil.copytree(sdxl_file.parent / "tokenizer", tmp_path / "tokenizer")
    model = load_base_model(alone)
    reference = load_base_model(sdxl_dir)
    assert "padding with" in model.notes[-1]
    captions = ["a photo of usu bear", "red dog"]
    for ours, theirs in zip(SDXL.tokenize(model, captions), SDXL.tokenize(reference, captions), strict=True):
        assert torch.equal(ours, theirs)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_single_file_tokenizers_from_the_hugging_face_cache(sdxl_file, empty_hf_cache, tmp_path):
    """SDXL's tokenizer/ and tokenizer_2/ in the hub cache, as a download of the base model leaves them."""
    snapshot = empty_hf_cache / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / "0123abc"
    for part in ("tokenizer", "tokenizer_2"):
        shutil.copytree(sdxl_file.parent / part, snapshot / part)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc", encoding="utf-8")
    alone = tmp_path / "models" / sdxl_file.name
    alone.parent.mkdir()
    alone.symlink_to(sdxl_file)
    model = load_base_model(alone)
    assert f"{snapshot / 'tokenizer'} (Hugging Face cache)" in model.notes[-1]
    assert f"second tokenizer: {snapshot / 'tokenizer_2'}" in model.notes[-1]
    assert model.tokenizers[1].pad_token == "!"


def test_single_file_without_any_tokenizer_says_where_it_looked(sdxl_file, empty_hf_cache, tmp_path):
    alone = tmp_path / sdxl_file.name
    alone.symlink_to(sdxl_file)
    assert inspect_base_model(alone).tokenizer is None
    with pytest.raises(ModelFileError, match="no tokenizer for this model") as caught:
        load_base_model(alone)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in str(caught.value)


def test_single_file_trains(sdxl_file, mixed_dataset, tmp_path):
    train_dir, _ = mixed_dataset
    answers = write_answers(tmp_path, sdxl_file, train_dir, dataset={"resolution": RESOLUTION, **BUCKETS}, training={"max_steps": 2})
    plan = prepare_plan(load_answers(answers))
    trainer = Trainer(plan, EventLog(None))
    trainer.setup()
    result = trainer.run()
    assert result.steps == 2 and result.lora_path.is_file()
    stems = {key.split(".", 1)[0] for key in load_file(result.lora_path)}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in stems
    assert any(stem.startswith("lora_te2_") for stem in stems)


def _keys_file(path: Path, keys: list[str]) -> Path:
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    return path


def test_incomplete_or_refiner_files_are_refused(tmp_path):
    unet_and_vae = ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"]
    refiner = _keys_file(tmp_path / "refiner.safetensors", [*unet_and_vae, "conditioner.embedders.0.model.token_embedding.weight"])
    with pytest.raises(ModelFileError, match="SDXL refiner"):
        inspect_base_model(refiner)
    no_second = _keys_file(
        tmp_path / "half.safetensors", [*unet_and_vae, "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"]
    )
    with pytest.raises(ModelFileError, match="no second .OpenCLIP bigG. text encoder"):
        load_base_model(no_second)


# --- images: generate and samples during training --------------------------------------------------

SAMPLE = SamplePrompt("a photo of usu bear", width=64, height=64, steps=2)
SAMPLE_SEED = 1234


def image_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def sdxl_lora_dir(sdxl_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sdxl-loras")
    save_lora_file(folder / "usu.safetensors", kohya_state_dict(randomized_lora(sdxl_dir, scale=0.3), dtype=torch.float32), {})
    return folder


def test_generate_with_lora_tags(sdxl_dir, sdxl_lora_dir):
    """`<lora:usu:0>` is exactly the base model's image; weight 1 differs."""
    maker = ImageMaker.from_path(sdxl_dir, device="cpu")
    base = generate(maker, SAMPLE.prompt, SAMPLE, [SAMPLE_SEED])[0].image
    zero = generate(maker, f"{SAMPLE.prompt} <lora:usu:0>", SAMPLE, [SAMPLE_SEED], lora_dir=sdxl_lora_dir)[0].image
    one = generate(maker, f"{SAMPLE.prompt} <lora:usu:1>", SAMPLE, [SAMPLE_SEED], lora_dir=sdxl_lora_dir)[0].image
    assert base.size == (64, 64)
    assert png_bytes(zero) == png_bytes(base)
    assert np.abs(image_array(one) - image_array(base)).mean() > 1


def test_samples_from_the_live_model_match_its_saved_lora(sdxl_dir, sdxl_lora_dir, tmp_path):
    live = randomized_lora(sdxl_dir, scale=0.3)  # the weights of usu.safetensors
    paths = sample_images(live, [replace(SAMPLE, seed=SAMPLE_SEED)], tmp_path, name="tiny", step=10, seed=42)
    maker = ImageMaker.from_path(sdxl_dir, device="cpu")
    from_file = generate(maker, f"{SAMPLE.prompt} <lora:usu:1>", SAMPLE, [SAMPLE_SEED], lora_dir=sdxl_lora_dir)[0].image
    assert np.abs(image_array(Image.open(paths[0])) - image_array(from_file)).max() <= 1


# --- failures ---------------------------------------------------------------------------------------


def test_nan_latents_fail_the_run(sdxl_dir, mixed_dataset, tmp_path):
    """A VAE that gives NaN (SDXL's does in fp16) stops the run before any step, recorded as failed."""
    from engine.launch import execute_run
    from engine.run_folder import create_run_folder

    broken = copy_with_nan_vae(sdxl_dir, tmp_path / "broken")
    train_dir, _ = mixed_dataset
    plan = prepare_plan(load_answers(write_answers(tmp_path / "run", broken, train_dir, dataset={"resolution": RESOLUTION})))
    folder = create_run_folder(plan.answers)
    assert execute_run(plan, folder) == 1
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert events[-1]["kind"] == "failed" and "NaN" in events[-1]["message"]
    assert not any(event["kind"] == "step" for event in events)
    assert not plan.answers.lora_path.exists()


# --- resume -------------------------------------------------------------------------------------------

RESUME_STEPS = 8


def engine_process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tui_lora.cli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def test_sigkill_then_resume_is_exact(sdxl_dir, mixed_dataset, tmp_path):
    """Killed after step 5 (checkpoint at step 4), resumed: the LoRA of both text encoders and the
    UNet is bit for bit the one of an uninterrupted run."""
    from engine.train import train

    settings = {
        "dataset": {"resolution": RESOLUTION, **BUCKETS},
        "training": {"max_steps": RESUME_STEPS, "log_every_steps": 1},
        "checkpoints": {"every_steps": 4},
    }
    reference = write_answers(tmp_path / "reference", sdxl_dir, *mixed_dataset, **settings)
    train(prepare_plan(load_answers(reference)), EventLog(None))
    expected = load_file(load_answers(reference).lora_path)

    answers = write_answers(tmp_path / "killed", sdxl_dir, *mixed_dataset, **settings)
    engine = engine_process("train", str(answers))
    for line in engine.stdout:
        event = json.loads(line)
        assert event["kind"] not in ("finished", "failed"), event
        if event["kind"] == "step" and event["step"] >= 5:
            engine.send_signal(signal.SIGKILL)
            break
    engine.wait(timeout=60)
    out, err = engine_process("resume", str(tmp_path / "killed" / "output" / "tiny.run")).communicate(timeout=600)
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["step"] for e in events if e["kind"] == "resumed"] == [4], err[-3000:]
    assert events[-1]["kind"] == "finished" and events[-1]["steps"] == RESUME_STEPS
    resumed = load_file(load_answers(answers).lora_path)
    assert resumed.keys() == expected.keys() and any(k.startswith("lora_te2_") for k in resumed)
    assert all(torch.equal(resumed[key], expected[key]) for key in expected)


# --- the demo ---------------------------------------------------------------------------------------


def test_sdxl_demo_trains_headless(tmp_path):
    """`lora-wizard demo --sdxl DIR --headless`: the tiny SDXL model trained offline, UNet only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tui_lora.cli", "demo", "--sdxl", str(tmp_path / "demo"), "--headless"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["kind"] == "finished"
    lora = Path(events[-1]["lora"])
    assert lora.name == "usu_bear_sdxl.safetensors"
    keys = load_file(lora).keys()
    assert keys and all(key.startswith("lora_unet_") for key in keys)  # kohya's SDXL advice: UNet only
    with safe_open(lora, framework="pt") as handle:
        assert handle.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"


def test_demo_folder_of_the_other_family_is_refused(tmp_path):
    from engine.demo import create_demo

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}", encoding="utf-8")  # an SD 1.x demo's model
    with pytest.raises(UserError, match="holds the SD 1.x demo, not the SDXL one"):
        create_demo(tmp_path, sdxl=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-sdxl-list"]:
        sys.exit("usage: python -m tests.engine.test_sdxl --write-sdxl-list")
    SDXL_LIST.parent.mkdir(parents=True, exist_ok=True)
    SDXL_LIST.write_text("\n".join(sdxl_module_stems()) + "\n", encoding="utf-8")
    print(f"wrote {SDXL_LIST}")
