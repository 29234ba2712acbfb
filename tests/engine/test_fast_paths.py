"""The training step's fast paths, checked on the CPU on the tiny model.

What only a GPU can show (host-device syncs per step, peak VRAM, speed) the bench measures
(bench/gpu_case.py); here: the decisions behind them, and that they leave the results unchanged:
which frozen parts wait in host memory and that the loop never needs them there, the optimizer and
attention in use, and decoding in worker processes giving the same LoRA and the same resume.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import engine.latents
from engine.checkpoint import Position
from engine.config import answers_from_dict, load_answers
from engine.devices import Parking, enable_tf32, loader_workers, use_channels_last
from engine.events import EventLog
from engine.optim import build_optimizer
from engine.parking import offloadable_parts
from engine.plan import plan_training
from engine.train import Controls, Interrupted, Trainer, train
from tests.conftest import copy_with_nan_vae, write_answers

CPU = torch.device("cpu")


def answers_with(**sections):
    data = {"model": {"path": "model"}, "dataset": {"train_dir": "train"}, "output": {"name": "x"}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return answers_from_dict(data)


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({}, {"vae"}),  # latents cached; the text encoder is trained
        ({"network": {"train_text_encoder": False}}, {"vae", "text_encoders"}),  # SDXL's default: UNet only
        ({"network": {"train_text_encoder": False}, "training": {"cache_latents": "off"}}, {"text_encoders"}),
        ({"network": {"train_text_encoder": False}, "training": {"cache_latents": "disk"}}, {"vae", "text_encoders"}),
        ({"network": {"train_text_encoder": False}, "dataset": {"shuffle_tags": True}}, {"vae"}),
        ({"network": {"train_text_encoder": False}, "dataset": {"caption_dropout": 0.1}}, {"vae"}),
    ],
)
def test_which_frozen_parts_may_wait_in_host_memory(sections, expected):
    assert offloadable_parts(answers_with(**sections)) == expected


def test_parking_brings_parts_back_only_while_in_use():
    vae, encoder = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    parking = Parking(CPU, {"vae": [vae], "text_encoders": [encoder]})
    parking.park({"vae"})
    assert parking.parked == {"vae"}
    with parking.in_use("vae", "text_encoders"):
        assert parking.parked == set()  # the never-parked encoder is not parked on the way out either
    assert parking.parked == {"vae"}
    with pytest.raises(RuntimeError), parking.in_use("vae"):
        raise RuntimeError("a failed sample")
    assert parking.parked == {"vae"}
    assert vae.weight.device == CPU and encoder.weight.device == CPU


def test_cuda_only_settings_leave_a_cpu_run_alone():
    before = torch.get_float32_matmul_precision()
    assert enable_tf32(CPU) is False and torch.get_float32_matmul_precision() == before
    assert use_channels_last(CPU, True) is False
    assert loader_workers(CPU) == 0


def test_adamw_is_fused_on_cuda_and_torchs_default_on_the_cpu():
    answers = answers_with()
    params = [torch.nn.Parameter(torch.zeros(4))]
    assert build_optimizer(answers, params, [], "cuda").defaults["fused"] is True
    assert not build_optimizer(answers, params, [], "cpu").defaults["fused"]


# --- setup brings the parts to the device one at a time ---------------------------------------------------


PARKED_HERE = "cpu:0"  # the CPU under another name: see placements_during_setup


def placements_during_setup(monkeypatch, answers) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """Which parts were on the training device each time the VAE encoded an image, a text encoder
    encoded a caption or the UNet ran during setup; and which were there after it. On this machine
    the training device and the parking place are both the CPU, so parking goes to "cpu:0" here: the
    same memory under a name the recording can tell apart."""
    import engine.devices
    import engine.families

    monkeypatch.setattr(engine.devices, "PARKING_DEVICE", PARKED_HERE)
    on_device: set[str] = set()
    calls: list[tuple[str, set[str]]] = []

    def follow_moves(module, part: str) -> None:
        move = module.to

        def to(*args, **kwargs):
            device = kwargs.get("device", args[0] if args and isinstance(args[0], str | torch.device) else None)
            if device is not None:
                (on_device.discard if str(device) == PARKED_HERE else on_device.add)(part)
            return move(*args, **kwargs)

        module.to = to

    def record_calls(module, part: str) -> None:
        module.register_forward_pre_hook(lambda *_: calls.append((part, set(on_device))))

    load = engine.families.load_base_model

    def load_followed(*args, **kwargs):
        model = load(*args, **kwargs)
        for part, module in (("unet", model.denoiser), ("vae", model.vae), *(("text_encoders", e) for e in model.text_encoders)):
            follow_moves(module, part)
            # The VAE's encoder: vae.encode() does not go through the VAE's own forward().
            record_calls(model.vae.encoder if part == "vae" else module, part)
        return model

    monkeypatch.setattr(engine.families, "load_base_model", load_followed)
    Trainer(plan_training(answers), EventLog(None)).setup()
    return calls, on_device


def test_setup_caches_with_one_part_on_the_device_at_a_time(monkeypatch, tmp_path, tiny_model_dir, tiny_dataset):
    """kohya's order: the VAE encodes every image alone on the GPU, then the frozen text encoder
    every caption, and only then does the UNet arrive; setup's peak is the largest part's work, not
    every part at once (SDXL: ~3.4 GiB instead of ~9.7 GiB)."""
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0], network={"train_text_encoder": False}))
    calls, after_setup = placements_during_setup(monkeypatch, answers)
    encoded = [on_device for part, on_device in calls if part == "vae"]
    captions = [on_device for part, on_device in calls if part == "text_encoders"]
    assert encoded and all(on_device == {"vae"} for on_device in encoded)
    assert captions and all(on_device == {"text_encoders"} for on_device in captions)
    assert [part for part, _ in calls] == ["vae"] * len(encoded) + ["text_encoders"] * len(captions)
    assert after_setup == {"unet"}  # both frozen parts wait in host memory


def test_text_encoders_that_run_every_step_stay_on_the_device(monkeypatch, tmp_path, tiny_model_dir, tiny_dataset):
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0], network={"train_text_encoder": False},
                                         dataset={"shuffle_tags": True}))
    calls, after_setup = placements_during_setup(monkeypatch, answers)
    assert {part for part, _ in calls} == {"vae"}  # no caption cache to fill
    assert after_setup == {"unet", "text_encoders"}


# --- the frozen parts are not needed by the loop ---------------------------------------------------------

SAMPLES = {"prompts": ["usu bear --w 64 --h 64 --s 2 --d 1"], "every_steps": 2}


@pytest.fixture(scope="module")
def unet_only_run(tmp_path_factory, tiny_model_dir, tiny_dataset):
    """A UNet-only run with cached latents and samples every 2 steps, recording each call of the
    text encoder and the VAE with what was parked at that moment."""
    folder = tmp_path_factory.mktemp("unet-only")
    answers = load_answers(write_answers(folder, tiny_model_dir, tiny_dataset[0], network={"train_text_encoder": False},
                                         training={"max_steps": 4}, samples=SAMPLES))
    trainer = Trainer(plan_training(answers), EventLog(None), run_dir=folder / "run")
    trainer.setup()
    calls = []
    model = trainer.model
    for name, module in (("text_encoder", model.text_encoders[0]), ("vae.encoder", model.vae.encoder), ("vae.decoder", model.vae.decoder)):
        module.register_forward_pre_hook(lambda _module, _args, name=name: calls.append((name, set(trainer.parking.parked))))
    parked_after_setup = set(trainer.parking.parked)
    trainer.run()
    return trainer, parked_after_setup, calls


def test_after_setup_the_vae_and_frozen_text_encoder_wait_in_host_memory(unet_only_run):
    trainer, parked_after_setup, _ = unet_only_run
    assert parked_after_setup == {"vae", "text_encoders"}
    captions = {e.caption for e in trainer.examples}
    assert set(trainer.conditioning.cache) == captions  # every caption encoded during setup


def test_the_loop_calls_the_parked_parts_only_for_samples_after_bringing_them_back(unet_only_run):
    _, _, calls = unet_only_run
    assert {name for name, _ in calls} == {"text_encoder", "vae.decoder"}  # sample prompts and images
    # Each on the training device when called; the text encoder back in host memory while the VAE
    # decodes (its peak), the VAE on the device throughout (the pipeline runs on its device).
    assert all(parked == set() for name, parked in calls if name == "text_encoder")
    assert all(parked == {"text_encoders"} for name, parked in calls if name == "vae.decoder")
    assert len([name for name, _ in calls if name == "vae.decoder"]) == 2  # samples at steps 2 and 4


def test_the_unet_attends_with_pytorchs_scaled_dot_product_attention(unet_only_run):
    from diffusers.models.attention_processor import AttnProcessor2_0

    trainer, _, _ = unet_only_run
    processors = trainer.accelerator.unwrap_model(trainer.model.denoiser).attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


# --- decoding ahead in worker processes -------------------------------------------------------------------

UNCACHED = {"max_steps": 6, "cache_latents": "off", "log_every_steps": 2}


class StopAt(Controls):
    reason = "test"

    def __init__(self, step: int):
        self.step, self.polls = step, 0

    def poll(self) -> str | None:
        self.polls += 1
        return "stop" if self.polls == self.step else None


def count_main_process_decodes(monkeypatch) -> list[int]:
    """Counts the images decoded in this process (worker processes count in their own copies)."""
    decoded = []
    real = engine.latents.image_tensor

    def counted(*args, **kwargs):
        decoded.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.latents, "image_tensor", counted)
    return decoded


@pytest.fixture(scope="module")
def uncached_in_process(tmp_path_factory, tiny_model_dir, tiny_dataset):
    """The reference: latents not cached, images decoded on the training thread."""
    folder = tmp_path_factory.mktemp("uncached")
    answers = load_answers(write_answers(folder, tiny_model_dir, *tiny_dataset, dataset={"flip": True}, training=UNCACHED))
    train(plan_training(answers), EventLog(None))
    return load_file(answers.lora_path)


def assert_identical(result: dict, expected: dict) -> None:
    assert result.keys() == expected.keys()
    assert all(torch.equal(result[k], expected[k]) for k in expected)


def test_worker_processes_decode_every_image_and_train_the_same_lora(tmp_path, tiny_model_dir, tiny_dataset,
                                                                      uncached_in_process, monkeypatch):
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, *tiny_dataset, dataset={"flip": True}, training=UNCACHED))
    monkeypatch.setattr(Trainer, "data_workers", 2)
    decoded = count_main_process_decodes(monkeypatch)
    train(plan_training(answers), EventLog(None))
    assert decoded == []  # the workers decoded them all, in the order the loop asked
    assert_identical(load_file(answers.lora_path), uncached_in_process)


def test_a_run_stopped_and_resumed_with_workers_is_exact(tmp_path, tiny_model_dir, tiny_dataset, uncached_in_process, monkeypatch):
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, *tiny_dataset, dataset={"flip": True}, training=UNCACHED))
    monkeypatch.setattr(Trainer, "data_workers", 2)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(plan_training(answers), EventLog(None), run_dir=run_dir, controls=StopAt(3))
    events = []
    train(plan_training(answers), EventLog(None, [events.append]), run_dir=run_dir, resume=True)
    assert [e["step"] for e in events if e["kind"] == "resumed"] == [3]
    assert_identical(load_file(answers.lora_path), uncached_in_process)


def test_uncached_nan_latents_stop_the_run_at_the_first_loss_read_back(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.train import TrainingFailed

    broken = copy_with_nan_vae(tiny_model_dir, tmp_path / "broken")
    answers = load_answers(write_answers(tmp_path, broken, tiny_dataset[0], training=UNCACHED))
    events = []
    trainer = Trainer(plan_training(answers), EventLog(None, [events.append]))
    trainer.setup()
    with pytest.raises(TrainingFailed, match=r"the VAE produced NaN or infinite latents for an image of steps 1-2"):
        trainer.run(Position(0, 0, 0))
    assert not any(e["kind"] == "step" for e in events)


# --- torch.compile -----------------------------------------------------------------------------------------


def test_a_compiled_unet_trains_the_same_lora_and_samples_uncompiled(tmp_path, tiny_model_dir, tiny_dataset):
    """`[training] compile = true` compiles the UNet in place: its parameter names, hence the LoRA's
    keys, stay; samples run it uncompiled. On a CPU torch's default backend (inductor) takes minutes
    to compile even the tiny UNet, so this run forces the aot_eager backend: dynamo's capture and
    AOTAutograd's forward and backward graphs, run with eager kernels."""
    settings = {"training": {"max_steps": 2}, "samples": {"prompts": ["usu bear --w 64 --h 64 --s 2 --d 1"], "every_steps": 2}}
    reference = load_answers(write_answers(tmp_path / "eager", tiny_model_dir, tiny_dataset[0], **settings))
    train(plan_training(reference), EventLog(None))
    settings["training"]["compile"] = True
    compiled = load_answers(write_answers(tmp_path / "compiled", tiny_model_dir, tiny_dataset[0], **settings))
    events = []
    try:
        with torch.compiler.set_stance("default", force_backend="aot_eager"):
            train(plan_training(compiled), EventLog(None, [events.append]))
    finally:
        torch.compiler.reset()
    assert [e["step"] for e in events if e["kind"] == "sample"] == [2]
    expected, result = load_file(reference.lora_path), load_file(compiled.lora_path)
    assert result.keys() == expected.keys()
    flat = {name: torch.cat([t[k].float().flatten() for k in sorted(t)]) for name, t in (("expected", expected), ("result", result))}
    assert ((flat["result"] - flat["expected"]).norm() / flat["expected"].norm()).item() < 1e-5  # 0.0 here
