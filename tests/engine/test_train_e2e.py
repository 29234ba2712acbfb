"""`lora-wizard train FILE` end to end on the tiny model: the LoRA it writes loads in diffusers and
reproduces the engine's own LoRA-wrapped model."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.config import load_answers
from engine.events import EventLog
from engine.plan import plan_training
from engine.train import Trainer
from tests.conftest import write_answers

LORA_WIZARD = shutil.which("lora-wizard")


def train_in_process(answers_path: Path) -> Trainer:
    plan = plan_training(load_answers(answers_path))
    trainer = Trainer(plan, EventLog(None))
    trainer.setup()
    trainer.run()
    return trainer


def model_inputs(tokenizer, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = tokenizer(["a photo of usu bear"], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    latents = torch.randn((1, 4, 8, 8), generator=generator)
    return ids, latents, torch.tensor([500])


def outputs(unet, text_encoder, ids, latents, timesteps):
    with torch.no_grad():
        hidden = text_encoder(ids, return_dict=False)[0]
        noise_prediction = unet(latents, timesteps, encoder_hidden_states=hidden, return_dict=False)[0]
    return hidden, noise_prediction


def assert_close(actual, expected, rel):
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= rel * scale, f"max diff {(actual - expected).abs().max().item()} vs scale {scale}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tiny_dataset):
    """The CLI's fp32 LoRA file, its events, and the same run trained in this process."""
    train_dir, reg_dir = tiny_dataset
    folder = tmp_path_factory.mktemp("e2e")
    answers = write_answers(folder / "cli", tiny_model_dir, train_dir, reg_dir, output={"dtype": "fp32"})
    result = subprocess.run([LORA_WIZARD, "train", str(answers)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    in_process = write_answers(folder / "lib", tiny_model_dir, train_dir, reg_dir, output={"dtype": "fp32"})
    trainer = train_in_process(in_process)
    return load_answers(answers).lora_path, events, trainer


def test_cli_prints_events_as_json_lines(trained):
    lora_path, events, _ = trained
    assert events[0]["kind"] == "started"
    assert Path(events[0]["run_dir"]).is_dir()
    assert events[-1]["kind"] == "finished" and events[-1]["lora"] == str(lora_path)
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert lora_path.is_file()


def test_training_is_deterministic_across_processes(trained):
    lora_path, _, trainer = trained
    from engine.network import kohya_state_dict

    from_cli = load_file(lora_path)
    from_library = kohya_state_dict(trainer.model, dtype=torch.float32)
    assert from_cli.keys() == from_library.keys()
    for key in from_cli:
        assert torch.equal(from_cli[key], from_library[key]), key


def test_diffusers_loads_the_lora_and_matches_the_engine(trained, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    lora_path, _, trainer = trained
    engine_unet = trainer.accelerator.unwrap_model(trainer.model.denoiser).eval()
    engine_text_encoder = trainer.accelerator.unwrap_model(trainer.model.text_encoders[0]).eval()
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    ids, latents, timesteps = model_inputs(pipeline.tokenizer)
    base_hidden, base_prediction = outputs(pipeline.unet, pipeline.text_encoder, ids, latents, timesteps)

    pipeline.load_lora_weights(str(lora_path))
    hidden, prediction = outputs(pipeline.unet, pipeline.text_encoder, ids, latents, timesteps)
    expected_hidden, expected_prediction = outputs(engine_unet, engine_text_encoder, ids, latents, timesteps)
    assert_close(hidden, expected_hidden, rel=1e-5)
    assert_close(prediction, expected_prediction, rel=1e-5)
    # ...and the LoRA does change both.
    assert (hidden - base_hidden).abs().max() > 1e-3
    assert (prediction - base_prediction).abs().max() > 1e-3


def test_fp16_file_matches_within_fp16_tolerance(trained, tiny_model_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    from engine.network import kohya_state_dict, save_lora_file

    _, _, trainer = trained
    fp16_path = save_lora_file(tmp_path / "tiny-fp16.safetensors", kohya_state_dict(trainer.model, dtype=torch.float16), {})
    assert all(t.dtype == torch.float16 for t in load_file(fp16_path).values())
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    ids, latents, timesteps = model_inputs(pipeline.tokenizer)
    pipeline.load_lora_weights(str(fp16_path))
    hidden, prediction = outputs(pipeline.unet, pipeline.text_encoder, ids, latents, timesteps)
    engine_unet = trainer.accelerator.unwrap_model(trainer.model.denoiser).eval()
    engine_text_encoder = trainer.accelerator.unwrap_model(trainer.model.text_encoders[0]).eval()
    expected_hidden, expected_prediction = outputs(engine_unet, engine_text_encoder, ids, latents, timesteps)
    assert_close(hidden, expected_hidden, rel=5e-3)
    assert_close(prediction, expected_prediction, rel=5e-3)


def test_a_run_says_which_parts_of_its_init_from_file_it_ignored(trained, tiny_model_dir, tiny_dataset, tmp_path):
    """A LoRA with text-encoder layers seeds a UNet-only run: the UNet part loads, and the ready event
    says the rest is ignored (kohya would ignore it silently)."""
    lora_path, _, _ = trained
    answers = write_answers(tmp_path, tiny_model_dir, tiny_dataset[0], network={"train_text_encoder": False, "init_from": str(lora_path)},
                            training={"max_steps": 1})
    result = subprocess.run([LORA_WIZARD, "train", str(answers)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ready = next(json.loads(line) for line in result.stdout.splitlines() if json.loads(line)["kind"] == "ready")
    assert ready["notes"] == [
        "the `[network] init_from` file's layers for the text encoder (`lora_te_*`) are ignored: "
        "this run does not train the text encoders (`[network] train_text_encoder = false`)"
    ]
