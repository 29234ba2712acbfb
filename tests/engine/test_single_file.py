"""Single-file SD checkpoints (.safetensors / .ckpt, LDM layout): offline loading, safety, detection.

Everything runs on tiny models written here; the full-size layouts are checked on the meta device.
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import ModelFileError
from engine.families import inspect_base_model, load_base_model
from engine.families.file_prediction import unet_predicts_v
from engine.families.single_file import derive_architecture
from engine.families.templates import load_template
from engine.tiny import build_tiny_sd1_pipeline, write_tiny_sd2_single_file, write_tiny_single_file

LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


@pytest.fixture(scope="session")
def tiny_sd1_folder(tmp_path_factory) -> Path:
    return build_tiny_sd1_pipeline(tmp_path_factory.mktemp("tiny_sd1") / "model")


@pytest.fixture(scope="session")
def sd1_files(tiny_sd1_folder, tmp_path_factory) -> Path:
    """model.safetensors and model.ckpt of the tiny SD 1.x model, with its tokenizer beside them."""
    folder = tmp_path_factory.mktemp("sd1_files")
    write_tiny_single_file(tiny_sd1_folder, folder / "model.safetensors")
    write_tiny_single_file(tiny_sd1_folder, folder / "model.ckpt")
    shutil.copytree(tiny_sd1_folder / "tokenizer", folder / "tokenizer")
    return folder


@pytest.fixture(scope="session")
def reference(tiny_sd1_folder):
    return load_base_model(tiny_sd1_folder)


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory):
    """(path, unet, vae, text_encoder): a tiny SD 2.x file and the diffusers models it was written from."""
    return write_tiny_sd2_single_file(tmp_path_factory.mktemp("sd2") / "model.safetensors")


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch) -> Path:
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home


def assert_same_weights(model, expected) -> None:
    got, want = model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def unet_output(unet, cross_attention_dim: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    conditioning = torch.randn(1, 5, cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), encoder_hidden_states=conditioning).sample


def token_ids(tokenizer) -> torch.Tensor:
    return tokenizer(["a photo of usu bear"], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def assert_matches_reference(model, reference) -> None:
    """Same weights bit for bit, and the same outputs for the same inputs (CPU kernels may differ by
    ~1e-5 with memory alignment, so outputs are compared with a tight tolerance)."""
    assert_same_weights(model.denoiser, reference.denoiser)
    assert_same_weights(model.vae, reference.vae)
    assert_same_weights(model.text_encoders[0], reference.text_encoders[0])
    torch.testing.assert_close(unet_output(model.denoiser, 32), unet_output(reference.denoiser, 32), rtol=1e-4, atol=1e-4)
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.vae.encode(image).latent_dist.mean, reference.vae.encode(image).latent_dist.mean, rtol=1e-4, atol=1e-4)
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(model.vae.decode(latents).sample, reference.vae.decode(latents).sample, rtol=1e-4, atol=1e-4)
        ids = token_ids(reference.tokenizers[0])
        assert torch.equal(token_ids(model.tokenizers[0]), ids)
        torch.testing.assert_close(model.text_encoders[0](ids).last_hidden_state, reference.text_encoders[0](ids).last_hidden_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt"])
def test_single_file_loads_the_same_model_as_the_diffusers_folder(sd1_files, reference, name):
    model = load_base_model(sd1_files / name)
    assert model.family.name == "sd1"
    assert model.objective.prediction_type == "epsilon"
    assert model.objective.scheduler.config.prediction_type == "epsilon"
    assert model.objective.scheduler.config.beta_schedule == "scaled_linear"
    assert any("SD 1.x single file" in note for note in model.notes)
    assert_matches_reference(model, reference)


def test_inspect_reads_a_single_file_without_loading_it(sd1_files):
    info = inspect_base_model(sd1_files / "model.safetensors")
    assert (info.family, info.label, info.layout, info.prediction) == ("sd1", "SD 1.x", "single file", "epsilon")
    assert info.tokenizer == sd1_files / "tokenizer"


def _ldm_state_dict(sd1_files: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sd1_files / "model.safetensors"))


class _WritesMarker:
    """A pickled payload: unpickling it with plain pickle calls open(marker, "w")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_ckpt_with_pickled_code_is_refused_without_running_it(sd1_files, tmp_path):
    marker = tmp_path / "payload_ran"
    checkpoint = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _ldm_state_dict(sd1_files), "payload": _WritesMarker(marker)}, checkpoint)
    shutil.copytree(sd1_files / "tokenizer", tmp_path / "tokenizer")

    for action in (load_base_model, inspect_base_model):
        with pytest.raises(ModelFileError) as error:
            action(checkpoint)
        assert "contains code" in str(error.value) and "not loaded" in str(error.value)
        assert ".safetensors" in str(error.value)
        assert str(checkpoint) in str(error.value)
        assert not marker.exists()

    # Control: the payload is live, an unsafe loader would have run it.
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def _lightning_callback_class(monkeypatch) -> type:
    """A class pickled under Lightning's name, as real SD 1.x .ckpt files carry one."""
    module = types.ModuleType(LIGHTNING_MODULE)

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/loss"
            self.best_model_score = torch.tensor(0.25)

    ModelCheckpoint.__module__ = LIGHTNING_MODULE
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, LIGHTNING_MODULE, module)
    return ModelCheckpoint


def test_ckpt_with_a_lightning_callback_loads(sd1_files, reference, tmp_path, monkeypatch):
    checkpoint = tmp_path / "trained.ckpt"
    with monkeypatch.context() as patch:
        callback_class = _lightning_callback_class(patch)
        torch.save(
            {
                "state_dict": _ldm_state_dict(sd1_files),
                "epoch": 6,
                "global_step": 840000,
                "callbacks": {callback_class: {"best_model_score": torch.tensor(0.25)}},
                "checkpoint_callback": callback_class(),
            },
            checkpoint,
        )
    assert LIGHTNING_MODULE not in sys.modules
    # Control: plain weights-only loading refuses the callback, so the stand-in is what lets it through.
    with pytest.raises(Exception, match="ModelCheckpoint"):
        torch.load(checkpoint, weights_only=True)

    model = load_base_model(checkpoint, tokenizer=sd1_files / "tokenizer")
    assert_same_weights(model.denoiser, reference.denoiser)


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt"])
def test_truncated_file_names_the_file(sd1_files, tmp_path, name):
    damaged = tmp_path / f"damaged{Path(name).suffix}"
    data = (sd1_files / name).read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    for action in (load_base_model, inspect_base_model):
        with pytest.raises(ModelFileError, match="damaged or incomplete") as error:
            action(damaged)
        assert str(damaged) in str(error.value)


def test_diffusers_folder_with_a_part_missing_names_the_part(tiny_sd1_folder, tmp_path):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_sd1_folder, incomplete, ignore=shutil.ignore_patterns("vae"))
    for action in (load_base_model, inspect_base_model):
        with pytest.raises(ModelFileError, match="no `vae` folder"):
            action(incomplete)


def test_inspect_a_diffusers_folder(tiny_sd1_folder):
    info = inspect_base_model(tiny_sd1_folder)
    assert (info.family, info.layout, info.prediction) == ("sd1", "diffusers folder", "epsilon")
    assert info.tokenizer == tiny_sd1_folder / "tokenizer"


def test_missing_tokenizer_lists_every_place_looked(sd1_files, tmp_path, offline_empty_hub):
    lonely = tmp_path / "models" / "lonely.safetensors"
    lonely.parent.mkdir()
    shutil.copy(sd1_files / "model.safetensors", lonely)

    with pytest.raises(ModelFileError) as error:
        load_base_model(lonely)
    message = str(error.value)
    assert str(lonely.parent / "tokenizer") in message
    assert str(lonely.parent / "lonely" / "tokenizer") in message
    assert str(offline_empty_hub / "hub") in message and "openai/clip-vit-large-patch14" in message
    assert "HF_HUB_OFFLINE" in message
    assert "[model]" in message and "tokenizer =" in message

    info = inspect_base_model(lonely)
    assert info.tokenizer is None
    assert str(lonely.parent / "tokenizer") in info.tokenizer_note


@pytest.mark.parametrize("where", ["tokenizer", "lonely/tokenizer"])
def test_tokenizer_beside_the_file_is_found(sd1_files, reference, tmp_path, offline_empty_hub, where):
    lonely = tmp_path / "lonely.safetensors"
    shutil.copy(sd1_files / "model.safetensors", lonely)
    shutil.copytree(sd1_files / "tokenizer", tmp_path / where)

    assert inspect_base_model(lonely).tokenizer == tmp_path / where
    model = load_base_model(lonely)
    assert torch.equal(token_ids(model.tokenizers[0]), token_ids(reference.tokenizers[0]))
    assert any(str(tmp_path / where) in note for note in model.notes)


def test_tokenizer_from_the_answers_file_must_be_a_tokenizer(sd1_files, tmp_path):
    with pytest.raises(ModelFileError, match="holds no CLIP tokenizer"):
        load_base_model(sd1_files / "model.safetensors", tokenizer=tmp_path)


def test_sd2_file_is_detected_and_loads_openclip_penultimate_layer(tiny_sd2):
    path, unet, vae, text_encoder = tiny_sd2
    model = load_base_model(path)
    assert model.family.name == "sd2"
    assert model.denoiser.config.use_linear_projection
    assert_same_weights(model.denoiser, unet)
    assert_same_weights(model.vae, vae)
    torch.testing.assert_close(unet_output(model.denoiser, 32), unet_output(unet, 32), rtol=1e-4, atol=1e-4)
    # SD 2.x conditions on the penultimate OpenCLIP block: the loaded encoder has one block fewer.
    assert model.text_encoders[0].config.num_hidden_layers == text_encoder.config.num_hidden_layers - 1
    ids = token_ids(model.tokenizers[0])
    with torch.no_grad():
        penultimate = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(model.text_encoders[0](ids).last_hidden_state, text_encoder.final_layer_norm(penultimate), rtol=1e-5, atol=1e-5)
    # Nothing in the file says which prediction type: AUTOMATIC1111's UNet test decides.
    assert "AUTOMATIC1111's UNet test" in model.notes[1]
    assert model.objective.scheduler.config.prediction_type == model.objective.prediction_type


def test_inspect_sd2_leaves_the_prediction_to_loading(tiny_sd2):
    info = inspect_base_model(tiny_sd2[0])
    assert (info.family, info.label, info.prediction) == ("sd2", "SD 2.x", "unknown")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_prediction_from_the_answers_file_overrides(tiny_sd2, prediction):
    model = load_base_model(tiny_sd2[0], prediction=prediction)
    assert model.objective.prediction_type == prediction
    assert model.objective.scheduler.config.prediction_type == prediction
    assert "answers file" in model.notes[1]


def test_prediction_stated_in_the_file_metadata(tmp_path):
    path, *_ = write_tiny_sd2_single_file(tmp_path / "v.safetensors", metadata={"modelspec.architecture": "stable-diffusion-v2-768-v"})
    assert inspect_base_model(path).prediction == "v_prediction"
    model = load_base_model(path)
    assert model.objective.prediction_type == "v_prediction"
    assert "metadata" in model.notes[1]


def test_automatic1111_v_test_reads_the_unet_output(tiny_sd2):
    unet = tiny_sd2[1]
    original = unet.conv_out.bias.detach().clone(), unet.conv_out.weight.detach().clone()
    try:
        with torch.no_grad():
            unet.conv_out.weight.zero_()
            unet.conv_out.bias.fill_(-3.0)  # output -3 on a 0.5 input: far below it, a v model
            assert unet_predicts_v(unet)[0]
            unet.conv_out.bias.fill_(0.5)  # output equals the input: an epsilon model
            assert not unet_predicts_v(unet)[0]
    finally:
        with torch.no_grad():
            unet.conv_out.bias.copy_(original[0])
            unet.conv_out.weight.copy_(original[1])


def _write_keys(path: Path, keys: list[str]) -> Path:
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    return path


def test_a_ckpt_that_is_not_a_checkpoint_is_damaged_not_code(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a pickle at all" * 10)
    with pytest.raises(ModelFileError, match="damaged or incomplete"):
        inspect_base_model(junk)


def test_a_lora_is_not_a_base_model(tmp_path):
    lora = _write_keys(tmp_path / "lora.safetensors", ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"])
    with pytest.raises(ModelFileError, match="not a Stable Diffusion checkpoint.*LoRA"):
        inspect_base_model(lora)


@pytest.mark.parametrize(("family", "diffusers_type"), [("sd1", "v1"), ("sd2", "v2")])
def test_full_size_layouts_derive_the_published_configs(family, diffusers_type):
    """The real SD 1.5 / 2.1 tensor layout (built on the meta device, no memory) derives back to the
    shipped configs, and diffusers' own detector agrees on what the layout is."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.tiny import clip_to_ldm, clip_to_open_clip, unet_to_ldm, vae_to_ldm

    unet_config, vae_config = load_template(family, "unet"), load_template(family, "vae")
    text_config = load_template(family, "text_encoder")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        blocks = text_config["num_hidden_layers"] + (1 if family == "sd2" else 0)
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**text_config, "num_hidden_layers": blocks}))
    hidden = text_config["hidden_size"]
    text = (
        clip_to_ldm(text_encoder.state_dict())
        if family == "sd1"
        else clip_to_open_clip(text_encoder.state_dict(), torch.empty(hidden, hidden, device="meta"))
    )
    state_dict = {**unet_to_ldm(unet.state_dict(), unet_config), **vae_to_ldm(vae.state_dict(), vae_config), **text}
    assert infer_diffusers_model_type(state_dict) == diffusers_type

    architecture = derive_architecture({key: tuple(value.shape) for key, value in state_dict.items()}, Path("full.safetensors"))
    assert architecture.family == family
    for part, derived in (("unet", architecture.unet), ("vae", architecture.vae), ("text_encoder", architecture.text_encoder)):
        template = load_template(family, part)
        assert {key: derived[key] for key in template} == template, part


def _sd2_copy(tiny_sd2, folder: Path, extra: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None) -> Path:
    path = folder / "copy.safetensors"
    save_file({**load_file(str(tiny_sd2[0])), **(extra or {})}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("extra", "metadata", "yaml", "expected"),
    [
        ({"v_pred": torch.tensor([])}, None, None, "v_prediction"),
        (None, {"modelspec.prediction_type": "v"}, None, "v_prediction"),
        (None, {"modelspec.prediction_type": "epsilon"}, None, "epsilon"),
        (None, None, 'model:\n  params:\n    parameterization: "v"\n', "v_prediction"),
        (None, None, "model:\n  params:\n    linear_start: 0.00085\n", "epsilon"),
    ],
    ids=["v_pred-key", "modelspec-v", "modelspec-epsilon", "yaml-v", "yaml-without-v"],
)
def test_prediction_markers_in_or_beside_the_file(tiny_sd2, tmp_path, extra, metadata, yaml, expected):
    path = _sd2_copy(tiny_sd2, tmp_path, extra, metadata)
    if yaml:
        path.with_suffix(".yaml").write_text(yaml, encoding="utf-8")
    shutil.copytree(tiny_sd2[0].parent / "tokenizer", tmp_path / "tokenizer")
    info = inspect_base_model(path)
    assert info.prediction == expected, info.prediction_reason


def test_old_clip_key_names_without_text_model_load(sd1_files, reference, tmp_path):
    prefix = "cond_stage_model.transformer."
    legacy = {key.replace(prefix + "text_model.", prefix): value for key, value in _ldm_state_dict(sd1_files).items()}
    path = tmp_path / "old.safetensors"
    save_file(legacy, str(path))
    model = load_base_model(path, tokenizer=sd1_files / "tokenizer")
    assert_same_weights(model.text_encoders[0], reference.text_encoders[0])


def test_a_missing_tensor_is_a_model_file_error(sd1_files, tmp_path):
    state_dict = _ldm_state_dict(sd1_files)
    del state_dict["model.diffusion_model.middle_block.1.proj_out.bias"]
    path = tmp_path / "cut.safetensors"
    save_file(state_dict, str(path))
    with pytest.raises(ModelFileError, match=r"UNet weights in this checkpoint do not match.*mid_block\.attentions\.0\.proj_out\.bias"):
        load_base_model(path, tokenizer=sd1_files / "tokenizer")
