"""Training FLUX.1 LoRAs on the tiny model: from kohya's four files and from a diffusers folder (the
same LoRA), exact resume after SIGKILL, fp8 storage on the CPU, and the file kohya and ComfyUI read."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import write_answers, write_flux_answers
from tests.engine.test_resume import assert_identical, finish, kill_after_step, start

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 6
SETTINGS = {
    "training": {"max_steps": STEPS, "log_every_steps": 1, "text_encoder_lr": None},
    "checkpoints": {"every_steps": 2},
    "network": {"train_text_encoder": False},
}


def flux_answers(folder, files, train_dir, model=None, **sections):
    return write_flux_answers(folder, files, train_dir, model=model, **{**SETTINGS, **sections})


def train_here(answers):
    from engine.config import load_answers
    from engine.events import EventLog
    from engine.plan import prepare_plan
    from engine.train import train

    return train(prepare_plan(load_answers(answers)), EventLog(None))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_flux, tiny_dataset):
    folder = tmp_path_factory.mktemp("flux-trained")
    train_here(flux_answers(folder, tiny_flux, tiny_dataset[0]))
    return folder / "output" / "tiny.safetensors"


def test_training_writes_kohyas_flux_lora(trained):
    with safe_open(trained, "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    stems = {key.split(".")[0] for key in keys}
    assert stems == {f"lora_unet_double_blocks_0_{side}_{part}" for side in ("img", "txt") for part in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2", "mod_lin")} | {
        f"lora_unet_single_blocks_{i}_{part}" for i in range(2) for part in ("linear1", "linear2", "modulation_lin")
    }
    assert metadata["ss_base_model_version"] == "flux1"
    assert metadata["ss_network_module"] == "networks.lora_flux"
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert (metadata["ss_timestep_sampling"], metadata["ss_discrete_flow_shift"], metadata["ss_guidance_scale"]) == ("shift", "3.1582", "1.0")
    tensors = load_file(trained)
    assert all(torch.isfinite(value).all() for value in tensors.values())
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].abs().sum() > 0  # it trained


def test_a_diffusers_folder_trains_the_same_lora(tmp_path, tiny_flux, tiny_dataset, trained):
    from engine.tiny_flux import build_tiny_flux_pipeline

    folder = build_tiny_flux_pipeline(tmp_path / "FLUX.1-tiny")  # the same seed: the same weights as tiny_flux
    answers = write_answers(tmp_path, folder, tiny_dataset[0], **SETTINGS)
    train_here(answers)
    assert_identical(load_file(tmp_path / "output" / "tiny.safetensors"), load_file(trained))


def test_sigkill_then_resume_is_exact(tmp_path, tiny_flux, tiny_dataset, trained):
    answers = flux_answers(tmp_path, tiny_flux, tiny_dataset[0])
    kill_after_step(start("train", str(answers)), random.Random().randint(3, STEPS - 1))  # after the checkpoint at step 2
    events = finish(start("resume", str(tmp_path / "output" / "tiny.run")))
    assert [e["kind"] for e in events].count("resumed") == 1 and events[-1]["kind"] == "finished"
    assert_identical(load_file(tmp_path / "output" / "tiny.safetensors"), load_file(trained))


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="this torch has no float8")
def test_fp8_storage_trains_on_the_cpu(tmp_path, tiny_flux, tiny_dataset):
    import engine.setup
    from engine.families.flux_memory import stored_dtypes

    seen = {}
    place = engine.setup.place_denoiser

    def watch(model, training, device, dtype):
        place(model, training, device, dtype)
        seen.update(stored_dtypes(model.denoiser))

    answers = flux_answers(tmp_path, tiny_flux, tiny_dataset[0], training={**SETTINGS["training"], "fp8_base": True, "max_steps": 2})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.setup, "place_denoiser", watch)
        train_here(answers)
    assert seen["float8_e4m3fn"] > seen.get("float32", 0)  # most of the frozen transformer is stored in fp8
    tensors = load_file(tmp_path / "output" / "tiny.safetensors")
    assert all(torch.isfinite(value).all() for value in tensors.values())
    assert tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].abs().sum() > 0


def test_wrong_files_are_refused_before_anything_loads(tmp_path, tiny_flux, tiny_dataset):
    from engine.config import load_answers
    from engine.errors import ModelFileError
    from engine.plan import prepare_plan

    answers = flux_answers(tmp_path, tiny_flux, tiny_dataset[0], model={"t5xxl": str(tiny_flux.clip)})
    with pytest.raises(ModelFileError, match=r"`\[model\] t5xxl` should be the T5-XXL text encoder, but this file is a CLIP"):
        prepare_plan(load_answers(answers))


def test_images_from_the_base_model_and_the_trained_lora(tiny_flux, trained):
    from engine.families.flux import FluxOptions
    from engine.image_maker import ImageMaker
    from engine.prompts import SamplePrompt

    maker = ImageMaker.from_path(tiny_flux.transformer, device="cpu", flux=FluxOptions(ae=tiny_flux.vae, clip_l=tiny_flux.clip, t5xxl=tiny_flux.t5))
    prompt = SamplePrompt(prompt="a photo of usu bear", width=64, height=64, steps=2, cfg=3.5)
    base = maker.images(prompt, [1, 2])
    assert [image.size for image in base] == [(64, 64), (64, 64)] and base[0].tobytes() != base[1].tobytes()
    base = maker.images(prompt, [1])
    assert base[0].tobytes() == maker.images(prompt, [1])[0].tobytes()  # the seed decides the image
    maker.load_loras({"tiny": trained})
    maker.set_lora_weights({"tiny": 1.0})
    with_lora = maker.images(prompt, [1])[0]
    assert with_lora.tobytes() != base[0].tobytes()
    maker.set_lora_weights({})
    assert maker.images(prompt, [1])[0].tobytes() == base[0].tobytes()


def test_sides_that_do_not_pack_are_refused_before_anything_loads(tmp_path, tiny_flux, tiny_dataset):
    from engine.config import load_answers
    from engine.errors import AnswersError
    from engine.plan import prepare_plan

    answers = flux_answers(tmp_path, tiny_flux, tiny_dataset[0], dataset={"resolution": 72})
    with pytest.raises(AnswersError, match="multiples of 16"):
        prepare_plan(load_answers(answers))


def test_two_processes_train_as_one_with_the_doubled_batch(tmp_path, tiny_flux, tiny_dataset):
    from tests.engine.test_multiprocess import relative_difference, run

    lora = {}
    for processes, batch_size in ((2, 1), (1, 2)):
        folder = tmp_path / f"p{processes}"
        training = {**SETTINGS["training"], "max_steps": 3, "processes": processes, "batch_size": batch_size}
        run("train", str(flux_answers(folder, tiny_flux, tiny_dataset[0], training=training, output={"dtype": "fp32"})))
        lora[processes] = load_file(folder / "output" / "tiny.safetensors")
    assert relative_difference(lora[1], lora[2]) < 1e-5


def test_the_check_names_flux_and_estimates_it_with_flux_figures(tmp_path, tiny_flux, tiny_dataset):
    from engine.checks.run_items import model_and_dataset_items
    from engine.config import load_answers

    items, family, steps = model_and_dataset_items(load_answers(flux_answers(tmp_path, tiny_flux, tiny_dataset[0])))
    by_id = {item.id: item for item in items}
    assert by_id["run.model"].status == "ok" and by_id["run.model"].summary.startswith("FLUX.1 dev, single files")
    assert family == "flux1-dev" and "run.estimate_family" not in by_id
    assert steps == STEPS
