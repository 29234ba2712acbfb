"""The training loop's settings and failure handling, in-process on the tiny model."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoint import Position, checkpoint_dirs, read_checkpoint
from engine.config import load_answers
from engine.errors import UserError
from engine.events import EventLog, read_events
from engine.launch import execute_run
from engine.optim import resolve_precision
from engine.plan import plan_training
from engine.run_folder import create_run_folder, run_status
from engine.train import Trainer, train
from tests.conftest import write_answers


def test_precision_auto_is_no_on_cpu_and_bf16_where_supported():
    assert resolve_precision("auto", "cpu", False) == "no"
    assert resolve_precision("auto", "cuda", True) == "bf16"
    assert resolve_precision("auto", "cuda", False) == "fp16"
    with pytest.raises(UserError, match="needs a GPU"):
        resolve_precision("fp16", "cpu", False)


def test_plan_follows_kohyas_arithmetic(tmp_path, tiny_model_dir, tiny_dataset):
    answers = write_answers(tmp_path, tiny_model_dir, *tiny_dataset, training={"epochs": 3, "max_steps": None, "batch_size": 3, "gradient_accumulation": 2})
    plan = plan_training(load_answers(answers))
    # 4 images x 10 repeats + 40 matched reg images = 80 items; ceil(80/3) = 27 batches; ceil(27/2) = 14 steps
    assert (plan.dataset.items_per_epoch, plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (80, 27, 14, 42)
    assert "batches per epoch: ceil(80 / batch size 3) = 27" in plan.breakdown()


def test_epoch_files_disk_latent_cache_and_frozen_text_encoder(tmp_path, tiny_model_dir, tiny_dataset):
    import shutil

    train_dir = tmp_path / "train"
    shutil.copytree(tiny_dataset[0] / "10_usu bear", train_dir / "2_usu bear")  # 4 images x 2 repeats
    answers_path = write_answers(
        tmp_path,
        tiny_model_dir,
        train_dir,
        network={"train_text_encoder": False},
        training={"max_steps": None, "epochs": 2, "batch_size": 4, "save_every_epochs": 1, "cache_latents": "disk"},
    )
    answers = load_answers(answers_path)
    events = []
    result = train(plan_training(answers), EventLog(None, [events.append]))
    output = answers.output.dir
    assert (output / "tiny-000001.safetensors").is_file()  # epoch 1 of 2; the last epoch is the final file
    assert not (output / "tiny-000002.safetensors").exists()
    assert result.lora_path == output / "tiny.safetensors" and result.steps == 4
    assert len(list((output / ".latent-cache").glob("*.safetensors"))) == 4  # one per unique image
    from safetensors import safe_open

    with safe_open(result.lora_path, "pt") as lora:
        assert not any(k.startswith("lora_te_") for k in lora.keys())  # noqa: SIM118  UNet only
    # A run with latents in memory trains to the same result as the one that read them from disk.
    again_path = write_answers(tmp_path / "again", tiny_model_dir, train_dir, network={"train_text_encoder": False},
                               training={"max_steps": 4, "batch_size": 4, "cache_latents": "memory"})
    again = load_answers(again_path)
    train(plan_training(again), EventLog(None))
    from safetensors.torch import load_file

    first, second = load_file(result.lora_path), load_file(again.lora_path)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_checkpoint_due_by_every_steps_on_an_epochs_last_step_is_written_without_every_epoch(tmp_path, tiny_model_dir, tiny_dataset):
    import shutil

    train_dir = tmp_path / "train"
    shutil.copytree(tiny_dataset[0] / "10_usu bear", train_dir / "2_usu bear")  # 8 items: 2 steps of 4 an epoch
    answers_path = write_answers(
        tmp_path, tiny_model_dir, train_dir,
        training={"max_steps": None, "epochs": 2, "batch_size": 4, "save_every_epochs": 1},
        checkpoints={"every_steps": 2, "every_epoch": False},
    )
    events = []
    run_dir = tmp_path / "run"
    train(plan_training(load_answers(answers_path)), EventLog(None, [events.append]), run_dir=run_dir)
    kinds = [(e["kind"], e.get("step")) for e in events if e["kind"] in ("epoch", "saved", "checkpoint")]
    # Step 2 ends epoch 1: its checkpoint comes after the epoch's file, and resumes at epoch 2 (1, 0-based).
    # Step 4 ends the run: the final LoRA, no checkpoint.
    assert kinds == [("epoch", 2), ("saved", 2), ("checkpoint", 2), ("epoch", 4), ("saved", 4)]
    assert read_checkpoint(checkpoint_dirs(run_dir)[0]).position == Position(2, 1, 0)


def test_a_nan_loss_fails_the_run_with_a_remedy_and_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0], training={"max_steps": 8, "log_every_steps": 2},
                                         checkpoints={"every_steps": 2}))
    original = Trainer.batch_loss
    calls = []

    def poisoned(self, batch):
        calls.append(1)
        loss = original(self, batch)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(Trainer, "batch_loss", poisoned)
    folder = create_run_folder(answers)
    status = execute_run(plan_training(answers), folder)
    assert status == 1
    last = list(read_events(folder / "events.jsonl"))[-1]
    assert last["kind"] == "failed" and "loss became nan at step 5" in last["message"]
    assert "learning rate" in last["remedy"] and "lora-wizard resume" in last["resume"]
    assert read_checkpoint(checkpoint_dirs(folder)[0]).position.step == 4  # the last good one
    assert run_status(folder).state == "failed"
    assert not answers.lora_path.exists()


def test_an_unexpected_error_is_recorded_with_its_traceback(tmp_path, tiny_model_dir, tiny_dataset, monkeypatch):
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0]))

    def out_of_memory(self, batch):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "batch_loss", out_of_memory)
    folder = create_run_folder(answers)
    assert execute_run(plan_training(answers), folder) == 1
    last = list(read_events(folder / "events.jsonl"))[-1]
    assert last["kind"] == "failed" and "out of memory" in last["message"]
    assert "batch size 1" in last["remedy"] and "gradient checkpointing" in last["remedy"]
    assert "RuntimeError" in (folder / "error.log").read_text()


def test_a_run_without_engine_or_final_event_stopped_unexpectedly(tmp_path, tiny_model_dir, tiny_dataset):
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, tiny_dataset[0]))
    folder = create_run_folder(answers)
    with EventLog(folder / "events.jsonl") as events:
        events.emit("started", run_dir=str(folder), total_steps=6, epochs=1, steps_per_epoch=6, breakdown=[], settings={})
        events.emit("step", step=2, total_steps=6, epoch=1, loss=0.5, lr=1e-3)
    status = run_status(folder)
    assert (status.state, status.progress) == ("stopped unexpectedly", "2/6")


def test_a_single_file_checkpoint_in_the_original_layout_loads_offline_and_trains(tmp_path, tiny_model_dir, tiny_dataset):
    import shutil

    from engine.plan import prepare_plan
    from engine.tiny import write_tiny_single_file

    model_file = write_tiny_single_file(tiny_model_dir, tmp_path / "models" / "tiny-sd15.safetensors")
    shutil.copytree(tiny_model_dir / "tokenizer", tmp_path / "models" / "tokenizer")  # beside the file, as users keep it
    answers = load_answers(write_answers(tmp_path, model_file, tiny_dataset[0], training={"max_steps": 2}))
    plan = prepare_plan(answers)
    assert plan.family_label == "SD 1.x"
    events = []
    result = train(plan, EventLog(None, [events.append]))
    assert result.steps == 2 and result.lora_path.is_file()
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2]


def test_a_copied_dataset_trains_the_same_lora(tmp_path, tiny_model_dir, tiny_dataset):
    """The randomness comes from the seed, the sample's index and the image's name in its dataset,
    never from where the dataset lives (the sampled latents were once seeded by the absolute path)."""
    import shutil

    from safetensors.torch import load_file

    train_root, reg_root = tiny_dataset
    copied = tmp_path / "elsewhere"
    shutil.copytree(train_root, copied / "train")
    shutil.copytree(reg_root, copied / "reg")
    loras = []
    for name, (train_dir, reg_dir) in {"original": tiny_dataset, "copy": (copied / "train", copied / "reg")}.items():
        answers = load_answers(write_answers(tmp_path / name, tiny_model_dir, train_dir, reg_dir, training={"max_steps": 2, "latents": "sample"}))
        loras.append(load_file(train(plan_training(answers), EventLog(None)).lora_path))
    original, copy = loras
    assert original.keys() == copy.keys()
    assert all(torch.equal(original[k], copy[k]) for k in original)
