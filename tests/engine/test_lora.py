"""LoRA injection and kohya's file format, on the tiny SD 1.x model (offline).

The checked-in list tests/engine/data/sd15_lora_modules.txt holds the 264 kohya module stems of
SD 1.5 (192 UNet + 72 text encoder), produced from the real SD 1.5 configuration built without
weights. Regenerate it (only when the naming is meant to change) with:

    python -m tests.engine.test_lora --write-sd15-list
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from engine.config import Answers, answers_from_dict
from engine.errors import ModelFileError, UserError
from engine.families import LoadedModel, load_base_model
from engine.network import (
    add_lora,
    kohya_metadata,
    kohya_module_stems,
    kohya_state_dict,
    load_lora_file_into,
    lora_parameters,
    save_lora_file,
)
from engine.tiny import build_tiny_sd1_pipeline
from engine.tiny_sdxl import build_tiny_sdxl_pipeline
from tests.conftest import library_warnings, randomize_lora_weights, relative_difference

DATA = Path(__file__).parent / "data"
SD15_LIST = DATA / "sd15_lora_modules.txt"
SD15_CONFIGS = Path(__file__).parents[2] / "engine" / "families" / "configs" / "sd15"
TE_LAYER = re.compile(r"^lora_te_text_model_encoder_layers_(\d+)_")

# Every metadata key lora-wizard writes, spelled as sd-scripts' train_network.py and
# library/sai_model_spec.py write them (sshs_* are added by save_lora_file).
KOHYA_METADATA_KEYS = {
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr",
    "ss_unet_lr", "ss_num_train_images", "ss_num_reg_images", "ss_num_batches_per_epoch", "ss_num_epochs",
    "ss_gradient_checkpointing", "ss_gradient_accumulation_steps", "ss_max_train_steps", "ss_lr_warmup_steps",
    "ss_lr_scheduler", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_dropout",
    "ss_network_args", "ss_mixed_precision", "ss_full_fp16", "ss_v2", "ss_base_model_version", "ss_clip_skip",
    "ss_max_token_length", "ss_cache_latents", "ss_seed", "ss_noise_offset", "ss_min_snr_gamma",
    "ss_max_grad_norm", "ss_optimizer", "ss_prior_loss_weight", "ss_batch_size_per_device",
    "ss_total_batch_size", "ss_resolution", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency",
    "ss_sd_model_name", "ss_training_finished_at", "ss_steps", "ss_epoch",
    "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation", "modelspec.title",
    "modelspec.resolution", "modelspec.date", "modelspec.prediction_type", "modelspec.implementation_version",
}


# --- the reference list ----------------------------------------------------------------------------


def sd15_module_stems() -> list[str]:
    """kohya stems of the real SD 1.5 UNet and text encoder, built on the meta device (no weights)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.families.registry import FAMILIES

    unet_config = json.loads((SD15_CONFIGS / "unet.json").read_text(encoding="utf-8"))
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(SD15_CONFIGS / "text_encoder.json"))
    return kohya_module_stems(FAMILIES["sd1"], unet, [text_encoder])


def checked_in_stems() -> list[str]:
    return SD15_LIST.read_text(encoding="utf-8").split()


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd1_pipeline(tmp_path_factory.mktemp("lora_tiny_sd1") / "model")


def lora_model(
    tiny_dir: Path, *, dim: int = 4, alpha: float = 2.0, train_text_encoder: bool = True, seed: int | None = None
) -> LoadedModel:
    model = load_base_model(tiny_dir)
    if seed is not None:  # the LoRA's random down weights come from the global generator, as in a run
        torch.manual_seed(seed)
    add_lora(model, dim=dim, alpha=alpha, train_text_encoder=train_text_encoder)
    return model


def answers_for(tiny_dir: Path, **training: object) -> Answers:
    return answers_from_dict(
        {
            "model": {"path": str(tiny_dir)},
            "dataset": {"train_dir": "train", "reg_dir": "reg"},
            "network": {"dim": 4, "alpha": 2},
            "training": {"epochs": 3, "batch_size": 2, **training},
            "output": {"name": "usu_bear"},
        }
    )


def run_stats(**changes: object) -> dict:
    stats = {
        "started_at": 1_764_000_000.25,
        "finished_at": 1_764_000_600.5,
        "steps": 60,
        "epoch": 3,
        "max_train_steps": 60,
        "num_train_images": 40,
        "num_reg_images": 40,
        "num_batches_per_epoch": 20,
        "resolution": 512,
        "dataset_dirs": {"10_usu bear": {"n_repeats": 10, "img_count": 4}},
        "reg_dataset_dirs": {"1_bear": {"n_repeats": 1, "img_count": 8}},
        "tag_frequency": {"10_usu bear": {"usu bear": 4}},
        "session_id": 123456789,
        "mixed_precision": "fp16",
    }
    stats.update(changes)
    return stats


def fixed_inputs(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    token_ids = model.family.tokenize(model, ["a photo of usu bear"])[0]
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    return token_ids, latents, torch.tensor([500])


@torch.no_grad()
def outputs(unet, text_encoder, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(text-encoder hidden states, UNet prediction) of a fixed caption and latent."""
    token_ids, latents, timesteps = inputs
    hidden = text_encoder(token_ids)[0]
    return hidden, unet(latents, timesteps, encoder_hidden_states=hidden).sample


def load_with_diffusers(tiny_dir: Path, lora_file: Path, inputs) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """(base outputs, outputs with the LoRA, warnings) of a fresh diffusers pipeline loading `lora_file`."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_dir)
    base = outputs(pipeline.unet, pipeline.text_encoder, inputs)
    with library_warnings() as messages:
        pipeline.load_lora_weights(lora_file)
    return base, outputs(pipeline.unet, pipeline.text_encoder, inputs), messages


# --- names -----------------------------------------------------------------------------------------


def test_sd15_stems_match_checked_in_list():
    stems = sd15_module_stems()
    assert stems == checked_in_stems()
    assert len(stems) == 264
    assert sum(stem.startswith("lora_unet_") for stem in stems) == 192
    assert sum(stem.startswith("lora_te_text_model_encoder_layers_") for stem in stems) == 72


def test_tiny_export_uses_sd15_names_and_kohya_shapes(tiny_dir):
    model = lora_model(tiny_dir, dim=4)
    tensors = kohya_state_dict(model, dtype=torch.float16)
    stems = list(dict.fromkeys(key.split(".", 1)[0] for key in tensors))
    reference = checked_in_stems()
    layers = model.text_encoders[0].config.num_hidden_layers
    unet_reference = [s for s in reference if s.startswith("lora_unet_")]
    text_reference = [s for s in reference if (m := TE_LAYER.match(s)) and int(m.group(1)) < layers]
    assert stems == unet_reference + text_reference
    assert len(tensors) == 3 * len(stems)  # down, up, alpha and nothing else
    for stem in stems:
        assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= tensors.keys()
    for tensor in tensors.values():
        assert tensor.dtype == torch.float16 and tensor.device.type == "cpu" and tensor.is_contiguous()
    proj_in = "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert tensors[f"{proj_in}.lora_down.weight"].shape == (4, 32, 1, 1)
    assert tensors[f"{proj_in}.lora_up.weight"].shape == (32, 4, 1, 1)
    to_k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # cross-attention: 32 -> 32
    assert tensors[f"{to_k}.lora_down.weight"].shape == (4, 32)
    fc1 = "lora_te_text_model_encoder_layers_1_mlp_fc1"  # 32 -> 64
    assert tensors[f"{fc1}.lora_down.weight"].shape == (4, 32)
    assert tensors[f"{fc1}.lora_up.weight"].shape == (64, 4)
    assert {tensors[f"{stem}.alpha"].item() for stem in stems} == {2.0}
    assert tensors[f"{fc1}.alpha"].shape == ()


# --- injection -------------------------------------------------------------------------------------


def test_add_lora_trains_only_float32_lora_weights(tiny_dir):
    model = lora_model(tiny_dir, dim=4)
    unet_weights, text_weights = lora_parameters(model)
    assert len(unet_weights) == 2 * 192 and len(text_weights) == 2 * 12
    trainable = [p for part in (model.denoiser, model.vae, *model.text_encoders) for p in part.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in unet_weights + text_weights}
    assert len(trainable) == len(unet_weights) + len(text_weights)

    model.denoiser.half()
    model.text_encoders[0].half()
    unet_after, text_after = lora_parameters(model)
    assert [id(p) for p in unet_after + text_after] == [id(p) for p in unet_weights + text_weights]
    assert {p.dtype for p in unet_after + text_after} == {torch.float32}
    assert model.denoiser.conv_in.weight.dtype == torch.float16  # the base stays as cast


def test_add_lora_without_text_encoder(tiny_dir):
    model = lora_model(tiny_dir, train_text_encoder=False)
    unet_weights, text_weights = lora_parameters(model)
    assert len(unet_weights) == 2 * 192 and text_weights == []
    assert not any(p.requires_grad for p in model.text_encoders[0].parameters())
    assert not any(key.startswith("lora_te_") for key in kohya_state_dict(model, dtype=torch.float32))


# --- metadata and hashes ---------------------------------------------------------------------------


def test_metadata_spelled_as_kohya(tiny_dir):
    model = load_base_model(tiny_dir)
    metadata = kohya_metadata(model=model, answers=answers_for(tiny_dir), stats=run_stats())
    assert set(metadata) == KOHYA_METADATA_KEYS
    assert all(isinstance(value, str) for value in metadata.values())
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_v2"] == "False"
    assert metadata["ss_network_dim"] == "4"
    assert metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_output_name"] == "usu_bear"
    assert metadata["ss_resolution"] == "(512, 512)"
    assert metadata["ss_num_epochs"] == "3"
    assert metadata["ss_total_batch_size"] == "2"
    assert metadata["ss_optimizer"] == "torch.optim.adamw.AdamW"
    assert metadata["ss_training_started_at"] == "1764000000.25"
    assert metadata["ss_noise_offset"] == "None" and metadata["ss_min_snr_gamma"] == "None"
    assert json.loads(metadata["ss_dataset_dirs"]) == {"10_usu bear": {"n_repeats": 10, "img_count": 4}}
    assert json.loads(metadata["ss_tag_frequency"]) == {"10_usu bear": {"usu bear": 4}}
    assert metadata["modelspec.sai_model_spec"] == "1.0.1"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.implementation"] == "diffusers"
    assert metadata["modelspec.title"] == "usu_bear"
    assert metadata["modelspec.resolution"] == "512x512"
    assert metadata["modelspec.prediction_type"] == "epsilon"
    assert metadata["modelspec.date"].startswith("2025-11-2")  # local time of 1764000600

    with_clip_skip = kohya_metadata(model=model, answers=answers_for(tiny_dir, clip_skip=2, noise_offset=0.05), stats=run_stats())
    assert with_clip_skip["modelspec.encoder_layer"] == "2"
    assert with_clip_skip["ss_clip_skip"] == "2"
    assert with_clip_skip["ss_noise_offset"] == "0.05"


def test_saved_hashes_match_sd_scripts_algorithm(tiny_dir, tmp_path):
    model = lora_model(tiny_dir, dim=32)  # large enough to reach the legacy hash window at 1 MiB
    randomize_lora_weights(model)
    tensors = kohya_state_dict(model, dtype=torch.float32)
    metadata = kohya_metadata(model=model, answers=answers_for(tiny_dir), stats=run_stats())
    path = save_lora_file(tmp_path / "usu_bear.safetensors", tensors, metadata)

    data = path.read_bytes()
    assert len(data) > 0x100000 + 0x10000
    with safe_open(path, framework="pt") as handle:
        saved_metadata = handle.metadata()
    assert saved_metadata == {**metadata, "sshs_model_hash": saved_metadata["sshs_model_hash"], "sshs_legacy_hash": saved_metadata["sshs_legacy_hash"]}
    # Independent recomputation: serialize what the file holds with only its ss_* metadata.
    reloaded = load_file(path)
    hashed = save(reloaded, {k: v for k, v in saved_metadata.items() if k.startswith("ss_")})
    header_end = 8 + int.from_bytes(hashed[:8], "little")
    assert saved_metadata["sshs_model_hash"] == hashlib.sha256(hashed[header_end:]).hexdigest()
    assert saved_metadata["sshs_legacy_hash"] == hashlib.sha256(hashed[0x100000:0x110000]).hexdigest()[:8]
    # The model hash covers the tensor bytes only, so the real file gives the same one.
    file_header_end = 8 + int.from_bytes(data[:8], "little")
    assert saved_metadata["sshs_model_hash"] == hashlib.sha256(data[file_header_end:]).hexdigest()


def test_existing_file_is_not_overwritten(tiny_dir, tmp_path):
    model = lora_model(tiny_dir)
    tensors = kohya_state_dict(model, dtype=torch.float16)
    path = save_lora_file(tmp_path / "usu_bear.safetensors", tensors, {"ss_output_name": "usu_bear"})
    before = path.read_bytes()
    randomize_lora_weights(model)
    changed = kohya_state_dict(model, dtype=torch.float16)
    with pytest.raises(UserError) as caught:
        save_lora_file(path, changed, {"ss_output_name": "usu_bear"})
    assert "usu_bear.safetensors" in str(caught.value) and "overwrite = true" in str(caught.value)
    assert path.read_bytes() == before
    save_lora_file(path, changed, {"ss_output_name": "usu_bear"}, overwrite=True)
    assert path.read_bytes() != before
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


# --- diffusers loads the file as the engine trained it ---------------------------------------------


def test_diffusers_loads_the_export_like_the_engine(tiny_dir, tmp_path):
    import diffusers  # noqa: F401  (imported before logs are captured: its import logs about torchvision)

    model = lora_model(tiny_dir, dim=4, alpha=2.0)  # alpha != dim: the scale must carry over
    randomize_lora_weights(model)
    inputs = fixed_inputs(model)
    engine = outputs(model.denoiser, model.text_encoders[0], inputs)
    metadata = kohya_metadata(model=model, answers=answers_for(tiny_dir), stats=run_stats())
    tolerance = {torch.float32: 1e-5, torch.float16: 3e-3}
    for dtype, allowed in tolerance.items():
        path = save_lora_file(tmp_path / f"{dtype}.safetensors", kohya_state_dict(model, dtype=dtype), metadata)
        base, loaded, messages = load_with_diffusers(tiny_dir, path, inputs)
        assert messages == []  # no "not loaded", unexpected or missing keys
        for got, want in zip(loaded, engine, strict=True):  # text-encoder hidden states, UNet prediction
            assert relative_difference(got, want) < allowed
        for got, want in zip(base, engine, strict=True):
            assert relative_difference(got, want) > 3e-2  # the LoRA really changes both models

    # The warning check above can fail: keys of a text-encoder layer the model lacks are reported.
    wrong_layer = {k.replace("_layers_1_", "_layers_5_"): v for k, v in kohya_state_dict(model, dtype=torch.float32).items()}
    path = save_lora_file(tmp_path / "wrong_layer.safetensors", wrong_layer, metadata)
    _, _, messages = load_with_diffusers(tiny_dir, path, inputs)
    assert any("encoder.layers.5." in message for message in messages)


# --- [network] init_from ---------------------------------------------------------------------------


def saved_lora(tiny_dir: Path, folder: Path, *, dim: int = 4, alpha: float = 2.0) -> tuple[LoadedModel, Path]:
    model = lora_model(tiny_dir, dim=dim, alpha=alpha)
    randomize_lora_weights(model)
    path = save_lora_file(folder / "start.safetensors", kohya_state_dict(model, dtype=torch.float32), {})
    return model, path


def test_init_from_round_trip(tiny_dir, tmp_path):
    trained, path = saved_lora(tiny_dir, tmp_path)
    fresh = lora_model(tiny_dir)
    load_lora_file_into(fresh, path)
    for loaded, original in zip(sum(lora_parameters(fresh), []), sum(lora_parameters(trained), []), strict=True):
        assert torch.equal(loaded, original)


def test_init_from_other_alpha_keeps_the_effect(tiny_dir, tmp_path):
    trained, path = saved_lora(tiny_dir, tmp_path, alpha=2.0)
    fresh = lora_model(tiny_dir, alpha=8.0)
    load_lora_file_into(fresh, path)
    inputs = fixed_inputs(trained)
    expected = outputs(trained.denoiser, trained.text_encoders[0], inputs)
    actual = outputs(fresh.denoiser, fresh.text_encoders[0], inputs)
    for got, want in zip(actual, expected, strict=True):
        assert relative_difference(got, want) < 1e-5
    assert not torch.equal(lora_parameters(fresh)[0][1], lora_parameters(trained)[0][1])  # up was rescaled


def test_init_from_rank_mismatch(tiny_dir, tmp_path):
    _, path = saved_lora(tiny_dir, tmp_path, dim=4)
    fresh = lora_model(tiny_dir, dim=8)
    with pytest.raises(ModelFileError) as caught:
        load_lora_file_into(fresh, path)
    message = str(caught.value)
    assert "start.safetensors" in message and "rank 4" in message and "lora_unet_" in message
    assert all(not up.any() for up in lora_parameters(fresh)[0][1::2])  # nothing was half loaded


def test_init_from_keys_of_another_model(tiny_dir, tmp_path):
    trained, _ = saved_lora(tiny_dir, tmp_path)
    # SDXL's spelling of the text encoder's keys: no layer of an SD 1.x model, even in a UNet-only run.
    tensors = {key.replace("lora_te_", "lora_te1_"): value for key, value in kohya_state_dict(trained, dtype=torch.float32).items()}
    path = save_lora_file(tmp_path / "sdxl_names.safetensors", tensors, {})
    unet_only = lora_model(tiny_dir, train_text_encoder=False)
    with pytest.raises(ModelFileError) as caught:
        load_lora_file_into(unet_only, path)
    assert "sdxl_names.safetensors" in str(caught.value)
    assert "`lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha` names no LoRA layer of this SD 1.x model" in str(caught.value)
    assert all(not up.any() for up in lora_parameters(unet_only)[0][1::2])  # nothing was loaded


def test_init_from_sd1_file_into_sdxl(tiny_dir, tmp_path):
    _, path = saved_lora(tiny_dir, tmp_path)
    sdxl = load_base_model(build_tiny_sdxl_pipeline(tmp_path / "sdxl"))
    add_lora(sdxl, dim=4, alpha=2.0, train_text_encoder=True)
    with pytest.raises(ModelFileError) as caught:
        load_lora_file_into(sdxl, path)
    assert "start.safetensors" in str(caught.value)
    assert "`lora_te_text_model_encoder_layers_0_mlp_fc1.alpha` names no LoRA layer of this SDXL model" in str(caught.value)


def only_keys(model: LoadedModel, prefix: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in kohya_state_dict(model, dtype=torch.float32).items() if key.startswith(prefix)}


def test_init_from_unet_only_file_keeps_the_text_encoder_fresh(tiny_dir, tmp_path):
    trained = lora_model(tiny_dir)
    randomize_lora_weights(trained, only_up=False)
    path = save_lora_file(tmp_path / "unet_only.safetensors", only_keys(trained, "lora_unet_"), {})
    seeded = lora_model(tiny_dir, seed=5)
    result = load_lora_file_into(seeded, path)
    unet, text = lora_parameters(seeded)
    for loaded, original in zip(unet, lora_parameters(trained)[0], strict=True):
        assert torch.equal(loaded, original)
    new_run = lora_model(tiny_dir, seed=5)  # what the run's text-encoder LoRA would be without init_from
    for kept, fresh in zip(text, lora_parameters(new_run)[1], strict=True):
        assert torch.equal(kept, fresh)
    assert text[0].any() and not text[1].any()  # kaiming down, zero up: a fresh LoRA
    assert result.loaded == ("the UNet (`lora_unet_*`)",) and result.ignored == ()
    assert result.kept_fresh == ("the text encoder (`lora_te_*`)",)
    assert result.notes == [
        "the `[network] init_from` file has no layers for the text encoder (`lora_te_*`): "
        "those LoRA layers start fresh, as in a new run"
    ]


def test_init_from_text_encoder_layers_into_unet_only_run(tiny_dir, tmp_path):
    trained, path = saved_lora(tiny_dir, tmp_path)  # UNet and text encoder
    unet_only = lora_model(tiny_dir, train_text_encoder=False)
    result = load_lora_file_into(unet_only, path)
    unet, text = lora_parameters(unet_only)
    assert text == []
    for loaded, original in zip(unet, lora_parameters(trained)[0], strict=True):
        assert torch.equal(loaded, original)
    assert result.loaded == ("the UNet (`lora_unet_*`)",) and result.kept_fresh == ()
    assert result.ignored == ("the text encoder (`lora_te_*`)",)
    assert result.notes == [
        "the `[network] init_from` file's layers for the text encoder (`lora_te_*`) are ignored: "
        "this run does not train the text encoders (`[network] train_text_encoder = false`)"
    ]


def test_init_from_part_of_the_unet_refused(tiny_dir, tmp_path):
    trained, _ = saved_lora(tiny_dir, tmp_path)
    tensors = kohya_state_dict(trained, dtype=torch.float32)
    stem = sorted(key for key in tensors if key.startswith("lora_unet_"))[-1].rsplit(".", 2)[0]
    partial = {key: value for key, value in tensors.items() if not key.startswith(f"{stem}.")}
    path = save_lora_file(tmp_path / "partial.safetensors", partial, {})
    unet_only = lora_model(tiny_dir, train_text_encoder=False)  # the text encoder's keys are ignored, not the error
    with pytest.raises(ModelFileError) as caught:
        load_lora_file_into(unet_only, path)
    message = str(caught.value)
    assert f"key `{stem}.lora_down.weight` is missing (2 missing keys" in message
    assert "partial.safetensors" in message and "the UNet (`lora_unet_*`)" in message
    assert all(not up.any() for up in lora_parameters(unet_only)[0][1::2])  # nothing was half loaded


def test_init_from_nothing_for_the_trained_parts_refused(tiny_dir, tmp_path):
    trained, _ = saved_lora(tiny_dir, tmp_path)
    path = save_lora_file(tmp_path / "text_only.safetensors", only_keys(trained, "lora_te_"), {})
    unet_only = lora_model(tiny_dir, train_text_encoder=False)
    with pytest.raises(ModelFileError) as caught:
        load_lora_file_into(unet_only, path)
    message = str(caught.value)
    assert "text_only.safetensors" in message
    assert "layers only for the text encoder (`lora_te_*`), none for what this run trains: the UNet" in message
    assert "set `[network] train_text_encoder = true`" in message

    empty = save_lora_file(tmp_path / "empty.safetensors", {}, {})
    with pytest.raises(ModelFileError) as caught:
        load_lora_file_into(lora_model(tiny_dir), empty)
    assert "empty.safetensors: this LoRA holds no LoRA layers, nothing to start" in str(caught.value)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-sd15-list"]:
        sys.exit("usage: python -m tests.engine.test_lora --write-sd15-list")
    SD15_LIST.parent.mkdir(parents=True, exist_ok=True)
    SD15_LIST.write_text("\n".join(sd15_module_stems()) + "\n", encoding="utf-8")
    print(f"wrote {SD15_LIST}")
