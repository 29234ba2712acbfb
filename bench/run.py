"""The performance bench: one command, every figure from one run on one machine.

    python bench/run.py [--quick] [--out bench/results] [--threads N]

(a) the engine's steps/s against the bare PyTorch loop on the same model (the floor)
(b) the engine with and without latent caching, and with and without text-encoder-output caching
(c) `lora-wizard train`: time to first step, peak RSS (and peak VRAM on a GPU)
(d) `lora-wizard --help` start time and the wizard's first paint
(e) on a GPU: the SD 1.5 UNet shape at 512 px, batch 1 and 16, and SDXL at 1024 px, batch 1 with the
    memory savings (skipped without one); on a CPU,
    the real SD 1.5 shapes' VAE-encode-to-step time ratio instead, to read (b)'s caching figure against

The training variants run interleaved in one process (A, B, C ..., then C, B, A ...) and each ratio
is the median over rounds of two variants timed side by side, so a load that drifts (other jobs on
a shared machine) cancels out. It writes OUT/latest.json and OUT/latest.md and prints the table.
docs/performance.md explains each figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model import DEFAULT_CACHE, FULL, QUICK, BenchModel, BenchModelSpec, answers_data, bench_model  # noqa: E402
from bench.report import load_average, machine_facts, markdown, write_results  # noqa: E402


@dataclass(frozen=True)
class Effort:
    """How many repetitions: the full run (a few minutes on 2 CPU cores) or --quick (seconds)."""

    rounds: int  # interleaved rounds of every training variant
    steps: int  # steps per variant per round
    warmup_steps: int
    help_runs: int
    paint_runs: int


FULL_EFFORT = Effort(rounds=16, steps=3, warmup_steps=2, help_runs=10, paint_runs=3)
QUICK_EFFORT = Effort(rounds=1, steps=1, warmup_steps=1, help_runs=1, paint_runs=1)

# Training variants: name -> answers overrides on top of bench.model.answers_data's defaults
# (latents cached in memory, frozen text encoder whose outputs are cached per caption).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "engine": {},
    "engine, latents not cached": {"training": {"cache_latents": "off"}},
    # Shuffled tags make every caption a new one: the frozen encoder runs each step (no_grad).
    "engine, text encoder run every step": {"dataset": {"shuffle_tags": True}},
    "engine, text encoder trained": {"network": {"train_text_encoder": True}},
}
VAE_ONLY = "VAE encode alone (the images of one step)"


def quiet_libraries() -> None:
    """No progress bars or advice from diffusers / transformers in the bench's output."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def measure_training(model: BenchModel, output_dir: Path, effort: Effort) -> dict[str, Any]:
    """(a) and (b): every variant interleaved with the bare loop, ratios of side-by-side rounds."""
    import statistics

    from bench.flops import model_profile
    from bench.loops import BareLoop, EngineVariant, interleave, paired_ratio, summary

    engines = {name: EngineVariant(answers_data(model, output_dir / str(i), **overrides))
               for i, (name, overrides) in enumerate(VARIANTS.items())}
    bare = BareLoop(engines["engine"])
    runners = {"bare loop (floor)": bare.run_steps, **{name: engine.run_steps for name, engine in engines.items()},
               VAE_ONLY: bare.encode_steps}
    times = interleave(runners, rounds=effort.rounds, steps=effort.steps, warmup_steps=effort.warmup_steps)
    engine, floor = times["engine"], times["bare loop (floor)"]
    encode_share = paired_ratio(times[VAE_ONLY], engine)
    return {
        "variants": {name: summary(seconds, bare.batch) for name, seconds in times.items()},
        "unet_parameters_m": sum(p.numel() for n, p in bare.model.denoiser.named_parameters() if "lora_" not in n) / 1e6,
        "seconds_per_step": times,
        "engine_over_bare": paired_ratio(engine, floor),
        "engine_over_bare_of_medians": statistics.median(engine) / statistics.median(floor),
        "engine_overhead_ms": statistics.median(e - f for e, f in zip(engine, floor, strict=True)) * 1000,
        "latent_cache_speedup": paired_ratio(times["engine, latents not cached"], engine),
        # Caching saves one VAE encode per image and step, so the speed-up is at most 1 + that share.
        "vae_encode_per_engine_step": encode_share,
        "latent_cache_ceiling": 1.0 + encode_share,
        "text_cache_speedup": paired_ratio(times["engine, text encoder run every step"], engine),
        "frozen_over_trained_text_encoder": paired_ratio(times["engine, text encoder trained"], engine),
        "flops": model_profile(bare.model, resolution=model.spec.resolution, lora_dim=model.spec.lora_dim),
        "batch": bare.batch,
        "device": str(bare.device),
    }


def measure_first_step(model: BenchModel, work_dir: Path, threads: int | None) -> dict[str, Any]:
    """(c): a real `lora-wizard train` of 2 steps, the loss reported every step."""
    import tomli_w

    from bench.startup import time_to_first_step

    data = answers_data(model, work_dir / "first-step-output", training={"max_steps": 2, "log_every_steps": 1})
    answers_file = work_dir / "first-step.toml"
    answers_file.write_text(tomli_w.dumps(data), encoding="utf-8")
    return time_to_first_step(answers_file, threads=threads)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny model and one repetition: checks the bench runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder for latest.json / latest.md")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the built bench models")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for the CPU sections (default: 1 without a GPU, see docs/performance.md; 0 = torch's default)")
    parser.add_argument("--skip-gpu", action="store_true", help="leave out section (e) even on a GPU")
    return parser.parse_args(argv)


def cpu_threads(requested: int | None) -> int | None:
    """Threads for the CPU measurements: one by default on a CPU-only machine, where two OpenMP
    threads stall each other whenever another process holds a core."""
    import torch

    if requested is None:
        requested = 0 if torch.cuda.is_available() else 1
    if requested:
        torch.set_num_threads(requested)
    return requested or None


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Every section's figures, in one dict (the JSON written)."""
    import torch

    from bench.flops import sd15_profile
    from bench.gpu import measure_gpu
    from bench.reference import sd15_encode_per_step
    from bench.startup import first_paint, help_start

    threads = cpu_threads(args.threads)
    effort = QUICK_EFFORT if args.quick else FULL_EFFORT
    spec = QUICK if args.quick else FULL
    results: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick}
    load_before = load_average()
    model = bench_model(spec, args.cache)
    results["model"] = {"spec": asdict(spec), "description": describe(spec), "sd15_flops": sd15_profile()}
    results["startup"] = help_start(effort.help_runs)
    results["first_paint"] = first_paint(effort.paint_runs)
    with tempfile.TemporaryDirectory(prefix="lora-wizard-bench-") as tmp:
        work = Path(tmp)
        results["first_step"] = measure_first_step(model, work, threads)
        results["training"] = measure_training(model, work / "runs", effort)
        results["gpu"] = {"measured": False, "reason": "--skip-gpu"} if args.skip_gpu else measure_gpu(work, quick=args.quick)
    if not args.quick and results["training"]["device"] == "cpu":
        results["sd15_cpu_reference"] = sd15_encode_per_step()
    results["settings"] = {"device": results["training"]["device"], "threads": torch.get_num_threads(),
                           "load_before": load_before, "load_after": load_average(), "effort": asdict(effort)}
    results["targets"] = {
        "engine_over_bare": results["training"]["engine_over_bare"],
        "latent_cache_speedup": results["training"]["latent_cache_speedup"],
        "help_s": results["startup"]["help_s"],
    }
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    results = collect(args)
    json_path, md_path = write_results(results, args.out)
    print(markdown(results))
    print(f"written: {json_path} and {md_path}")
    return 0


def describe(spec: BenchModelSpec) -> str:
    return (f"SD 1.5 layout, UNet channels {'/'.join(map(str, spec.unet_channels))}, VAE "
            f"{'/'.join(map(str, spec.vae_channels))}, CLIP text encoder {spec.text_hidden} x {spec.text_layers} layers, "
            f"{spec.resolution} px, LoRA dim {spec.lora_dim}, batch 1")


if __name__ == "__main__":
    sys.exit(main())
