"""`lora-wizard check`: on this GPU-less machine, its --json schema, and with answers files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checks.costs import GiB
from engine.checks.environment import GpuFacts
from engine.checks.report import report_to_dict, run_checks
from tests.conftest import write_answers
from tests.engine.test_environment import CARD_12GB, CARD_24GB, alike_cards, machine
from tui_lora.cli import main

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DOC = REPO / "docs" / "check-json.md"

TOP_KEYS = {"schema_version", "status", "answers_file", "items", "machine", "recommendations", "estimate"}
ITEM_KEYS = {"id", "group", "title", "status", "summary", "remedy"}
MACHINE_KEYS = {
    "python", "platform", "torch", "nvidia_driver", "gpus", "cpu_cores", "cpu_usable", "cpu_busy", "ram_total_bytes", "ram_available_bytes",
    "swap_total_bytes", "swap_free_bytes", "disk", "packages",
}
TORCH_KEYS = {"version", "build", "cuda_version", "hip_version", "cuda_available", "mps_available", "error"}
DRIVER_KEYS = {"status", "version", "cuda_version", "error"}
GPU_KEYS = {"index", "name", "vram_total_bytes", "vram_free_bytes", "compute_capability", "bf16"}
DISK_KEYS = {"path", "free_bytes"}
RECOMMENDATION_KEYS = {
    "device", "device_name", "batch_size", "mixed_precision", "gradient_checkpointing", "half_precision_frozen_weights",
    "cache_latents", "fits_in_vram", "ram_swap_needed_bytes", "family", "processes", "process_gpus",
    "effective_batch_size", "optimizer", "train_text_encoder", "answers_defaults", "reasons", "warnings",
}
ESTIMATE_KEYS = {
    "family", "resolution", "batch_size", "gradient_accumulation", "processes", "effective_batch_size", "optimizer",
    "train_text_encoder", "mixed_precision", "gradient_checkpointing", "half_precision_frozen_weights", "cache_latents",
    "vram_needed_bytes", "vram_caching_bytes", "vram_training_bytes", "vram_sampling_bytes", "parked_parts", "fp16_safe_vae",
    "samples", "seconds_per_step",
    "steps", "total_seconds", "basis", "notes",
}


def lora_wizard(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `lora-wizard` command, as a user runs it."""
    command = [shutil.which("lora-wizard")] if shutil.which("lora-wizard") else [sys.executable, "-m", "tui_lora.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def check_json(capsys, *args: str) -> tuple[int, dict]:
    status = main(["check", *args, "--json"])
    return status, json.loads(capsys.readouterr().out)


def items_by_id(document: dict) -> dict[str, dict]:
    return {item["id"]: item for item in document["items"]}


def test_check_on_a_machine_without_gpu_reports_it_and_exits_0(tmp_path):
    done = lora_wizard("check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "no GPU found: training runs on the CPU" in done.stdout
    assert re.search(r"warn\s+NVIDIA driver\s+not found", done.stdout)
    assert "Recommended settings" in done.stdout and "Estimate" in done.stdout
    assert "Result: 0 failed" in done.stdout


def test_json_keys_are_pinned_and_documented(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, document = check_json(capsys)
    assert status == 0
    assert set(document) == TOP_KEYS
    assert document["schema_version"] == 1
    assert all(set(item) == ITEM_KEYS for item in document["items"])
    assert set(document["machine"]) == MACHINE_KEYS
    assert set(document["machine"]["torch"]) == TORCH_KEYS
    assert set(document["machine"]["nvidia_driver"]) == DRIVER_KEYS
    assert set(document["machine"]["disk"]) == DISK_KEYS
    assert set(document["recommendations"]) == RECOMMENDATION_KEYS
    assert set(document["estimate"]) == ESTIMATE_KEYS
    # This machine has no GPU; a simulated one pins the GPU entry's keys.
    simulated = report_to_dict(run_checks(facts=machine(CARD_24GB)))
    assert [set(gpu) for gpu in simulated["machine"]["gpus"]] == [GPU_KEYS]
    assert simulated["recommendations"]["device"] == "cuda" and simulated["estimate"]["vram_needed_bytes"] > 0
    documented = SCHEMA_DOC.read_text(encoding="utf-8")
    for key in TOP_KEYS | ITEM_KEYS | MACHINE_KEYS | TORCH_KEYS | DRIVER_KEYS | GPU_KEYS | RECOMMENDATION_KEYS | ESTIMATE_KEYS:
        assert f"`{key}" in documented or f".{key}`" in documented or f"{key}`" in documented, key


def test_bad_answers_file_exits_2_with_one_screen_and_no_traceback(tmp_path):
    answers = tmp_path / "answers.toml"
    answers.write_text('[model]\npath = "m"\n[dataset]\ntrain_dir = "t"\nresolutoin = 512\n[output]\nname = "x"\n', encoding="utf-8")
    done = lora_wizard("check", str(answers), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert "did you mean `resolution`" in done.stderr
    assert done.stderr.startswith("error:") and len(done.stderr.splitlines()) < 25


def test_invalid_toml_exits_2(tmp_path, capsys):
    answers = tmp_path / "answers.toml"
    answers.write_text("[model\npath = ", encoding="utf-8")
    assert main(["check", str(answers)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_answers_file_checks_the_run(tmp_path, capsys, tiny_model_dir, tiny_dataset):
    train, reg = tiny_dataset
    answers = write_answers(tmp_path, tiny_model_dir, train, reg)
    status, document = check_json(capsys, str(answers))
    items = items_by_id(document)
    assert status == 0, [i for i in document["items"] if i["status"] == "fail"]
    assert items["run.model"]["status"] == "ok" and "SD 1.x" in items["run.model"]["summary"]
    assert items["run.tokenizer"]["status"] == "ok"
    assert items["run.dataset"]["status"] == "ok"
    assert items["run.output"]["status"] == "ok" and "will be created" in items["run.output"]["summary"]
    assert items["run.estimate"]["status"] == "warn"  # the CPU: slow, said so
    assert document["answers_file"] == str(answers)
    estimate = document["estimate"]
    assert (estimate["family"], estimate["resolution"], estimate["batch_size"], estimate["steps"]) == ("sd1", 64, 2, 6)
    assert estimate["total_seconds"] == pytest.approx(6 * estimate["seconds_per_step"])
    assert main(["check", str(answers)]) == 0
    text = capsys.readouterr().out
    assert f"This run ({answers})" in text and "6 steps" in text


def test_run_problems_are_failed_items_with_remedies(tmp_path, capsys, tiny_dataset):
    train, _ = tiny_dataset
    answers = write_answers(tmp_path, tmp_path / "no-such-model.safetensors", train, training={"optimizer": "adamw8bit"})
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "tiny.safetensors").write_bytes(b"an earlier LoRA")
    status, document = check_json(capsys, str(answers))
    items = items_by_id(document)
    assert status == 1 and document["status"] == "fail"
    for item_id in ("run.model", "run.output", "run.optimizer"):
        assert items[item_id]["status"] == "fail", items[item_id]
        assert items[item_id]["remedy"], item_id
    assert items["run.dataset"]["status"] == "ok"


def test_estimate_item_fails_when_the_run_cannot_fit(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.config import load_answers

    train, _ = tiny_dataset
    path = write_answers(tmp_path, tiny_model_dir, train, dataset={"resolution": 1024}, training={"batch_size": 8})
    small_card = GpuFacts(0, "NVIDIA GeForce RTX 3060", 12 * GiB, 11 * GiB, (8, 6))
    report = run_checks(load_answers(path), facts=machine(small_card))
    estimate_item = next(i for i in report.items if i.id == "run.estimate")
    assert estimate_item.status == "fail" and "does not fit" in estimate_item.summary
    assert "batch_size" in estimate_item.remedy


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from engine.tiny_sdxl import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "model")


def test_an_sdxl_answers_file_is_estimated_as_sdxl(tmp_path, capsys, tiny_sdxl_dir, tiny_model_dir, tiny_dataset):
    """The family comes from the model (a tiny SDXL-shaped one: the family decides, not the size)."""
    from engine.checks.estimate import TrainingSetup, vram_needed
    from engine.config import load_answers

    train, _ = tiny_dataset
    path = write_answers(tmp_path, tiny_sdxl_dir, train, dataset={"resolution": None}, network={"train_text_encoder": False})
    status, document = check_json(capsys, str(path))
    assert status == 0, [i for i in document["items"] if i["status"] == "fail"]
    assert "SDXL" in items_by_id(document)["run.model"]["summary"]
    estimate = document["estimate"]
    assert (estimate["family"], estimate["resolution"], estimate["train_text_encoder"]) == ("sdxl", 1024, False)
    assert document["recommendations"]["family"] == "sdxl"
    # On a simulated 12 GB card: SDXL's cost, and the SDXL recommendations.
    report = run_checks(load_answers(path), facts=machine(CARD_12GB))
    expected = TrainingSetup(family="sdxl", batch_size=2, mixed_precision="bf16", train_text_encoder=False, network_dim=4)
    assert report.estimate.vram_needed == vram_needed(expected)
    assert report.estimate.vram_needed > 12 * GiB  # batch size 2 without checkpointing: SDXL does not fit
    estimate_item = next(i for i in report.items if i.id == "run.estimate")
    assert estimate_item.status == "fail"
    assert (report.recommendations.batch_size, report.recommendations.gradient_checkpointing) == (1, True)
    # The same answers on the tiny SD 1.x model: SD 1.x's figures, at SD 1.x's 512 px.
    sd1_path = write_answers(tmp_path / "sd1", tiny_model_dir, train, dataset={"resolution": None}, network={"train_text_encoder": False})
    sd1 = run_checks(load_answers(sd1_path), facts=machine(CARD_12GB))
    assert (sd1.estimate.setup.family, sd1.estimate.setup.resolution or sd1.estimate.setup.cost.resolution) == ("sd1", 512)
    assert sd1.estimate.vram_needed < report.estimate.vram_needed / 2


def test_processes_are_checked_against_the_gpus(tmp_path, tiny_model_dir, tiny_dataset):
    from engine.config import load_answers

    train, _ = tiny_dataset
    answers = load_answers(write_answers(tmp_path, tiny_model_dir, train, training={"processes": 2}))

    def processes_item(facts):
        return next(i for i in run_checks(answers, facts=facts).items if i.id == "run.processes")

    one_gpu = processes_item(machine(CARD_24GB))
    assert one_gpu.status == "fail" and "this machine has 1 usable GPU" in one_gpu.summary
    assert one_gpu.remedy == "set [training] processes = 1"
    two_gpus = processes_item(machine(*alike_cards(CARD_24GB, 2)))
    assert two_gpus.status == "ok" and "effective batch 2 x 2 x 1 = 4" in two_gpus.summary
    four_gpus = processes_item(machine(*alike_cards(CARD_24GB, 4)))
    assert four_gpus.status == "ok" and "processes = 4 would use every GPU" in four_gpus.summary
    cpu = next(i for i in run_checks(answers).items if i.id == "run.processes")  # this machine: no GPU
    assert cpu.status == "warn" and "CPU processes (gloo)" in cpu.summary


def test_several_gpus_in_the_text_report(capsys):
    from tui_lora.commands.check import print_report

    print_report(run_checks(facts=machine(*alike_cards(CARD_24GB, 2))))
    text = capsys.readouterr().out
    assert "Several GPUs" in text and "processes = 2" in text
    assert "effective batch = batch size 4 x 2 processes x accumulation 1 = 8" in text
    assert re.search(r"GPUs \(processes\)\s+2 \(effective batch 8\)", text)  # the recommended settings table
