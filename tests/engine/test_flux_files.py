"""FLUX.1's four files recognised from their headers: each wrong file in each slot is refused, naming
the file, the slot and what the file looks like; dev and schnell come from the guidance embedding."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import ModelFileError
from engine.families.flux_files import check_flux_file, check_flux_files

SLOT_KEYS = {
    "transformer": "[model] path",
    "ae": "[model] ae",
    "clip_l": "[model] clip_l",
    "t5xxl": "[model] t5xxl",
}


def _save(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file({key: value.clone().contiguous() for key, value in tensors.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def wrong_files(tmp_path_factory, tiny_flux) -> dict[str, Path]:
    """Files users put in the wrong slot: the other FLUX.1 parts, SD and SDXL checkpoints (their key
    names, tiny shapes), an SD VAE, a LoRA, a truncated and a pickled file."""
    import torch
    from diffusers import AutoencoderKL

    from engine.tiny import tiny_vae_config, vae_to_ldm

    folder = tmp_path_factory.mktemp("wrong-flux-files")
    z = torch.zeros(2, 2)
    sd_vae = AutoencoderKL(**tiny_vae_config())
    truncated = folder / "flux1-dev-truncated.safetensors"
    truncated.write_bytes(tiny_flux.transformer.read_bytes()[:-100])
    pickled = folder / "flux1-dev.ckpt"
    torch.save({"state_dict": {"img_in.weight": z}}, pickled)
    return {
        "the FLUX.1 transformer": tiny_flux.transformer,
        "the FLUX.1 autoencoder": tiny_flux.vae,
        "a CLIP text encoder": tiny_flux.clip,
        "a T5 text encoder": tiny_flux.t5,
        "an SD 1.x or 2.x checkpoint": _save(
            folder / "v1-5.safetensors",
            {
                "model.diffusion_model.input_blocks.0.0.weight": z,
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": z,
            },
        ),
        "an SDXL checkpoint": _save(
            folder / "sdxl.safetensors",
            {
                "model.diffusion_model.input_blocks.0.0.weight": z,
                "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": z,
            },
        ),
        "4 latent channels": _save(
            folder / "sd-vae.safetensors",
            {
                k.removeprefix("first_stage_model."): v.contiguous()
                for k, v in vae_to_ldm(sd_vae.state_dict(), dict(sd_vae.config)).items()
            },
        ),
        "a LoRA": _save(
            folder / "lora.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": z}
        ),
        "damaged": truncated,
        "pickled": pickled,
    }


def _description(path: Path, wrong_files: dict[str, Path]) -> str:
    return next(what for what, file in wrong_files.items() if file == path)


@pytest.mark.parametrize("slot", ["transformer", "ae", "clip_l", "t5xxl"])
def test_each_wrong_file_in_each_slot_is_refused_naming_the_file_the_slot_and_what_it_is(
    slot, wrong_files, tiny_flux
):
    right = {
        "transformer": tiny_flux.transformer,
        "ae": tiny_flux.vae,
        "clip_l": tiny_flux.clip,
        "t5xxl": tiny_flux.t5,
    }[slot]
    assert check_flux_file(right, slot).identity.kind == slot
    for what, path in wrong_files.items():
        if path == right:
            continue
        with pytest.raises(ModelFileError) as caught:
            check_flux_file(path, slot)
        message = caught.value.render()
        assert str(path) in message and SLOT_KEYS[slot] in message, message
        if what.startswith("the FLUX.1 "):
            what = {
                "the FLUX.1 transformer": "FLUX.1 dev transformer",
                "the FLUX.1 autoencoder": "FLUX.1 autoencoder",
            }[what]
        assert what in message, message
        assert "fix:" in message


def test_dev_and_schnell_come_from_the_guidance_embedding(tmp_path, tiny_flux):
    from engine.tiny_flux import write_tiny_flux_files

    schnell = write_tiny_flux_files(tmp_path / "schnell", variant="schnell")
    assert check_flux_file(schnell.transformer, "transformer").identity.variant == "schnell"
    assert (
        check_flux_files(tiny_flux.transformer, tiny_flux.vae, tiny_flux.clip, tiny_flux.t5).label
        == "FLUX.1 dev"
    )
    # Mixed up: a schnell file under dev's name, a dev file under schnell's name.
    for source, misnamed, says in (
        (schnell.transformer, "flux1-dev.safetensors", "says FLUX.1 dev"),
        (tiny_flux.transformer, "flux1-schnell-fp8.safetensors", "says FLUX.1 schnell"),
    ):
        target = tmp_path / "mixed" / misnamed
        target.parent.mkdir(exist_ok=True)
        shutil.copy(source, target)
        with pytest.raises(ModelFileError, match=says):
            check_flux_file(target, "transformer")


def test_fp8_transformer_files_are_recognised(tmp_path):
    import torch

    from engine.tiny_flux import write_tiny_flux_files

    files = write_tiny_flux_files(tmp_path, variant="dev", transformer_dtype=torch.float8_e4m3fn)
    checked = check_flux_file(files.transformer, "transformer")
    assert (checked.identity.variant, checked.fp8) == ("dev", "float8_e4m3fn")


def test_parts_of_different_models_are_refused(tmp_path, tiny_flux):
    from engine.tiny_flux import t5_state_dict, tiny_t5_encoder

    wider = tiny_t5_encoder(100, width=48)
    wider_t5 = _save(
        tmp_path / "t5xxl_fp16.safetensors", {k: v.contiguous() for k, v in t5_state_dict(wider).items()}
    )
    check_flux_file(wider_t5, "t5xxl")  # a T5 file on its own is fine
    with pytest.raises(ModelFileError, match=r"\[model\] t5xxl.*not parts of the same model") as caught:
        check_flux_files(tiny_flux.transformer, tiny_flux.vae, tiny_flux.clip, wider_t5)
    assert str(wider_t5) in caught.value.render()
