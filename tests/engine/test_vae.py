"""`[model] vae`: a VAE of the user's choice replaces the base model's, as a folder or a single file,
and a path that holds no fitting VAE is refused naming the key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from engine.config import load_answers
from engine.errors import AnswersError, ModelFileError
from engine.events import EventLog
from engine.families import load_base_model
from engine.latents import encode_image, image_tensor
from engine.plan import plan_training, prepare_plan
from engine.tiny import save_single_file, tiny_vae_config, vae_to_ldm
from engine.train import Trainer
from tests.conftest import write_answers


def with_vae(answers: Path, vae: Path) -> Path:
    """The answers file with `[model] vae` set (conftest's write_answers takes `model` as the model path)."""
    import tomli_w

    data = tomllib.loads(answers.read_text(encoding="utf-8"))
    data["model"]["vae"] = str(vae)
    answers.write_text(tomli_w.dumps(data), encoding="utf-8")
    return answers


def other_vae(seed: int = 123, **config):
    """A tiny VAE of the same architecture as the tiny model's, with other (random) weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{**tiny_vae_config(), **config}).eval()


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vae") / "other-vae"
    other_vae().save_pretrained(folder, safe_serialization=True)
    return folder


def same_weights(a, b) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k].to(first[k].dtype)) for k in first)


def first_image(dataset) -> Path:
    return sorted((dataset[0] / "10_usu bear").glob("*.png"))[0]


def test_a_vae_folder_replaces_the_base_models(tiny_model_dir, tiny_dataset, vae_folder):
    base = load_base_model(tiny_model_dir)
    replaced = load_base_model(tiny_model_dir, vae=vae_folder)
    assert same_weights(replaced.vae, other_vae()) and not same_weights(replaced.vae, base.vae)
    assert any(str(vae_folder) in note for note in replaced.notes)
    pixels = image_tensor(first_image(tiny_dataset), (64, 64))
    latents = [encode_image(model, pixels, mode="mean", sample_generator=None) for model in (base, replaced)]
    assert not torch.allclose(*latents)


@pytest.mark.parametrize("layout", ["ldm.safetensors", "ldm.ckpt", "diffusers.safetensors", "full-checkpoint.safetensors"])
def test_a_single_vae_file_in_either_layout_loads(tiny_model_dir, tmp_path, layout):
    vae = other_vae()
    ldm = vae_to_ldm(vae.state_dict(), dict(vae.config))  # `first_stage_model.*`, as in a full checkpoint
    kind, suffix = layout.split(".")
    path = tmp_path / f"vae.{suffix}"
    if kind == "ldm":  # a VAE file as AUTOMATIC1111 users keep them
        save_single_file({k.removeprefix("first_stage_model."): v for k, v in ldm.items()}, path)
    elif kind == "diffusers":
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    else:
        save_single_file(ldm, path)
    assert same_weights(load_base_model(tiny_model_dir, vae=path).vae, vae)


def test_training_encodes_with_the_given_vae_and_the_disk_cache_tells_them_apart(tmp_path, tiny_model_dir, tiny_dataset, vae_folder):
    def cached_latent(folder: Path, vae: Path | None):
        answers = write_answers(folder, tiny_model_dir, tiny_dataset[0], training={"cache_latents": "disk"},
                                output={"dir": str(tmp_path / "output"), "name": folder.name})
        if vae is not None:
            with_vae(answers, vae)
        trainer = Trainer(plan_training(load_answers(answers)), EventLog(None))
        trainer.setup()
        path = first_image(tiny_dataset)
        return trainer.latents.get(path, trainer.plan.sizes[path]), trainer

    base, _ = cached_latent(tmp_path / "base", None)
    given, trainer = cached_latent(tmp_path / "given", vae_folder)
    assert not torch.allclose(base, given)  # not the base VAE's latents read back from the shared disk cache
    assert len(list((tmp_path / "output" / ".latent-cache").glob("*.safetensors"))) == 2 * 4  # 4 images, each VAE
    trainer.outputs.save(tmp_path / "given.safetensors", step=0, epoch=0)
    from safetensors import safe_open

    with safe_open(tmp_path / "given.safetensors", "pt") as saved:
        assert saved.metadata()["ss_vae_name"] == vae_folder.name  # as kohya records its --vae


def test_a_missing_path_is_named_when_the_answers_load(tmp_path, tiny_model_dir, tiny_dataset):
    path = with_vae(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0]), tmp_path / "nowhere")
    with pytest.raises(AnswersError, match=r"model\.vae.*nowhere"):
        load_answers(path)


@pytest.mark.parametrize("what", ["unet folder", "lora file", "text file"])
def test_something_else_than_a_vae_is_refused_before_loading(tmp_path, tiny_model_dir, tiny_dataset, what):
    if what == "unet folder":
        target = tiny_model_dir / "unet"
    elif what == "lora file":
        target = tmp_path / "lora.safetensors"
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(target))
    else:
        target = tmp_path / "vae.txt"
        target.write_text("not weights")
    answers = load_answers(with_vae(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0]), target))
    with pytest.raises(ModelFileError) as error:
        prepare_plan(answers)
    assert "`[model] vae`" in error.value.render() and str(target) in error.value.render()


def test_a_vae_of_another_family_is_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "sdxl-like-vae"
    other_vae(scaling_factor=0.13025).save_pretrained(folder)  # SDXL's scaling factor, SD 1.x model
    with pytest.raises(ModelFileError, match=r"`\[model\] vae`: this VAE's scaling factor \(0.13025\) is not the base model's"):
        load_base_model(tiny_model_dir, vae=folder)
    narrow = tmp_path / "narrow.safetensors"
    vae = other_vae(block_out_channels=(16, 16, 16, 16), norm_num_groups=16)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(narrow))
    with pytest.raises(ModelFileError, match=r"`\[model\] vae`: this VAE does not fit the base model's VAE"):
        load_base_model(tiny_model_dir, vae=narrow)
