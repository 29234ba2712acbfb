"""One engine-against-floor case in a process of its own, printed as one JSON line.

bench/gpu.py runs it once per (batch, gradient checkpointing) on the SD 1.5-shaped model, and once
on the SDXL-shaped model with kohya's SDXL memory savings, each in a fresh process so that each
peak-memory figure is that configuration's alone: the engine is measured first, before the bare
loop's copy of the model exists. On CUDA it reports the engine's peak memory during setup (the
latent and text-encoder caching) and during its first steps, as torch's allocator counts them, and
the process's own peak as the driver reports it (NVML: the CUDA context included). It runs on the
CPU too (the smoke tests do, on small models), where the CUDA-only figures are left out.

    python bench/gpu_case.py --model DIR --train DIR --resolution 512 --batch 16 [--checkpointing] [--uncached]
                             [--channels-last] [--compile] [--optimizer adamw8bit]
    python bench/gpu_case.py --model flux1-dev.safetensors --ae ae.safetensors --clip-l clip_l.safetensors
                             --t5xxl t5xxl_fp16.safetensors --train DIR --resolution 1024 --dim 16 --checkpointing [--fp8] [--offload]

A FLUX.1 case (kohya's four files) times the engine alone: the bare loop is SD's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def case_answers(args: argparse.Namespace, output_dir: Path, cache_latents: str = "memory") -> dict[str, Any]:
    answers = {
        "model": {"path": str(args.model)},
        "dataset": {"train_dir": str(args.train), "resolution": args.resolution},
        "network": {"dim": args.dim, "alpha": args.dim, "train_text_encoder": False},
        "training": {"max_steps": 100_000, "batch_size": args.batch, "seed": 0, "mixed_precision": "auto",
                     "gradient_checkpointing": args.checkpointing, "cache_latents": cache_latents,
                     "channels_last": args.channels_last, "compile": args.compile, "optimizer": args.optimizer},
        "checkpoints": {"every_epoch": False},
        "output": {"dir": str(output_dir), "name": "bench-case", "overwrite": True},
    }
    if args.ae:  # FLUX.1 in kohya's four files, with its memory settings
        answers["model"].update({"ae": str(args.ae), "clip_l": str(args.clip_l), "t5xxl": str(args.t5xxl)})
        answers["training"].update({"fp8_base": args.fp8, "offload_blocks": args.offload})
    return answers


def case_options(args: argparse.Namespace) -> list[str]:
    """The engine settings this case turns on beyond the defaults (the bare loop has none of them)."""
    options = (("channels_last", args.channels_last), ("compile", args.compile), ("fp8_base", args.fp8), ("offload_blocks", args.offload))
    return [name for name, on in options if on]


def run_case(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    import torch

    from bench.loops import (
        BareLoop,
        EngineVariant,
        host_syncs_per_step,
        interleave,
        lora_gradient_coverage,
        paired_ratio,
        summary,
    )
    from bench.startup import VramPoller

    cuda = torch.cuda.is_available()
    with VramPoller(os.getpid()) as driver:
        # Setup (model loading, latent and text-encoder caching) has a peak of its own.
        engine = EngineVariant(case_answers(args, output_dir))
        result: dict[str, Any] = {"family": engine.trainer.model.family.name, "batch": args.batch,
                                  "resolution": args.resolution, "checkpointing": args.checkpointing,
                                  "device": str(engine.trainer.device), "precision": engine.trainer.precision,
                                  "optimizer": args.optimizer, "options": case_options(args)}
        if cuda:
            result["setup_peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
            result["setup_peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
            torch.cuda.reset_peak_memory_stats()
        # Warm-up (with --compile: the compilation), and the engine's peak memory before the bare loop exists.
        result["first_block_s"] = engine.run_steps(args.steps)
    if cuda:
        result["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        process_peak, method = driver.peak
        result["process_peak_gb"] = process_peak / 2**30 if process_peak is not None else None
        result["process_peak_method"] = method
        result["engine_syncs_per_step"] = host_syncs_per_step(engine.run_steps, args.steps)
    result["lora_grads"] = lora_gradient_coverage(engine)
    runners = {"engine": engine.run_steps}
    if not args.ae:  # the bare loop conditions SD's UNets only
        bare = BareLoop(engine)
        if cuda:
            result["bare_syncs_per_step"] = host_syncs_per_step(bare.run_steps, args.steps)
        runners["bare"] = bare.run_steps
    if args.uncached:
        uncached = EngineVariant(case_answers(args, output_dir, cache_latents="off"))
        runners["uncached"] = uncached.run_steps
    times = interleave(runners, rounds=args.rounds, steps=args.steps, warmup_steps=1)
    result["engine"] = summary(times["engine"], args.batch)
    if "bare" in times:
        result["bare"] = summary(times["bare"], args.batch)
        result["engine_over_bare"] = paired_ratio(times["engine"], times["bare"])
    if args.uncached:
        result["uncached"] = summary(times["uncached"], args.batch)
        result["latent_cache_speedup"] = paired_ratio(times["uncached"], times["engine"])
    return result


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="diffusers folder, or a FLUX.1 transformer file")
    parser.add_argument("--ae", type=Path, help="FLUX.1: ae.safetensors (with --clip-l and --t5xxl)")
    parser.add_argument("--clip-l", type=Path, help="FLUX.1: clip_l.safetensors")
    parser.add_argument("--t5xxl", type=Path, help="FLUX.1: t5xxl_fp16.safetensors")
    parser.add_argument("--fp8", action="store_true", help="FLUX.1: the engine's `[training] fp8_base = true`")
    parser.add_argument("--offload", action="store_true", help="FLUX.1: the engine's `[training] offload_blocks = true`")
    parser.add_argument("--train", type=Path, required=True, help="training root (kohya folders)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=8, help="LoRA rank")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--uncached", action="store_true", help="also time the engine without its latent cache")
    parser.add_argument("--channels-last", action="store_true", help="the engine's `[training] channels_last = true`")
    parser.add_argument("--compile", action="store_true", help="the engine's `[training] compile = true` (compiled in the warm-up)")
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw",
                        help="the engine's `[training] optimizer` (adamw8bit: bitsandbytes, CUDA only); the bare loop uses the same")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="engine / bare rounds")
    args = parser.parse_args()

    from bench.run import cpu_threads, quiet_libraries

    quiet_libraries()
    cpu_threads(None)  # one thread on a CPU-only machine, as bench/run.py
    with tempfile.TemporaryDirectory() as output_dir:
        print(json.dumps(run_case(args, Path(output_dir))), flush=True)


if __name__ == "__main__":
    main()
