"""The bench's results as JSON and as a markdown table with the targets met or not."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# The issue's targets: (key in `targets`, what, comparison, limit).
TARGETS = [
    ("engine_over_bare", "engine step time / bare loop step time", "<=", 1.05),
    ("latent_cache_speedup", "rate with latents cached / not cached", ">=", 1.5),
    ("help_s", "`lora-wizard --help` start (s)", "<", 0.3),
]


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it (Linux), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict[str, Any]:
    import psutil
    import torch

    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    return facts


def load_average() -> float | None:
    """One-minute load average: above the core count, other processes competed for the CPU."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    values = results.get("targets", {})
    rows = []
    for key, what, comparison, limit in TARGETS:
        value = values.get(key)
        met = None if value is None else (value <= limit if comparison == "<=" else value >= limit if comparison == ">=" else value < limit)
        rows.append({"key": key, "what": what, "value": value, "target": f"{comparison} {limit}", "met": met})
    return rows


def _fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _met(met: bool | None) -> str:
    return "n/a" if met is None else "yes" if met else "**no**"


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cpu_cores_logical']} cores, {machine['ram_gb']} GB RAM, "
        f"torch {machine['torch']}, Python {machine['python']}"
        + (f", GPU {machine['gpu']}" if machine["gpu"] else ", no GPU")
        + f"; {settings['device']}, {settings['threads']} torch thread(s); load average "
        f"{_fmt(settings.get('load_before'), 1)} before, {_fmt(settings.get('load_after'), 1)} after; {machine['date']}.",
        "",
        "| Target | Measured | Target | Met |",
        "|---|---|---|---|",
    ]
    for row in target_rows(results):
        lines.append(f"| {row['what']} | {_fmt(row['value'], 3)} | {row['target']} | {_met(row['met'])} |")
    lines += ["", "| Measure | Value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in detail_rows(results)]
    gpu = results.get("gpu", {})
    if gpu.get("measured"):
        lines += ["", gpu_table(gpu)]
    else:
        lines += ["", f"GPU section (e): not measured: {gpu.get('reason', 'skipped')}."]
    return "\n".join(lines) + "\n"


def detail_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    training = results.get("training", {})
    variants = training.get("variants", {})
    rows: list[tuple[str, str]] = []
    model = results.get("model", {})
    rows.append(("Bench model", f"{model.get('description', '')}, UNet {_fmt(training.get('unet_parameters_m'), 1)}M parameters"))
    for name, figures in variants.items():
        rows.append((f"{name}: s/step (steps/s), spread", f"{figures['seconds_per_step']:.3f} ({figures['steps_per_second']:.2f}), {figures['spread']:.0%}"))
    for key, label in (
        ("engine_over_bare", "engine / bare (median of side-by-side rounds)"),
        ("latent_cache_speedup", "latents cached: speed-up over not cached"),
        ("text_cache_speedup", "text-encoder outputs cached: speed-up over encoding every step (frozen)"),
        ("frozen_over_trained_text_encoder", "frozen, cached text encoder: speed-up over training it"),
    ):
        if key in training:
            rows.append((label, f"{training[key]:.3f}"))
    if "latent_cache_ceiling" in training:
        rows.append(("VAE encode / engine step, time (caching's ceiling = 1 + this)",
                     f"{training['vae_encode_per_engine_step']:.3f} (ceiling {training['latent_cache_ceiling']:.3f})"))
    reference = results.get("sd15_cpu_reference")
    if reference:
        rows.append((f"real SD 1.5 shapes on this CPU at {reference['resolution']} px: VAE encode / LoRA step, time "
                     "(caching's ceiling for SD 1.5 here)",
                     f"{reference['encode_s']:.2f} s / {reference['step_s']:.2f} s = {reference['encode_per_step']:.3f} "
                     f"(ceiling {reference['cache_ceiling']:.3f})"))
    if "engine_overhead_ms" in training:
        rows.append(("engine overhead per step (engine - bare, median of rounds)", f"{training['engine_overhead_ms']:.1f} ms"))
    flops, sd15 = training.get("flops"), model.get("sd15_flops")
    if flops and sd15:
        rows.append(("GFLOP per image: LoRA step / VAE encode / text encoder (SD 1.5 at 512 px)",
                     f"{flops['lora_step_gflop']:.2f} / {flops['vae_encode_gflop']:.2f} / {flops['text_encoder_gflop']:.3f} "
                     f"({sd15['lora_step_gflop']:.0f} / {sd15['vae_encode_gflop']:.0f} / {sd15['text_encoder_gflop']:.1f})"))
        rows.append(("VAE encode / LoRA step, FLOPs (SD 1.5 at 512 px)",
                     f"{flops['vae_encode_per_lora_step']:.2f} ({sd15['vae_encode_per_lora_step']:.2f})"))
    first = results.get("first_step", {})
    if first:
        rows.append(("`lora-wizard train`: started / ready / first step (s)",
                     f"{_fmt(first.get('to_started_s'))} / {_fmt(first.get('to_ready_s'))} / {_fmt(first.get('to_first_step_s'))}"))
        rows.append(("training process peak RSS", _fmt(first.get("peak_rss_mb"), 0, " MB")))
        rows.append(("training process peak VRAM", f"{_fmt(first.get('peak_vram_mb'), 0, ' MB')} ({first.get('peak_vram_method')})"))
    startup = results.get("startup", {})
    if startup:
        rows.append((f"`lora-wizard --help` (best of {startup['runs']}; bare `python -c pass`)",
                     f"{startup['help_s']:.3f} s ({startup['python_s']:.3f} s)"))
    paint = results.get("first_paint", {})
    if paint.get("measured"):
        rows.append((f"wizard first paint, headless ({paint['first_screen']}, best of {paint['runs']})", f"{paint['first_paint_s']:.2f} s"))
    elif paint:
        rows.append(("wizard first paint", f"not measured: {paint.get('reason')}"))
    return rows


def gpu_table(gpu: dict[str, Any]) -> str:
    lines = [
        f"SD 1.5 UNet shape, random weights, {gpu['resolution']} px, LoRA dim {gpu['lora_dim']}, {gpu['precision']}, "
        f"on {gpu['device']} (peak {_fmt(gpu.get('peak_tflops'), 0)} TFLOP/s dense; MFU counts "
        f"{gpu['tflop_per_image']} TFLOP per image):",
        "",
        "| Batch | Checkpointing | Engine img/s | Bare img/s | Engine / bare time | MFU | Latent cache speed-up | Peak VRAM allocated (reserved) | Syncs/step engine (bare) | LoRA grads | First block |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in gpu["cases"]:
        options = "".join(f", {option}" for option in case.get("options", []))
        lines.append(
            f"| {case['batch']}{options} | {'on' if case['checkpointing'] else 'off'} | {case['engine']['images_per_second']:.1f} | "
            f"{case['bare']['images_per_second']:.1f} | {case['engine_over_bare']:.3f} | {_fmt(case.get('mfu'), 3)} | "
            f"{_fmt(case.get('latent_cache_speedup'), 2)} | "
            f"{case['peak_allocated_gb']:.2f} GB ({case['peak_reserved_gb']:.2f} GB) | "
            f"{_fmt(case.get('engine_syncs_per_step'), 1)} ({_fmt(case.get('bare_syncs_per_step'), 1)}) | "
            f"{case['lora_grads'][0]}/{case['lora_grads'][1]} | {_fmt(case.get('first_block_s'), 1, ' s')} |"
        )
    lines += ["", sdxl_table(gpu.get("sdxl")), "", flux_table(gpu.get("flux"))]
    return "\n".join(lines)


def flux_table(flux: dict[str, Any] | None) -> str:
    """The FLUX.1 cases (bench/gpu_flux.py measure_flux): one row per memory setting, then issue 17's goals."""
    if not flux or not flux.get("measured"):
        return f"FLUX.1 at 1024 px: not measured: {(flux or {}).get('reason') or 'not in this run'}."
    lines = [
        f"FLUX.1 dev shapes, random weights, {flux['resolution']} px, batch {flux['batch']}, LoRA rank {flux['lora_dim']}: "
        f"{flux['settings']}; {flux['optimizer_note']} (MFU counts {flux['tflop_per_image']} TFLOP per image):",
        "",
        "| Weights | Engine img/s | MFU | Peak VRAM allocated (reserved), steps | Setup (caching) | Peak for the goals | LoRA grads | First block |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, case in flux["cases"].items():
        if "engine" not in case:
            lines.append(f"| {name} | failed: {case['failed'][-200:].replace('|', '/').splitlines()[-1]} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {case['engine']['images_per_second']:.3f} | {_fmt(case.get('mfu'), 3)} | {_gib_pair(case, 'peak')} | "
            f"{_gib_pair(case, 'setup_peak')} | {_fmt(case.get('peak_gb'), 2, ' GB')} | "
            f"{case['lora_grads'][0]}/{case['lora_grads'][1]} | {_fmt(case.get('first_block_s'), 1, ' s')} |"
        )
    lines += [
        "",
        f"Goals (issue 17): fp8 within 16 GB: {_met(flux.get('fp8_within_goal'))}; offloading within 12 GB: "
        f"{_met(flux.get('offload_within_goal'))}; offloading's step time over fp8's: {_fmt(flux.get('offload_slowdown'), 2, 'x')} "
        f"(at most 1.3x: {_met(flux.get('offload_slowdown_within_goal'))}).",
    ]
    return "\n".join(lines)


def sdxl_table(sdxl: dict[str, Any] | None) -> str:
    """The SDXL case (bench/gpu.py measure_sdxl): the wizard's 8 GB settings at 1024 px, one row."""
    if not sdxl or not sdxl.get("measured"):
        return f"SDXL at 1024 px: not measured: {(sdxl or {}).get('reason', 'not in this run')}."
    case = sdxl["case"]
    lines = [
        f"SDXL UNet shape, random weights, {sdxl['resolution']} px, batch {sdxl['batch']}, LoRA dim {sdxl['lora_dim']}, "
        f"mixed precision {sdxl['precision']}: {sdxl['settings']}; {sdxl['optimizer_note']} (MFU counts {sdxl['tflop_per_image']} TFLOP "
        f"per image; the 8 GB goal is judged on {sdxl['vram_goal_basis']}):",
        "",
        "| Engine img/s | Bare img/s | Engine / bare time | MFU | Peak VRAM allocated (reserved), steps | Setup (caching) | "
        f"Process peak (NVML) | Within {sdxl['vram_goal_gib']:g} GB | Syncs/step engine (bare) | LoRA grads | First block |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {case['engine']['images_per_second']:.2f} | {case['bare']['images_per_second']:.2f} | {case['engine_over_bare']:.3f} | "
        f"{_fmt(sdxl.get('mfu'), 3)} | {_gib_pair(case, 'peak')} | {_gib_pair(case, 'setup_peak')} | "
        f"{_fmt(case.get('process_peak_gb'), 2, ' GB')} | {_met(sdxl.get('within_vram_goal'))} "
        f"({_fmt(sdxl.get('vram_for_goal_gib'), 2, ' GB')}) | "
        f"{_fmt(case.get('engine_syncs_per_step'), 1)} ({_fmt(case.get('bare_syncs_per_step'), 1)}) | "
        f"{case['lora_grads'][0]}/{case['lora_grads'][1]} | {_fmt(case.get('first_block_s'), 1, ' s')} |",
    ]
    return "\n".join(lines)


def _gib_pair(case: dict[str, Any], prefix: str) -> str:
    """'allocated GB (reserved GB)' of a case's CUDA peak, n/a without CUDA."""
    allocated, reserved = case.get(f"{prefix}_allocated_gb"), case.get(f"{prefix}_reserved_gb")
    if allocated is None or reserved is None:
        return "n/a"
    return f"{allocated:.2f} GB ({reserved:.2f} GB)"


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """latest.json and latest.md in `out_dir`."""
    from engine.files import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    results = {**results, "target_rows": target_rows(results), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    json_path, md_path = out_dir / "latest.json", out_dir / "latest.md"
    atomic_write_text(json_path, json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(md_path, markdown(results))
    return json_path, md_path
