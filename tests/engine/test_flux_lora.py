"""FLUX.1 LoRA export: kohya's names (each a real module of BFL's layout), the fused projections
exact, and the file loading through diffusers' FluxPipeline.load_lora_weights with the trained effect."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.families.flux_layout import diffusers_to_bfl
from engine.families.flux_lora import (
    TrainedLayer,
    clip_l_stem,
    kohya_flux_state_dict,
    transformer_lora_targets,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RANK, ALPHA = 4, 2.0


def _inject(module, targets, adapter="trained"):
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(
        LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets), module, adapter_name=adapter
    )


def _randomize(module, adapter="trained", seed=3, dtype=torch.bfloat16):
    """Seeded LoRA weights, exactly representable in `dtype` (the file and diffusers keep them there)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if f".{adapter}." in name and "lora_" in name:
                parameter.copy_((torch.randn(parameter.shape, generator=generator) * 0.2).to(dtype).float())


def _trained_layers(module, adapter="trained") -> list[TrainedLayer]:
    from peft.tuners.lora import LoraLayer

    return [
        TrainedLayer(
            path, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, float(layer.lora_alpha[adapter])
        )
        for path, layer in module.named_modules()
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A
    ]


def _full_size_flux_on_meta(**sizes):
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(guidance_embeds=True, **sizes)


def test_every_key_is_a_real_module_of_the_bfl_layout_and_kohyas_module_set():
    """FLUX.1 dev at full size (on the meta device): 19 double blocks x 10 kohya modules and 38 single
    blocks x 3, each a weight of the BFL file with the LoRA's in/out sizes."""
    transformer = _full_size_flux_on_meta()
    targets = transformer_lora_targets(transformer)
    assert len(targets) == 19 * 14 + 38 * 6  # diffusers' separate q/k/v (and mlp) layers
    bfl = diffusers_to_bfl(transformer.state_dict())
    layers = [
        TrainedLayer(
            path, torch.zeros(RANK, module.in_features), torch.zeros(module.out_features, RANK), ALPHA
        )
        for path in targets
        for module in [transformer.get_submodule(path)]
    ]
    tensors = kohya_flux_state_dict(layers, dtype=torch.float32)
    stems = {key.split(".")[0] for key in tensors}
    expected = {
        f"lora_unet_double_blocks_{i}_{side}_{part}"
        for i in range(19)
        for side in ("img", "txt")
        for part in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2", "mod_lin")
    }
    expected |= {
        f"lora_unet_single_blocks_{i}_{part}"
        for i in range(38)
        for part in ("linear1", "linear2", "modulation_lin")
    }
    assert stems == expected
    bfl_weights = {
        "lora_unet_" + key.removesuffix(".weight").replace(".", "_"): key
        for key in bfl
        if key.endswith(".weight")
    }
    for stem in stems:
        out_features, in_features = bfl[bfl_weights[stem]].shape
        assert tensors[f"{stem}.lora_up.weight"].shape[0] == out_features
        assert tensors[f"{stem}.lora_down.weight"].shape[1] == in_features
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 3 * RANK
    assert tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape[0] == 4 * RANK
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == 3 * ALPHA


def test_bfl_layout_matches_diffusers_own_converter_at_full_size():
    """Our diffusers -> BFL table, fed back through diffusers' convert_flux_transformer_checkpoint_to_diffusers
    (which only handles the full width), gives every diffusers tensor back with its shape."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    transformer = _full_size_flux_on_meta(num_layers=2, num_single_layers=2)
    state = transformer.state_dict()
    back = convert_flux_transformer_checkpoint_to_diffusers(diffusers_to_bfl(state))
    assert {key: tuple(value.shape) for key, value in back.items()} == {
        key: tuple(value.shape) for key, value in state.items()
    }


def test_fused_export_is_exact():
    """The fused module's delta (up @ down * alpha / rank) is the stack of the parts' deltas, in BFL's order."""
    from engine.tiny_flux import tiny_flux_transformer

    transformer = tiny_flux_transformer()
    _inject(transformer, transformer_lora_targets(transformer))
    _randomize(transformer)
    layers = {layer.path: layer for layer in _trained_layers(transformer)}
    tensors = kohya_flux_state_dict(layers.values(), dtype=torch.float32)

    def delta(stem):
        down, up = tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"]
        return up @ down * tensors[f"{stem}.alpha"] / down.shape[0]

    def part(path):
        return layers[path].up @ layers[path].down * ALPHA / RANK

    single = "single_transformer_blocks.1."
    expected = torch.cat(
        [part(single + name) for name in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    )
    torch.testing.assert_close(delta("lora_unet_single_blocks_1_linear1"), expected)
    expected = torch.cat([part(f"transformer_blocks.0.attn.add_{x}_proj") for x in "qkv"])
    torch.testing.assert_close(delta("lora_unet_double_blocks_0_txt_attn_qkv"), expected)
    torch.testing.assert_close(
        delta("lora_unet_double_blocks_0_img_mod_lin"), part("transformer_blocks.0.norm1.linear")
    )


def _fill(module, seed=0):
    """Seeded weights for a large model, quickly: a 1M-number random pattern repeated."""
    generator = torch.Generator().manual_seed(seed)
    pattern = torch.randn(1 << 20, generator=generator) * 0.02
    with torch.no_grad():
        for parameter in module.parameters():
            flat = parameter.view(-1)
            for start in range(0, flat.numel(), pattern.numel()):
                chunk = flat[start : start + pattern.numel()]
                chunk.copy_(pattern[: chunk.numel()])


def test_the_file_loads_through_diffusers_and_its_effect_is_the_trained_models(tmp_path):
    """diffusers' kohya FLUX converter hard-codes FLUX.1's width (3072, mlp 12288), so this runs on a
    full-width transformer with one double and one single block, and a tiny CLIP-L with a LoRA too."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from engine.tiny import tiny_text_encoder_config

    base = _full_size_flux_on_meta(
        in_channels=64, num_layers=1, num_single_layers=1, joint_attention_dim=32, pooled_projection_dim=32
    )
    base = base.to_empty(device="cpu").to(torch.bfloat16)
    _fill(base)
    torch.manual_seed(0)
    clip = CLIPTextModel(tiny_text_encoder_config(100)).eval()
    trained, trained_clip = copy.deepcopy(base), copy.deepcopy(clip)
    _inject(trained, transformer_lora_targets(trained))
    _randomize(trained)
    clip_targets = [
        path
        for path, module in trained_clip.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in path
    ]
    _inject(trained_clip, clip_targets)
    _randomize(trained_clip, seed=4)
    trained.to(torch.bfloat16)
    tensors = kohya_flux_state_dict(
        _trained_layers(trained), _trained_layers(trained_clip), dtype=torch.bfloat16
    )
    assert all(key.startswith(("lora_unet_", "lora_te1_")) for key in tensors)
    assert (
        clip_l_stem("encoder.layers.0.self_attn.q_proj")
        == "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    )
    path = tmp_path / "flux_lora.safetensors"
    save_file(tensors, str(path))

    pipeline = FluxPipeline(
        scheduler=None,
        vae=None,
        text_encoder=clip,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=base,
    )
    ids = torch.tensor([[5, 6, 7, 8, 99]])
    generator = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 4, 64, generator=generator).bfloat16(),
        encoder_hidden_states=torch.randn(1, 8, 32, generator=generator).bfloat16(),
        pooled_projections=torch.randn(1, 32, generator=generator).bfloat16(),
        timestep=torch.tensor([0.5]),
        img_ids=torch.zeros(4, 3),
        txt_ids=torch.zeros(8, 3),
        guidance=torch.tensor([1.0]),
        return_dict=False,
    )
    with torch.no_grad():
        before = base(**inputs)[0].float()
        clip_before = clip(ids).pooler_output
        expected = trained(**inputs)[0].float()
        clip_expected = trained_clip(ids).pooler_output
        pipeline.load_lora_weights(str(path))
        loaded = base(**inputs)[0].float()
        clip_loaded = clip(ids).pooler_output
    for got, want, was in ((loaded, expected, before), (clip_loaded, clip_expected, clip_before)):
        effect = (want - was).norm()
        assert effect > 0.05 * was.norm()  # the LoRA changes the output
        assert (got - want).norm() < 0.02 * effect, ((got - want).norm(), effect)


def test_a_kohya_file_loads_back_into_the_tiny_pipeline_with_the_trained_effect():
    """For generate and samples at any width: the kohya file split back onto diffusers' layers
    (engine/families/flux_sampling.py) and loaded with FluxPipeline.load_lora_weights."""
    from diffusers import FluxPipeline

    from engine.families.flux_sampling import kohya_to_diffusers
    from engine.tiny_flux import tiny_flux_transformer

    base = tiny_flux_transformer().eval()
    trained = copy.deepcopy(base)
    _inject(trained, transformer_lora_targets(trained))
    _randomize(trained, dtype=torch.float32)
    tensors = kohya_flux_state_dict(_trained_layers(trained), dtype=torch.float32)
    converted, unmatched = kohya_to_diffusers(tensors, base)
    assert unmatched == []
    assert (
        converted["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"].shape[0] == RANK
    )  # block-diagonal: split exactly
    pipeline = FluxPipeline(
        scheduler=None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=base,
    )
    pipeline.load_lora_weights(converted)
    generator = torch.Generator().manual_seed(2)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 64, generator=generator),
        encoder_hidden_states=torch.randn(1, 8, 32, generator=generator),
        pooled_projections=torch.randn(1, 32, generator=generator),
        timestep=torch.tensor([0.4]),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(8, 3),
        guidance=torch.tensor([1.0]),
        return_dict=False,
    )
    with torch.no_grad():
        expected, loaded = trained(**inputs)[0], base(**inputs)[0]
        base.disable_lora()
        before = base(**inputs)[0]
    assert (expected - before).norm() > 0.05 * before.norm()
    assert (loaded - expected).norm() < 1e-4 * (expected - before).norm()
