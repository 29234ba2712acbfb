"""The environment check and its recommendations, on simulated machines (any GPU, or none), and
the estimate's table against the published figures it cites."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from engine.checks.costs import FAMILY_COSTS, GB, GiB
from engine.checks.environment import (
    REQUIRED_PACKAGES,
    GpuFacts,
    MachineFacts,
    NvidiaDriverFacts,
    TorchFacts,
    gather_facts,
    read_nvidia,
)
from engine.checks.estimate import (
    ComputeDevice,
    TrainingSetup,
    estimate,
    frozen_part_bytes,
    gpu_speed,
    memory_phases,
    ram_needed_to_load,
    vram_needed,
)
from engine.checks.items import worst
from engine.checks.machine_items import machine_items
from engine.checks.recommend import recommend, training_gpu
from engine.checks.report import run_checks
from engine.checks.run_items import estimate_item

REPO = Path(__file__).resolve().parents[2]

CUDA_TORCH = TorchFacts(version="2.6.0+cu124", build="cuda", cuda_version="12.4", cuda_available=True, arch_list=("sm_75", "sm_80", "sm_86", "sm_89", "sm_90"))
CPU_TORCH = TorchFacts(version="2.13.0+cpu", build="cpu")
DRIVER = NvidiaDriverFacts("ok", version="550.54.15", cuda_version="12.4")
NO_DRIVER = NvidiaDriverFacts("not_found")


def card(name: str, gib: float, capability: tuple[int, int], index: int = 0, free_gib: float | None = None) -> GpuFacts:
    free = gib - 0.4 if free_gib is None else free_gib  # an idle card: the driver keeps a little
    return GpuFacts(index, name, int(gib * GiB), int(free * GiB), capability, uuid=f"GPU-{index:08d}-aaaa")


CARD_8GB = card("NVIDIA GeForce RTX 2080", 8, (7, 5))
CARD_12GB = card("NVIDIA GeForce RTX 3060", 12, (8, 6))
CARD_24GB = card("NVIDIA GeForce RTX 4090", 24, (8, 9))
CARD_80GB = card("NVIDIA H100 80GB HBM3", 79.6, (9, 0))
CARD_12GB_AT_1 = card("NVIDIA GeForce RTX 3060", 12, (8, 6), index=1)


def machine(*gpus: GpuFacts, torch: TorchFacts = CUDA_TORCH, driver: NvidiaDriverFacts = DRIVER, **overrides) -> MachineFacts:
    facts = MachineFacts(
        python_version=(3, 11, 7),
        platform="linux",
        torch=torch,
        driver=driver,
        gpus=gpus,
        cpu_cores=8,
        ram_total=64 * GiB,
        ram_available=60 * GiB,
        swap_total=8 * GiB,
        swap_free=8 * GiB,
        disk_path=Path("/data/output"),
        disk_free=500 * GiB,
        packages={name: "99.0" for name in REQUIRED_PACKAGES},
    )
    return replace(facts, **overrides)


def no_gpu_machine(**overrides) -> MachineFacts:
    return machine(torch=CPU_TORCH, driver=NO_DRIVER, **overrides)


def settings(facts: MachineFacts, **kwargs) -> tuple:
    rec = recommend(facts, **kwargs)
    return rec.batch_size, rec.mixed_precision, rec.gradient_checkpointing, rec.fits


def item(items, item_id):
    return next(i for i in items if i.id == item_id)


# --- recommendations for the four cards and for no GPU -----------------------------------------


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        # Under 10 GB: batch 1 (the seed article), 5.2 GiB while training with the VAE in RAM once
        # the latents are cached; Turing has no bf16.
        (CARD_8GB, (1, "fp16", False, True)),
        # 12 GB: two images (7.9 GiB); four would not fit (13.4 GiB).
        (CARD_12GB, (2, "bf16", False, True)),
        # 24 GB and 80 GB: the largest batch offered, nothing to save.
        (CARD_24GB, (4, "bf16", False, True)),
        (CARD_80GB, (4, "bf16", False, True)),
    ],
    ids=["8GB", "12GB", "24GB", "80GB"],
)
def test_sd1_recommendations_per_card(gpu, expected):
    assert settings(machine(gpu)) == expected


WITH_BITSANDBYTES = {**{name: "99.0" for name in REQUIRED_PACKAGES}, "bitsandbytes": "0.50.2"}


# SDXL, the UNet only (kohya's default): (batch, precision, checkpointing, fits, optimizer with
# bitsandbytes installed, optimizer without it).
SDXL_PER_CARD = {
    # Does not fit 8 GB even with every saving: training, with the VAE and both text encoders in
    # RAM, needs 8.0 GiB of the 7.2 usable. Said so, not hidden; every saving is still
    # recommended, 8-bit AdamW among them.
    "8GB": (CARD_8GB, (1, "fp16", True, False), "adamw8bit", "adamw"),
    # 12 GB: kohya's low-VRAM recipe: batch 1, gradient checkpointing, 8-bit AdamW.
    "12GB": (CARD_12GB, (1, "bf16", True, True), "adamw8bit", "adamw"),
    # 24 GB: batch 1 fits without checkpointing; 8-bit AdamW is not needed.
    "24GB": (CARD_24GB, (1, "bf16", False, True), "adamw", "adamw"),
    "80GB": (CARD_80GB, (4, "bf16", False, True), "adamw", "adamw"),
}


@pytest.mark.parametrize("card_class", list(SDXL_PER_CARD))
def test_sdxl_recommendations_per_card(card_class):
    gpu, expected, optimizer_with_bnb, optimizer_without = SDXL_PER_CARD[card_class]
    with_bnb = recommend(machine(gpu, packages=WITH_BITSANDBYTES), family="sdxl")
    without = recommend(machine(gpu), family="sdxl")
    assert settings(machine(gpu, packages=WITH_BITSANDBYTES), family="sdxl") == expected
    assert (with_bnb.optimizer, without.optimizer) == (optimizer_with_bnb, optimizer_without)
    for rec in (with_bnb, without):
        assert rec.family == "sdxl" and rec.train_text_encoder is False and rec.cache_latents == "memory"
        assert any("the UNet only, text-encoder outputs cached" in reason for reason in rec.reasons)
    defaults = with_bnb.answers_defaults()
    assert defaults["dataset.resolution"] == 1024 and defaults["dataset.max_bucket"] == 2048
    assert defaults["network.train_text_encoder"] is False
    assert (defaults["training.unet_lr"], defaults["training.text_encoder_lr"]) == (1e-4, 1e-5)
    assert defaults["training.optimizer"] == optimizer_with_bnb and defaults["training.batch_size"] == expected[0]
    assert "training.mixed_precision" not in defaults  # answers files keep "auto"


def test_eight_bit_adamw_needs_bitsandbytes_on_an_nvidia_gpu():
    old = {**WITH_BITSANDBYTES, "bitsandbytes": "0.41.0"}
    assert recommend(machine(CARD_12GB, packages=old), family="sdxl").optimizer == "adamw"
    rocm = TorchFacts(version="2.6.0+rocm6.2", build="rocm", hip_version="6.2", cuda_available=True)
    assert recommend(machine(CARD_12GB, packages=WITH_BITSANDBYTES, torch=rocm), family="sdxl").optimizer == "adamw"
    # It saves the optimizer's state: 6 of 16 bytes per trained parameter.
    setup = TrainingSetup(family="sdxl", train_text_encoder=False)
    assert vram_needed(setup) - vram_needed(replace(setup, optimizer="adamw8bit")) == pytest.approx(
        FAMILY_COSTS["sdxl"].lora_params_per_rank_unet * 8 * 6, abs=1
    )


@pytest.mark.parametrize(
    ("vram_gib", "resolution", "fp8", "offload"),
    [(None, 1024, False, False), (79.6, 1024, False, False), (24, 1024, True, False), (16, 1024, True, True), (12, 512, True, True)],
    ids=["cpu", "80GB", "24GB", "16GB", "12GB"],
)
def test_flux_defaults_per_card(vram_gib, resolution, fp8, offload):
    """FLUX.1 as kohya advises per card: fp8 weights below 30 GiB, blocks offloaded below 20, 512 px
    below 14; always batch size 1 with gradient checkpointing (offloading needs it)."""
    from engine.checks.defaults import FAMILY_KEYS, family_defaults, flux_card_defaults

    card = flux_card_defaults(None if vram_gib is None else int(vram_gib * GiB))
    assert (card["dataset.resolution"], card["training.fp8_base"], card["training.offload_blocks"]) == (resolution, fp8, offload)
    assert (card["training.batch_size"], card["training.gradient_checkpointing"]) == (1, True)
    for family in ("flux1-dev", "flux1-schnell"):
        flux = family_defaults(family)
        assert set(flux) == set(FAMILY_KEYS)
        assert (flux["network.dim"], flux["training.unet_lr"], flux["training.timestep_sampling"], flux["network.train_text_encoder"]) == (16, 1e-4, "shift", False)
    # Switching back: SD 1.x's own values for every key FLUX.1 set.
    assert {key: family_defaults("sd1")[key] for key in ("network.dim", "training.fp8_base", "training.offload_blocks", "dataset.resolution")} == {
        "network.dim": 8, "training.fp8_base": False, "training.offload_blocks": False, "dataset.resolution": None,
    }


def test_sd1_defaults_are_the_schemas_and_sdxl_trains_text_encoders_only_when_asked():
    from engine.checks.defaults import FAMILY_KEYS, family_defaults
    from engine.config import Answers

    schema = Answers.model_validate({"model": {"path": "m"}, "dataset": {"train_dir": "t"}, "output": {"name": "n"}})
    for family in ("sd1", "sd2"):
        defaults = family_defaults(family)
        assert set(defaults) == set(FAMILY_KEYS) == set(family_defaults("sdxl"))
        for key, value in defaults.items():
            section, name = key.split(".")
            assert getattr(getattr(schema, section), name) == value, key
    sd1 = recommend(machine(CARD_24GB))
    assert (sd1.family, sd1.train_text_encoder, sd1.answers_defaults()["dataset.resolution"]) == ("sd1", True, None)
    asked = recommend(machine(CARD_12GB), family="sdxl", train_text_encoder=True)
    assert asked.train_text_encoder is True
    assert any("kohya recommends the UNet only" in reason for reason in asked.reasons)


def test_recommended_settings_fit_the_card_they_are_for():
    for gpu in (CARD_8GB, CARD_12GB, CARD_24GB, CARD_80GB):
        rec = recommend(machine(gpu))
        setup = TrainingSetup(
            batch_size=rec.batch_size,
            gradient_checkpointing=rec.gradient_checkpointing,
            mixed_precision=rec.mixed_precision,
        )
        assert vram_needed(setup) <= gpu.vram_total * 0.9
        assert rec.cache_latents == "memory"
        assert len(rec.reasons) >= 3  # precision, batch, memory plan, latents: each explained


def test_no_driver_recommends_the_cpu_and_fails_nothing():
    facts = no_gpu_machine()
    rec = recommend(facts)
    assert (rec.device, rec.batch_size, rec.mixed_precision, rec.fits) == ("cpu", 1, "no", None)
    items = machine_items(facts, rec)
    assert item(items, "nvidia_driver").status == "warn"
    assert "not found" in item(items, "nvidia_driver").summary
    assert item(items, "cuda").status == "warn"
    assert item(items, "cuda").remedy
    assert not [i for i in items if i.id.startswith("gpu.")]
    assert worst(items) == "warn"


def test_busy_card_plans_with_the_free_vram():
    busy = card("NVIDIA GeForce RTX 4090", 24, (8, 9), free_gib=9)
    assert recommend(machine(busy)).batch_size == 2  # 4 when the card is idle
    assert recommend(machine(replace(busy, vram_free=6 * GiB))).batch_size == 1
    assert item(machine_items(machine(busy)), "gpu.0").status == "warn"


def test_training_gpu_follows_cuda_visible_devices():
    small, large = card("NVIDIA GeForce RTX 3060", 12, (8, 6), index=0), card("NVIDIA A100-SXM4-80GB", 80, (8, 0), index=1)
    assert training_gpu(machine(small, large)).index == 0
    assert training_gpu(machine(small, large, cuda_visible_devices="1")).index == 1
    assert training_gpu(machine(small, large, cuda_visible_devices="GPU-00000001")).index == 1
    assert recommend(machine(small, large, cuda_visible_devices="1")).batch_size == 4


# --- checks with remedies ----------------------------------------------------------------------


def test_cpu_torch_on_a_gpu_machine_fails_with_the_install_remedy():
    items = machine_items(machine(CARD_24GB, torch=CPU_TORCH))
    torch_item = item(items, "torch")
    assert torch_item.status == "fail"
    assert "CUDA build" in torch_item.remedy and "12.4" in torch_item.remedy
    assert recommend(machine(CARD_24GB, torch=CPU_TORCH)).device == "cpu"


def test_driver_older_than_the_torch_build_fails():
    old_driver = NvidiaDriverFacts("ok", version="470.82", cuda_version="11.4")
    torch = replace(CUDA_TORCH, cuda_available=False)
    items = machine_items(machine(CARD_24GB, torch=torch, driver=old_driver))
    assert item(items, "nvidia_driver").status == "fail"
    assert item(items, "cuda").status == "fail"
    assert "update the NVIDIA driver" in item(items, "cuda").remedy


def test_torch_without_kernels_for_the_gpu_fails():
    pascal = card("NVIDIA GeForce GTX 1080", 8, (6, 1))
    items = machine_items(machine(pascal))
    assert item(items, "cuda").status == "fail"
    assert "6.1" in item(items, "cuda").summary


def test_python_and_packages():
    facts = machine(CARD_24GB, python_version=(3, 9, 18), packages={**{n: "99.0" for n in REQUIRED_PACKAGES}, "peft": None, "diffusers": "0.20.0"})
    items = machine_items(facts)
    assert item(items, "python").status == "fail"
    assert item(items, "package.peft").status == "fail"
    assert item(items, "package.peft").remedy == "pip install 'peft>=0.17'"
    assert item(items, "package.diffusers").status == "fail"
    assert item(items, "package.bitsandbytes").status == "ok"  # optional


def test_required_packages_mirror_pyproject():
    import tomllib

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    minimums = dict(re.match(r"([A-Za-z0-9_-]+)>=([\d.]+)$", d).groups() for d in dependencies if ">=" in d and ";" not in d)
    for name, minimum in REQUIRED_PACKAGES.items():
        assert minimums[name] == minimum, name


def test_memory_warning_thresholds():
    small = machine(CARD_24GB, ram_total=16 * GiB, swap_total=0)
    rec = recommend(small, family="sdxl")
    assert rec.warnings and "swap" in rec.warnings[0]
    assert item(machine_items(small, rec), "memory").status == "warn"
    assert recommend(small, family="sd1").warnings == ()
    # Windows: the seed article's ~80 GB of RAM + paging file.
    windows = machine(CARD_24GB, platform="win32", ram_total=32 * GiB, swap_total=16 * GiB)
    memory = item(machine_items(windows, recommend(windows)), "memory")
    assert memory.status == "warn" and "paging file" in memory.remedy
    assert ram_needed_to_load("sd1", "win32")[0] == 80 * GB
    assert ram_needed_to_load("sdxl", "linux")[0] > ram_needed_to_load("sd1", "linux")[0]


def test_low_disk_fails():
    items = machine_items(machine(CARD_24GB, disk_free=int(0.5 * GiB)))
    assert item(items, "disk").status == "fail"
    assert item(machine_items(machine(CARD_24GB, disk_free=3 * GiB)), "disk").status == "warn"


# --- the estimate -----------------------------------------------------------------------------


def test_vram_grows_with_batch_and_resolution_and_shrinks_with_savings():
    base = TrainingSetup(family="sd1", mixed_precision="no")
    assert vram_needed(replace(base, batch_size=2)) > vram_needed(base)
    assert vram_needed(replace(base, resolution=768)) > vram_needed(base)
    assert vram_needed(replace(base, gradient_checkpointing=True)) < vram_needed(base)
    # Mixed precision: the frozen weights in the training precision too (the engine's rule).
    assert vram_needed(replace(base, mixed_precision="fp16")) < vram_needed(base)
    # kohya_ss#2474: SD 1.5 LoRA in about 4 GB with checkpointing and half-precision weights.
    lean = replace(base, gradient_checkpointing=True, mixed_precision="fp16")
    assert 3.5 * GiB < vram_needed(lean) < 4.5 * GiB


def test_estimate_against_published_speeds():
    # RTX 4090, SDXL LoRA at 1024, batch 1: ~1.08 it/s (kohya_ss#1288).
    sdxl = estimate(TrainingSetup(family="sdxl", mixed_precision="bf16"), ComputeDevice("cuda", "NVIDIA GeForce RTX 4090", compute_capability=(8, 9)))
    assert 0.5 < sdxl.seconds_per_step / (1 / 1.08) < 2
    # RTX 2080 Ti, SD 1.5 LoRA, 15k steps of 1 x 4 images: ~5 h (diffusers docs).
    sd1 = estimate(
        TrainingSetup(family="sd1", batch_size=1, gradient_accumulation=4),
        ComputeDevice("cuda", "NVIDIA GeForce RTX 2080 Ti", compute_capability=(7, 5)),
        steps=15_000,
    )
    assert 0.5 < sd1.total_seconds / (5 * 3600) < 2


def test_checkpointing_and_uncached_latents_cost_time():
    gpu = ComputeDevice("cuda", "NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
    base = estimate(TrainingSetup(), gpu).seconds_per_step
    assert estimate(TrainingSetup(gradient_checkpointing=True), gpu).seconds_per_step > base
    assert estimate(TrainingSetup(cache_latents=False), gpu).seconds_per_step > base
    assert estimate(TrainingSetup(mixed_precision="no"), gpu).seconds_per_step > 2 * base


def test_cpu_estimate_says_how_slow():
    two, sixteen = ComputeDevice("cpu", cpu_cores=2), ComputeDevice("cpu", cpu_cores=16)
    slow = estimate(TrainingSetup(mixed_precision="no"), two, steps=1000)
    assert slow.vram_needed is None
    assert slow.seconds_per_step > 5  # an SD 1.5 step at 512 px takes many seconds on 2 cores
    assert slow.total_seconds == pytest.approx(slow.seconds_per_step * 1000)
    assert estimate(TrainingSetup(mixed_precision="no"), sixteen).seconds_per_step < slow.seconds_per_step
    assert any("CPU" in note for note in slow.notes)


def test_unknown_gpu_is_estimated_from_its_architecture():
    row, exact = gpu_speed("NVIDIA GeForce RTX 4060", (8, 9))
    assert not exact and row.compute_capability == (8, 9)
    row, exact = gpu_speed("NVIDIA GeForce RTX 4090", (8, 9))
    assert exact and row.peak_tflops == 165.2
    est = estimate(TrainingSetup(), ComputeDevice("cuda", "Mystery GPU", compute_capability=(1, 0)))
    assert est.seconds_per_step is None and "no speed figure" in est.basis


def test_every_family_has_a_cost_row():
    from engine.families.registry import FAMILIES

    assert set(FAMILY_COSTS) == {"sd1", "sd2", "sdxl", "flux1-dev", "flux1-schnell"} == set(FAMILIES)


@pytest.mark.parametrize(
    ("fp8", "offload", "low", "high"),
    [(False, False, 25, 27), (True, False, 14, 16), (True, True, 4, 5)],
    ids=["bf16", "fp8", "fp8+offload"],
)
def test_flux_vram_at_1024_px_rank_16_counts_fp8_weights_and_offloaded_blocks(fp8, offload, low, high):
    """FLUX.1 dev at 1024 px, batch 1, rank 16, the transformer only, checkpointing, 8-bit AdamW:
    the frozen transformer at 2 bytes a weight, 1 with fp8, and only its non-block layers plus two
    blocks with offloading (T5 and CLIP parked after caching)."""
    setup = TrainingSetup(
        family="flux1-dev", resolution=1024, network_dim=16, train_text_encoder=False, mixed_precision="bf16",
        gradient_checkpointing=True, optimizer="adamw8bit", fp8_base=fp8, offload_blocks=offload,
    )
    cost = FAMILY_COSTS["flux1-dev"]
    resident = cost.unet_params - (cost.offloadable_params - 2 * cost.largest_block_params if offload else 0)
    assert frozen_part_bytes(setup)["unet"] == resident * (1 if fp8 else 2)
    memory = memory_phases(setup)
    assert memory.peak_phase == "training"
    assert low * GiB < memory.peak < high * GiB


# --- the real machine -------------------------------------------------------------------------


def test_this_machine_without_gpu_is_read_cleanly(tmp_path):
    driver, gpus = read_nvidia()
    facts = gather_facts(tmp_path / "not" / "yet")
    assert facts.disk_path == tmp_path and facts.disk_free > 0
    assert facts.python_version[:2] == sys.version_info[:2]
    assert facts.torch.version is not None
    if driver.status != "ok":  # this project's machine: no NVIDIA driver
        assert gpus == () and facts.gpus == ()
        report = run_checks(facts=facts)
        assert report.exit_code == 0
        assert report.recommendations.device in ("cpu", "mps")


def test_amd_gpu_through_rocm_needs_no_nvidia_driver():
    rocm = TorchFacts(version="2.6.0+rocm6.2", build="rocm", hip_version="6.2", cuda_available=True, arch_list=("gfx90a", "gfx942"))
    mi250 = GpuFacts(0, "AMD Instinct MI250X", 64 * GiB, None, (9, 0), bf16=True)
    facts = machine(mi250, torch=rocm, driver=NO_DRIVER)
    items = machine_items(facts)
    assert worst(items) == "ok", [i for i in items if i.status != "ok"]
    rec = recommend(facts)
    assert (rec.device, rec.mixed_precision, rec.batch_size) == ("rocm", "bf16", 4)
    # No AMD row in the speed table: no time rather than an NVIDIA card's.
    assert estimate(TrainingSetup(), ComputeDevice("rocm", mi250.name, compute_capability=(9, 0))).seconds_per_step is None


def test_a_card_too_small_for_the_model_is_warned_about():
    rec = recommend(machine(CARD_8GB), family="sdxl")
    assert not rec.fits
    assert any("run out of memory" in warning for warning in rec.warnings)


def test_recommendations_are_valid_answers_file_defaults():
    from engine.config import Answers, TrainingSection

    machines = (machine(CARD_8GB), machine(CARD_80GB), machine(CARD_12GB, packages=WITH_BITSANDBYTES), no_gpu_machine(), four_gpus())
    for facts in machines:
        for family in ("sd1", "sdxl"):
            rec = recommend(facts, family=family)
            defaults = rec.training_defaults()
            training = TrainingSection(**defaults)  # every key and value is one the answers file accepts
            assert (training.batch_size, training.processes) == (defaults["batch_size"], defaults["processes"])
            data: dict = {"model": {"path": "m"}, "dataset": {"train_dir": "t"}, "output": {"name": "n"}}
            for key, value in rec.answers_defaults().items():
                section, name = key.split(".")
                if value is not None:
                    data.setdefault(section, {})[name] = value
            Answers.model_validate(data)


# --- several GPUs -------------------------------------------------------------------------------


def alike_cards(gpu: GpuFacts, count: int) -> tuple[GpuFacts, ...]:
    return tuple(replace(gpu, index=i, uuid=f"GPU-{i:08d}-aaaa") for i in range(count))


def four_gpus() -> MachineFacts:
    return machine(*alike_cards(CARD_24GB, 4))


@pytest.mark.parametrize("count", [2, 4])
def test_several_alike_gpus_recommend_one_process_each(count):
    facts = machine(*alike_cards(CARD_24GB, count))
    rec = recommend(facts)
    assert (rec.processes, rec.process_gpus, rec.batch_size) == (count, tuple(range(count)), 4)
    assert rec.training_defaults()["processes"] == count
    assert rec.effective_batch == 4 * count
    reason = next(r for r in rec.reasons if r.startswith(f"processes {count}"))
    assert f"effective batch = batch size 4 x {count} processes x accumulation 1 = {4 * count}" in reason
    assert f"{count}x fewer steps" in reason
    assert recommend(facts, gradient_accumulation=2).effective_batch == 8 * count
    several = item(machine_items(facts, rec), "processes")
    assert several.status == "ok" and f"processes = {count}" in several.summary


def test_one_gpu_or_none_means_one_process_and_no_word_about_it():
    for facts in (machine(CARD_24GB), no_gpu_machine(), machine(*alike_cards(CARD_24GB, 2), torch=CPU_TORCH)):
        rec = recommend(facts)
        assert (rec.processes, rec.effective_batch) == (1, rec.batch_size)
        assert not any(r.startswith("processes") for r in rec.reasons)
        assert not [i for i in machine_items(facts, rec) if i.id == "processes"]


def test_cuda_visible_devices_limits_the_processes():
    facts = machine(*alike_cards(CARD_24GB, 4), cuda_visible_devices="2,3")
    rec = recommend(facts)
    assert (rec.processes, rec.process_gpus) == (2, (2, 3))
    assert recommend(machine(*alike_cards(CARD_24GB, 4), cuda_visible_devices="1")).processes == 1
    by_uuid = recommend(machine(*alike_cards(CARD_24GB, 4), cuda_visible_devices="GPU-00000003,GPU-00000000"))
    assert by_uuid.process_gpus == (3, 0)


def test_different_gpus_count_those_like_the_training_gpu_and_say_why():
    mixed = (card("NVIDIA GeForce RTX 4090", 24, (8, 9), index=0), CARD_12GB_AT_1, card("NVIDIA GeForce RTX 4090", 24, (8, 9), index=2))
    facts = machine(*mixed)
    rec = recommend(facts)
    assert (rec.processes, rec.process_gpus) == (2, (0, 2))
    assert any("not counted: GPU 1 (NVIDIA GeForce RTX 3060" in r and "lock step" in r for r in rec.reasons)
    several = item(machine_items(facts, rec), "processes")
    assert several.status == "warn"
    assert several.remedy == "set CUDA_VISIBLE_DEVICES=GPU-00000000-aaaa,GPU-00000002-aaaa so that the processes use these GPUs"
    # The batch fits the fullest of the GPUs that train together.
    busy = (mixed[0], replace(mixed[2], vram_free=9 * GiB))
    assert recommend(machine(*busy)).batch_size == 2
    # Nothing like the training GPU: one process.
    lonely = recommend(machine(CARD_12GB, replace(CARD_24GB, index=1)))
    assert lonely.processes == 1 and any(r.startswith("processes 1: no other GPU is like") for r in lonely.reasons)


def test_estimate_per_process_notes_the_effective_batch():
    gpu = ComputeDevice("cuda", "NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
    one, two = TrainingSetup(batch_size=2), TrainingSetup(batch_size=2, processes=2)
    assert vram_needed(one) == vram_needed(two)  # per GPU
    assert estimate(one, gpu).seconds_per_step == estimate(two, gpu).seconds_per_step
    assert any("each step trains 4 images" in note for note in estimate(two, gpu).notes)


# --- what the engine parks after caching ----------------------------------------------------------

CARD_10GB = card("NVIDIA GeForce RTX 3080", 10, (8, 6))


def answers_with(**sections):
    from engine.config import Answers

    data: dict = {"model": {"path": "m"}, "dataset": {"train_dir": "t"}, "output": {"name": "n"}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return Answers.model_validate(data)


@pytest.mark.parametrize("cache_latents", ["memory", "disk", "off"])
@pytest.mark.parametrize("train_text_encoder", [False, True])
@pytest.mark.parametrize("dataset", [{}, {"shuffle_tags": True}, {"caption_dropout": 0.1}])
def test_the_estimate_parks_what_the_engine_parks(cache_latents, train_text_encoder, dataset):
    from engine.checks.run_items import answers_setup
    from engine.parking import offloadable_parts

    answers = answers_with(training={"cache_latents": cache_latents}, network={"train_text_encoder": train_text_encoder}, dataset=dataset)
    setup = answers_setup(answers, "sdxl", recommend(machine(CARD_24GB), family="sdxl"))
    assert setup.parked_parts == offloadable_parts(answers)


def test_parked_parts_leave_the_training_phase():
    unet_only = TrainingSetup(family="sdxl", train_text_encoder=False, gradient_checkpointing=True)
    parts = frozen_part_bytes(unet_only)
    # SDXL's two text encoders in bf16, and the base model's VAE in fp32 (the engine keeps it so).
    assert parts["text_encoders"] == (123_060_480 + 694_659_840) * 2 and parts["vae"] == 83_653_863 * 4
    lean = memory_phases(unet_only)
    shuffled = memory_phases(replace(unet_only, captions_vary=True))  # the encoders run every step
    assert shuffled.training - lean.training == parts["text_encoders"]
    assert shuffled.caching == lean.caching  # the VAE alone either way
    uncached = memory_phases(replace(unet_only, cache_latents=False))
    assert uncached.caching is None and uncached.training - lean.training == parts["vae"]
    # The peak is the larger phase, not their sum.
    assert vram_needed(unet_only) == max(lean.caching, lean.training) < lean.caching + lean.training


def test_sdxl_setup_caches_with_the_vae_alone_so_training_is_the_peak():
    setup = TrainingSetup(family="sdxl", train_text_encoder=False, gradient_checkpointing=True, optimizer="adamw8bit")
    memory = memory_phases(setup)
    # The CUDA context, the fp32 VAE (0.31 GiB) and its tensors encoding one 1024 px image (2.5 GiB);
    # the UNet and the text encoders reach the GPU after it (engine/train.py Trainer.setup).
    assert memory.caching == pytest.approx(0.5 * GiB + 83_653_863 * 4 + 2.5 * GiB, abs=1)
    assert 7.9 * GiB < memory.training < 8.1 * GiB and vram_needed(setup) == memory.training
    safe = memory_phases(replace(setup, fp16_safe_vae=True))
    # Half the VAE's weights and half its tensors while it encodes.
    assert memory.caching - safe.caching == pytest.approx(83_653_863 * 2 + 1.25 * GiB, abs=1)
    assert safe.training == memory.training  # parked while training either way
    notes = estimate(setup, ComputeDevice("cuda", "NVIDIA GeForce RTX 3080", compute_capability=(8, 6))).notes
    assert any("the text encoders and the VAE wait in RAM: 1.8 GiB less VRAM while training" in note for note in notes)


def test_a_10gb_card_fits_sdxl_unet_only_training():
    facts = machine(CARD_10GB, packages=WITH_BITSANDBYTES)
    rec = recommend(facts, family="sdxl")
    assert rec.fits and (rec.batch_size, rec.gradient_checkpointing, rec.optimizer) == (1, True, "adamw8bit")
    assert any("the text encoders and the VAE wait in RAM" in reason for reason in rec.reasons)
    setup = TrainingSetup(family="sdxl", train_text_encoder=False, gradient_checkpointing=True, optimizer="adamw8bit")
    item_10gb = estimate_item(estimate(setup, ComputeDevice("cuda", CARD_10GB.name, compute_capability=(8, 6))), facts)
    assert item_10gb.status == "ok" and item_10gb.summary.startswith("~8.0 GiB VRAM of 10.0 GiB;")


# --- sample images during training ----------------------------------------------------------------

SDXL_LEAN = TrainingSetup(family="sdxl", train_text_encoder=False, gradient_checkpointing=True, optimizer="adamw8bit")


def test_sdxl_samples_peak_when_the_vae_decodes_beside_the_unet():
    with_samples = replace(SDXL_LEAN, samples=True)
    memory = memory_phases(with_samples)
    parts = frozen_part_bytes(with_samples)
    lora_state = FAMILY_COSTS["sdxl"].lora_params_per_rank_unet * 8 * (10 - 4)  # 8-bit AdamW without the gradients
    # The fp32 VAE back from RAM and decoding a 1024 px image (3.0 GiB) beside the bf16 UNet; the
    # text encoders are back in RAM by then (they encode the prompts first).
    assert memory.sampling == int(0.5 * GiB + parts["unet"] + lora_state + parts["vae"] + 3.0 * GiB)
    assert memory.peak_phase == "sampling" and vram_needed(with_samples) == memory.sampling
    assert memory.training == memory_phases(SDXL_LEAN).training and memory_phases(SDXL_LEAN).sampling is None
    # An fp16-safe VAE halves its weights and its decoding: training is the peak again.
    assert memory_phases(replace(with_samples, fp16_safe_vae=True)).peak_phase == "training"
    notes = estimate(with_samples, ComputeDevice("cuda", CARD_10GB.name, compute_capability=(8, 6))).notes
    assert any(note.startswith("VRAM peaks while sample images are made (8.7 GiB") for note in notes)


def test_samples_that_do_not_fit_where_training_does_are_named_with_their_remedy():
    facts = machine(card("NVIDIA GeForce RTX 3080", 9.5, (8, 6)))  # 8.6 GiB usable: training's 8.0 fits
    item_9gb = estimate_item(estimate(replace(SDXL_LEAN, samples=True), ComputeDevice("cuda", "NVIDIA GeForce RTX 3080")), facts)
    assert item_9gb.status == "warn" and "~8.7 GiB VRAM of 9.5 GiB (making samples; training ~8.0 GiB)" in item_9gb.summary
    assert "--w / --h" in item_9gb.remedy and "[model] vae" in item_9gb.remedy and "batch_size" not in item_9gb.remedy
    # Where training itself does not fit, the training's savings come first: here every one is used.
    item_8gb = estimate_item(estimate(replace(SDXL_LEAN, samples=True), ComputeDevice("cuda", CARD_8GB.name)), machine(CARD_8GB))
    assert item_8gb.status == "fail" and item_8gb.remedy == "lower [dataset] resolution, or train on a GPU with more memory"


def test_a_run_that_does_not_fit_is_told_the_savings_it_does_not_use_yet():
    facts = machine(CARD_8GB)
    greedy = TrainingSetup(family="sd1", batch_size=4, captions_vary=True)
    remedy = estimate_item(estimate(greedy, ComputeDevice("cuda", CARD_8GB.name)), facts).remedy
    assert remedy.split("; ") == [
        "lower [training] batch_size",
        "set [training] gradient_checkpointing = true",
        "train the UNet only ([network] train_text_encoder = false)",
        'set [training] optimizer = "adamw8bit" (bitsandbytes, NVIDIA)',
        "lower [dataset] resolution, or train on a GPU with more memory",
    ]
    unet_only = replace(greedy, train_text_encoder=False, cache_latents=False, optimizer="adamw8bit")
    remedy = estimate_item(estimate(unet_only, ComputeDevice("cuda", CARD_8GB.name)), facts).remedy
    assert 'cache the latents ([training] cache_latents = "memory")' in remedy
    assert "keep the captions fixed" in remedy and "train the UNet only" not in remedy and "adamw8bit" not in remedy


@pytest.mark.parametrize(("samples", "expected"), [({}, False), ({"prompts": ["usu bear"]}, False),
                                                   ({"prompts": ["usu bear"], "every_steps": 100}, True)])
def test_the_answers_estimate_counts_samples_only_when_some_are_made(samples, expected):
    from engine.checks.run_items import answers_setup

    answers = answers_with(samples=samples)
    assert answers_setup(answers, "sdxl", recommend(machine(CARD_24GB), family="sdxl")).samples is expected


def test_the_answers_estimate_takes_fp8_and_offloading_from_the_answers():
    from engine.checks.run_items import answers_setup

    recommendations = recommend(machine(CARD_24GB), family="flux1-dev")
    plain = answers_setup(answers_with(), "flux1-dev", recommendations)
    saving = answers_setup(answers_with(training={"fp8_base": True, "offload_blocks": True}), "flux1-dev", recommendations)
    assert (plain.fp8_base, plain.offload_blocks, saving.fp8_base, saving.offload_blocks) == (False, False, True, True)
    assert vram_needed(plain) - vram_needed(saving) > 20 * GiB  # of the 22 GiB bf16 transformer
