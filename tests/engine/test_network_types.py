"""LoCon, LoHa, LoKr and DoRA: the exported file reproduces the trained model when applied as the web
UIs apply it, with the keys and metadata kohya and the lycoris package write.

`ui_merge` below is written from the LyCORIS formulas as ComfyUI applies them (comfy/weight_adapter:
lora.py, loha.py, lokr.py, base.py's weight_decompose), independently of the engine's code: it reads
the file and adds each module's update to a fresh base model's weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.config import answers_from_dict
from engine.errors import AnswersError, ModelFileError
from engine.families import LoadedModel, load_base_model
from engine.network import (
    NetworkSpec,
    add_network,
    kohya_metadata,
    kohya_state_dict,
    load_lora_file_into,
    network_parameters,
    save_lora_file,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> [network] settings (as an answers file writes them)
VARIANTS = {
    "locon": {"type": "locon", "dim": 4, "alpha": 2, "conv_dim": 2, "conv_alpha": 1},
    "locon_dora": {"type": "locon", "dora": True, "dim": 4, "alpha": 2, "conv_dim": 2, "conv_alpha": 1},
    "lora_dora": {"type": "lora", "dora": True, "dim": 4, "alpha": 4},
    "loha": {"type": "loha", "dim": 4, "alpha": 2, "conv_dim": 2, "conv_alpha": 2},
    # dim 4, factor 4: the 32-wide layers' large factor (8 x 8) is whole, peft scales it by alpha / r
    # and the UIs by 1 (baked on export); the 64-wide ones' (16 x 16) is low-rank.
    "lokr": {"type": "lokr", "dim": 4, "alpha": 1, "factor": 4, "conv_dim": 2, "conv_alpha": 2},
    "lokr_full": {"type": "lokr", "factor": 4, "full_matrix": True},
}
SUFFIXES = {
    "locon": {"lora_down.weight", "lora_up.weight", "alpha"},
    "locon_dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
    "lora_dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
    "lokr_full": {"lokr_w1", "lokr_w2", "alpha"},
}


def spec_of(variant: str) -> NetworkSpec:
    section = answers_from_dict(minimal_answers(VARIANTS[variant])).network
    return NetworkSpec.from_section(section)


def minimal_answers(network: dict) -> dict:
    return {"model": {"path": "m"}, "dataset": {"train_dir": "d"}, "network": network, "output": {"name": "x"}}


def trained_like(model_dir, variant: str, *, seed: int = 3) -> LoadedModel:
    """The base model with the variant's network, every network weight random (as after training)."""
    model = load_base_model(model_dir)
    torch.manual_seed(0)
    add_network(model, spec_of(variant), train_text_encoder=True)
    unet_weights, text_weights = network_parameters(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in unet_weights + text_weights:
            weight.add_(torch.randn(weight.shape, generator=generator) * 0.05 * (weight.abs().mean() + 0.2))
    return model


# --- the independent merge (ComfyUI's formulas) -------------------------------------------------------


def lokr_factor(tensors: dict, name: str) -> tuple[torch.Tensor, bool]:
    if name in tensors:
        return tensors[name], False
    return tensors[f"{name}_a"] @ tensors[f"{name}_b"], True


def module_update(tensors: dict, shape: torch.Size) -> torch.Tensor:
    """One module's weight update dW (before DoRA) from its file tensors, as the UIs compute it."""
    alpha = tensors.get("alpha")
    if "lora_down.weight" in tensors:
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        rank = down.shape[0]
        product = up.flatten(1) @ down.flatten(1)
    elif "hada_w1_a" in tensors:
        rank = tensors["hada_w1_b"].shape[0]
        product = (tensors["hada_w1_a"] @ tensors["hada_w1_b"]) * (tensors["hada_w2_a"] @ tensors["hada_w2_b"])
    else:
        w1, low1 = lokr_factor(tensors, "lokr_w1")
        w2, low2 = lokr_factor(tensors, "lokr_w2")
        rank = tensors["lokr_w2_b"].shape[0] if low2 else tensors["lokr_w1_b"].shape[0] if low1 else None
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        product = torch.kron(w1, w2)
        if rank is None:  # both factors whole: scale 1 whatever the alpha
            alpha = None
    scale = 1.0 if alpha is None or rank is None else float(alpha) / rank
    return (product * scale).reshape(shape)


def apply_dora(weight: torch.Tensor, merged: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """ComfyUI's weight_decompose at strength 1 with an output-axis scale: the norm is the base weight's."""
    assert dora_scale.shape[0] == weight.shape[0]
    norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
    return merged * (dora_scale / norm)


def ui_merge(model: LoadedModel, file_tensors: dict) -> None:
    """Add every module's update of the file to `model`'s weights (float64 math)."""
    modules = {}
    for path, module in model.denoiser.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            modules[model.family.kohya_unet_name(path)] = module
    for index, encoder in enumerate(model.text_encoders):
        for path, module in encoder.named_modules():
            if path:
                modules[model.family.kohya_text_encoder_name(index, path)] = module
    stems: dict[str, dict] = {}
    for key, value in file_tensors.items():
        stem, suffix = key.split(".", 1)
        stems.setdefault(stem, {})[suffix] = value.double()
    with torch.no_grad():
        for stem, tensors in stems.items():
            weight = modules[stem].weight
            base = weight.double()
            merged = base + module_update(tensors, weight.shape)
            if "dora_scale" in tensors:
                merged = apply_dora(base, merged, tensors["dora_scale"])
            weight.copy_(merged.to(weight.dtype))


@torch.no_grad()
def outputs(model: LoadedModel) -> list[torch.Tensor]:
    """Text-encoder states and UNet prediction of a fixed caption and latent."""
    generator = torch.Generator().manual_seed(7)
    family = model.family
    conditioning = family.encode(model, family.tokenize(model, ["a photo of usu bear"]))
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    if family.name == "sdxl":
        from engine.families import ImageGeometry

        prediction = family.predict(model, latents, torch.tensor([500]), conditioning, [ImageGeometry((64, 64), (0, 0), (64, 64))])
    else:
        prediction = family.predict(model, latents, torch.tensor([500]), conditioning)
    return [conditioning["encoder_hidden_states"], prediction]


def relative_gap(actual: list[torch.Tensor], expected: list[torch.Tensor], base: list[torch.Tensor]) -> float:
    """Largest difference from `expected`, relative to the network's own effect (expected - base)."""
    gaps = [((a - e).abs().max() / (e - b).abs().max()).item() for a, e, b in zip(actual, expected, base, strict=True)]
    return max(gaps)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_web_ui_merge_of_the_file_reproduces_the_trained_model(variant, family, tiny_model_dir, tiny_sdxl_model_dir):
    model_dir = tiny_model_dir if family == "sd1" else tiny_sdxl_model_dir
    trained = trained_like(model_dir, variant)
    trained.denoiser.eval()
    expected = outputs(trained)
    file_tensors = kohya_state_dict(trained, dtype=torch.float32)

    merged = load_base_model(model_dir)
    base = outputs(merged)
    ui_merge(merged, file_tensors)
    gap = relative_gap(outputs(merged), expected, base)
    assert gap < 2e-3, f"{variant} on {family}: the UI merge differs by {gap:.2%} of the network's effect"


# --- keys, shapes and metadata ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keys_are_lycoris_suffixes_on_kohya_names_with_one_alpha_each(variant, tiny_model_dir):
    model = trained_like(tiny_model_dir, variant)
    tensors = kohya_state_dict(model, dtype=torch.float16)
    stems: dict[str, set[str]] = {}
    for key in tensors:
        stem, suffix = key.split(".", 1)
        stems.setdefault(stem, set()).add(suffix)
    assert set().union(*stems.values()) == SUFFIXES[variant]
    assert all("alpha" in suffixes for suffixes in stems.values())
    assert all(tensors[f"{stem}.alpha"].dim() == 0 for stem in stems)
    convs = {stem for stem in stems if "_resnets_" in stem or "samplers_" in stem}
    if variant == "lora_dora":
        assert not convs
    else:  # kohya's LoCon blocks: the ResNets' 3x3 convs, time_emb_proj and shortcut, the down/upsamplers
        assert "lora_unet_down_blocks_0_resnets_0_conv1" in convs
        assert "lora_unet_down_blocks_0_downsamplers_0_conv" in convs
        assert "lora_unet_up_blocks_1_upsamplers_0_conv" in convs
        assert "lora_unet_down_blocks_0_resnets_0_time_emb_proj" in convs
    stem = "lora_unet_down_blocks_0_resnets_0_conv1"  # Conv2d 32 -> 32, 3x3
    if variant.startswith("locon"):
        assert tensors[f"{stem}.lora_down.weight"].shape == (2, 32, 3, 3)
        assert tensors[f"{stem}.lora_up.weight"].shape == (32, 2, 1, 1)
        assert tensors[f"{stem}.alpha"].item() == 1
    if variant.endswith("dora"):
        assert tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale"].shape == (32, 1)
    if variant == "locon_dora":
        assert tensors[f"{stem}.dora_scale"].shape == (32, 1, 1, 1)
    if variant == "loha":
        assert tensors[f"{stem}.hada_w1_a"].shape == (32, 2) and tensors[f"{stem}.hada_w1_b"].shape == (2, 32 * 9)
    if variant == "lokr":  # factor 4: 32 = 4 x 8 on both sides
        assert tensors[f"{stem}.lokr_w1"].shape == (4, 4)
        assert tensors[f"{stem}.lokr_w2_a"].shape == (8, 2) and tensors[f"{stem}.lokr_w2_b"].shape == (2, 8 * 9)
        assert tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lokr_w2"].shape == (8, 8)
    if variant == "lokr_full":  # whole factors: alpha = rank as LyCORIS writes it, scale baked into w1
        assert tensors[f"{stem}.lokr_w2"].shape == (8, 8, 3, 3)


EXPECTED_NETWORK_METADATA = {
    "locon": ("networks.lora", {"conv_dim": "2", "conv_alpha": "1"}),
    "locon_dora": ("lycoris.kohya", {"algo": "locon", "conv_dim": "2", "conv_alpha": "1", "dora_wd": "True"}),
    "lora_dora": ("lycoris.kohya", {"algo": "lora", "dora_wd": "True"}),
    "loha": ("lycoris.kohya", {"algo": "loha", "conv_dim": "2", "conv_alpha": "2"}),
    "lokr": ("lycoris.kohya", {"algo": "lokr", "conv_dim": "2", "conv_alpha": "2", "factor": "4"}),
    "lokr_full": ("lycoris.kohya", {"algo": "lokr", "conv_dim": "8", "conv_alpha": "8", "factor": "4", "full_matrix": "True"}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_metadata_names_the_network_as_kohya_and_lycoris_write_it(variant, tiny_model_dir, tmp_path):
    from tests.engine.test_lora import run_stats

    data = minimal_answers(VARIANTS[variant])
    data["model"]["path"] = str(tiny_model_dir)
    answers = answers_from_dict(data)
    model = trained_like(tiny_model_dir, variant)
    metadata = kohya_metadata(model=model, answers=answers, stats=run_stats())
    module, args = EXPECTED_NETWORK_METADATA[variant]
    assert metadata["ss_network_module"] == module
    assert json.loads(metadata["ss_network_args"]) == args
    assert metadata["ss_network_dim"] == str(answers.network.dim)
    assert metadata["ss_network_alpha"] == str(answers.network.effective_alpha)
    path = save_lora_file(tmp_path / "net.safetensors", kohya_state_dict(model, dtype=torch.float16), metadata)
    assert set(load_file(path)) == set(kohya_state_dict(model, dtype=torch.float16))


# --- settings refused before any model loads ----------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ({"type": "lokr", "factr": 4}, "did you mean `factor`"),
        ({"type": "lycoris"}, "network.type"),
        ({"type": "lora", "conv_dim": 8}, '`conv_dim` does not apply to `type = "lora"`'),
        ({"type": "loha", "factor": 8}, '`factor` does not apply to `type = "loha"`'),
        ({"type": "locon", "full_matrix": True}, '`full_matrix` does not apply to `type = "locon"`'),
        ({"type": "lokr", "dora": True}, '`dora = true` does not apply to `type = "lokr"`'),
        ({"type": "loha", "dora": True}, '`dora = true` does not apply to `type = "loha"`'),
        ({"type": "loha", "dropout": 0.1}, "`dropout` does not apply"),
        ({"type": "locon", "rank_dropout": 0.1}, "`rank_dropout` does not apply"),
        ({"type": "lokr", "full_matrix": True, "alpha": 4}, "`alpha` has no effect with `full_matrix = true`"),
        ({"type": "lokr", "factor": 0}, "`factor` must be -1"),
    ],
)
def test_mistyped_or_mismatched_setting_is_refused(network, expected):
    with pytest.raises(AnswersError) as refused:
        answers_from_dict(minimal_answers(network))
    assert expected in str(refused.value.message)


def test_train_refuses_a_mismatched_setting_before_loading_the_model(tmp_path, tiny_dataset):
    """The model file is not a model at all: the refusal must come from the answers, not from loading it."""
    import subprocess
    import sys

    from tests.conftest import write_answers

    not_a_model = tmp_path / "model.safetensors"
    not_a_model.write_bytes(b"not a model")
    answers = write_answers(tmp_path, not_a_model, *tiny_dataset, network={"type": "loha", "factor": 8})
    done = subprocess.run([sys.executable, "-m", "tui_lora.cli", "train", str(answers)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert '`factor` does not apply to `type = "loha"`' in done.stderr + done.stdout
    assert "model.safetensors" not in done.stderr + done.stdout


# --- init_from: a file of the same type ---------------------------------------------------------------


@pytest.mark.parametrize("variant", ["locon_dora", "loha", "lokr", "lokr_full"])
def test_init_from_a_file_of_the_same_type_restores_its_effect(variant, tiny_model_dir, tmp_path):
    trained = trained_like(tiny_model_dir, variant)
    trained.denoiser.eval()
    path = save_lora_file(tmp_path / "net.safetensors", kohya_state_dict(trained, dtype=torch.float32), {})
    fresh = trained_like(tiny_model_dir, variant, seed=9)
    fresh.denoiser.eval()
    result = load_lora_file_into(fresh, path)
    assert not result.notes
    base = outputs(load_base_model(tiny_model_dir))
    assert relative_gap(outputs(fresh), outputs(trained), base) < 1e-4


def test_init_from_a_file_of_another_type_is_refused(tiny_model_dir, tmp_path):
    loha = trained_like(tiny_model_dir, "loha")
    path = save_lora_file(tmp_path / "loha.safetensors", kohya_state_dict(loha, dtype=torch.float32), {})
    with pytest.raises(ModelFileError, match="holds a LoHa network; this run trains a LoKr one"):
        load_lora_file_into(trained_like(tiny_model_dir, "lokr"), path)


# --- exact resume after SIGKILL -----------------------------------------------------------------------

RESUME_STEPS = 6
RESUMED_NETWORKS = {
    "loha": {"type": "loha", "dim": 4, "alpha": 4, "conv_dim": 2},
    "lokr": {"type": "lokr", "dim": 4, "alpha": 4, "factor": 4, "conv_dim": 2},
}


@pytest.mark.parametrize("variant", list(RESUMED_NETWORKS))
def test_sigkill_then_resume_is_exact(variant, tmp_path, tiny_model_dir, tiny_dataset):
    from engine.config import load_answers
    from engine.events import EventLog
    from engine.plan import plan_training
    from engine.train import train
    from tests.conftest import write_answers
    from tests.engine.test_resume import finish, kill_after_step, start

    settings = {
        "network": {"dim": None, "alpha": None, **RESUMED_NETWORKS[variant]},
        "training": {"max_steps": RESUME_STEPS, "log_every_steps": 1, "cpu_threads": 2},
        "checkpoints": {"every_steps": 2},
    }
    whole = write_answers(tmp_path / "whole", tiny_model_dir, *tiny_dataset, **settings)
    train(plan_training(load_answers(whole)), EventLog(None))
    expected = load_file(tmp_path / "whole" / "output" / "tiny.safetensors")

    answers = write_answers(tmp_path / "killed", tiny_model_dir, *tiny_dataset, **settings)
    kill_after_step(start("train", str(answers)), 3)
    events = finish(start("resume", str(tmp_path / "killed" / "output" / "tiny.run")))
    assert [e["step"] for e in events if e["kind"] == "resumed"] == [2]
    resumed = load_file(tmp_path / "killed" / "output" / "tiny.safetensors")
    assert resumed.keys() == expected.keys() and any(key.endswith((".hada_w1_a", ".lokr_w1")) for key in expected)
    assert all(torch.equal(resumed[key], expected[key]) for key in expected)


# --- making images with the file: `<lora:name:w>` -----------------------------------------------------


@pytest.mark.parametrize("variant", ["locon", "locon_dora", "loha", "lokr", "lokr_full"])
def test_image_maker_applies_the_file_as_trained(variant, tiny_model_dir, tmp_path):
    from engine.image_maker import ImageMaker

    trained = trained_like(tiny_model_dir, variant)
    trained.denoiser.eval()
    expected = outputs(trained)
    path = save_lora_file(tmp_path / f"{variant}.safetensors", kohya_state_dict(trained, dtype=torch.float32), {})
    maker = ImageMaker(load_base_model(tiny_model_dir))
    base = outputs(maker.model)
    maker.load_loras({variant: path})
    maker.set_lora_weights({variant: 1.0})
    assert relative_gap(outputs(maker.model), expected, base) < 2e-3
    maker.set_lora_weights({variant: 0.5})
    half = outputs(maker.model)
    # About half the effect; with DoRA peft halves dW inside the normalisation and keeps the learned
    # magnitudes, so less changes (ComfyUI instead interpolates between the base and the full weight).
    low, high = (0.02, 0.8) if "dora" in variant else (0.2, 0.8)
    assert low < relative_gap(half, expected, base) < high
    maker.set_lora_weights({})
    assert all(torch.equal(now, before) for now, before in zip(outputs(maker.model), base, strict=True))


# --- file size ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_size_estimate_is_the_exported_files_tensor_bytes(variant, tiny_model_dir):
    from engine.network.size import model_target_shapes, shapes_bytes

    base = load_base_model(tiny_model_dir)
    spec = spec_of(variant)
    shapes = model_target_shapes(base.denoiser, base.text_encoders, convs=spec.covers_convs)
    trained = trained_like(tiny_model_dir, variant)
    tensors = kohya_state_dict(trained, dtype=torch.float16)
    assert shapes_bytes(spec, shapes) == sum(tensor.numel() * 2 for tensor in tensors.values())


def test_size_of_a_published_model():
    from engine.network.size import network_file_bytes

    # kohya's SD 1.5 LoRA at dim 8 with the text encoder is 9.4 MB of fp16 tensors.
    assert network_file_bytes("sd1", NetworkSpec(dim=8), train_text_encoder=True) == 9_437_712


def test_the_shipped_shapes_table_is_the_published_models_count():
    """target_shapes.json (read by the wizard without torch) equals the shapes counted on the
    published configurations; `python -m engine.network.size` writes it anew."""
    import json

    from engine.network.size import SHAPES_TABLE, shapes_table

    assert json.loads(SHAPES_TABLE.read_text(encoding="utf-8")) == shapes_table()


def test_lokr_factorization_is_peft_s():
    from peft.tuners.lokr.layer import factorization as peft_factorization

    from engine.network.size import factorization

    for dimension in (1, 2, 3, 7, 64, 127, 128, 320, 640, 768, 1280, 2048, 3072, 12288):
        for factor in (-1, 1, 2, 4, 8, 16, 3):
            assert factorization(dimension, factor) == peft_factorization(dimension, factor), (dimension, factor)


# --- several processes --------------------------------------------------------------------------------


def test_two_processes_train_a_lokr_as_one_with_the_doubled_batch(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.config import load_answers
    from engine.events import EventLog
    from engine.plan import plan_training
    from engine.train import train
    from tests.conftest import write_answers
    from tests.engine.test_multiprocess import relative_difference, run

    def train_with(folder, batch_size: int, processes: int) -> dict:
        network = {"type": "lokr", "dim": 4, "alpha": 4, "factor": 4, "conv_dim": 2}
        training = {"max_steps": 4, "batch_size": batch_size, "processes": processes}
        answers = write_answers(folder, tiny_model_dir, *tiny_dataset, network=network, training=training, output={"dtype": "fp32"})
        if processes > 1:
            run("train", str(answers))  # torchrun, as on GPUs
        else:
            train(plan_training(load_answers(answers)), EventLog(None))
        return load_file(folder / "output" / "tiny.safetensors")

    two = train_with(tmp_path / "two", 2, 2)
    one = train_with(tmp_path / "one", 4, 1)
    assert any(key.endswith(".lokr_w1") for key in two)
    assert relative_difference(one, two) < 1e-5


def test_module_dropout_is_refused_with_several_processes():
    data = minimal_answers({"type": "loha", "module_dropout": 0.1})
    data["training"] = {"processes": 2}
    with pytest.raises(AnswersError, match="module_dropout"):
        answers_from_dict(data)
