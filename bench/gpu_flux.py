"""Section (e), FLUX.1: the real FLUX.1 [dev] shapes on a GPU, with and without fp8 and offloading.

The model is built from the released configs with random weights (speed and memory do not depend on
the weights): diffusers' FluxTransformer2DModel with FLUX.1 [dev]'s config (its defaults with the
guidance embedder), T5-XXL's encoder, CLIP-L (engine/families/configs/sd15/text_encoder.json) and the
16-channel autoencoder, written as kohya's four single files (engine/tiny_flux.py write_flux_files:
BFL's layout) in bf16, with the repo's small offline tokenizers beside them. Nothing is downloaded.

Each setting runs in its own process (bench/gpu_case.py) so that its peak memory is its own: 1024 px,
batch 1, LoRA rank 16, the transformer only (text-encoder outputs and latents cached), gradient
checkpointing, 8-bit AdamW where bitsandbytes works; bf16 weights, fp8 weights (`fp8_base`), and
fp8 with the blocks offloaded (`offload_blocks`). Issue 17's goals: at most 16 GB peak with fp8, at
most 12 GB with offloading, at no more than 1.3x the step time without offloading.
"""

from __future__ import annotations

import gc
import json
import subprocess
from pathlib import Path
from typing import Any

from bench.gpu import BENCH_DIR, SD15_CONFIGS, default_dtype, sdxl_optimizer

FLUX_RESOLUTION = 1024
FLUX_DIM = 16
FLUX_IMAGES = 4
# (name, fp8_base, offload_blocks)
FLUX_SETTINGS = (("bf16", False, False), ("fp8", True, False), ("fp8 + offloading", True, True))
FP8_GOAL_GB = 16.0
OFFLOAD_GOAL_GB = 12.0
OFFLOAD_SLOWDOWN_GOAL = 1.3
# T5-XXL's encoder as FLUX.1 uses it (google/t5-v1_1-xxl) and FLUX.1's autoencoder (ae.safetensors).
T5_XXL = {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "d_kv": 64, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False}
FLUX_AE = {"latent_channels": 16, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "use_quant_conv": False, "use_post_quant_conv": False, "scaling_factor": 0.3611, "shift_factor": 0.1159}


def released_flux_configs() -> dict[str, dict[str, Any]]:
    """FLUX.1 [dev]'s part configs: transformer (FluxTransformer2DModel's defaults are FLUX.1's shape),
    ae, clip (CLIP-L, as SD 1.5's text encoder) and t5."""
    return {
        "transformer": {"guidance_embeds": True},
        "ae": FLUX_AE,
        "clip": json.loads((SD15_CONFIGS / "text_encoder.json").read_text()),
        "t5": T5_XXL,
    }


def build_flux_files(folder: Path, *, configs: dict[str, dict[str, Any]] | None = None, images: int = FLUX_IMAGES,
                     size: int = FLUX_RESOLUTION) -> tuple[Any, Path]:
    """Random-weight FLUX.1 as kohya's four files (bf16, created in bf16 directly: the transformer
    takes 24 GB of host memory, not 48 in fp32) and a training root of `size` px images. `configs`
    default to the released ones; the smoke test gives tiny ones."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from bench.model import INSTANCE
    from engine.tiny import write_synthetic_dataset, write_tiny_tokenizer
    from engine.tiny_flux import TinyFlux, write_flux_files, write_tiny_t5_tokenizer

    configs = configs or released_flux_configs()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with default_dtype(torch.bfloat16):
        models = TinyFlux(
            transformer=FluxTransformer2DModel(**configs["transformer"]),
            vae=AutoencoderKL(**configs["ae"]),
            clip=CLIPTextModel(CLIPTextConfig.from_dict(configs["clip"])),
            t5=T5EncoderModel(T5Config(**configs["t5"])),
            tokenizer_dir=write_tiny_tokenizer(folder / "tokenizer"),
            tokenizer_2_dir=write_tiny_t5_tokenizer(folder / "tokenizer_2"),
            variant="dev" if models_guided(configs) else "schnell",
        )
    files = write_flux_files(models, folder)
    del models
    train_dir, _ = write_synthetic_dataset(folder / "data", instance=INSTANCE, repeats=10, images=images, reg_images=0, size=size)
    return files, train_dir


def models_guided(configs: dict[str, dict[str, Any]]) -> bool:
    return bool(configs["transformer"].get("guidance_embeds"))


def run_flux_case(files: Any, train: Path, *, fp8: bool, offload: bool, steps: int, rounds: int, resolution: int,
                  optimizer: str, timeout: float = 1800.0) -> dict[str, Any]:
    import sys

    command = [sys.executable, str(BENCH_DIR / "gpu_case.py"), "--model", str(files.transformer), "--ae", str(files.vae),
               "--clip-l", str(files.clip), "--t5xxl", str(files.t5), "--train", str(train), "--resolution", str(resolution),
               "--batch", "1", "--dim", str(FLUX_DIM), "--checkpointing", "--steps", str(steps), "--rounds", str(rounds),
               "--optimizer", optimizer]
    command += ["--fp8"] if fp8 else []
    command += ["--offload"] if offload else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_gb(case: dict[str, Any]) -> float | None:
    """The case's peak on the device: the driver's figure (CUDA context included), else torch's peak
    reserved (setup, steps) plus the CUDA context the estimator assumes; None without CUDA."""
    from engine.checks.costs import CUDA_CONTEXT_GIB

    if case.get("process_peak_gb"):
        return case["process_peak_gb"]
    if "peak_reserved_gb" not in case:
        return None
    return max(case["peak_reserved_gb"], case.get("setup_peak_reserved_gb", 0.0)) + CUDA_CONTEXT_GIB


def flux_goals(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's goals, judged where the cases ran on CUDA (None: not judged)."""
    fp8, offloaded = cases.get("fp8", {}), cases.get("fp8 + offloading", {})
    fp8_peak, offload_peak = peak_gb(fp8), peak_gb(offloaded)
    slowdown = None
    if fp8.get("engine") and offloaded.get("engine"):
        slowdown = fp8["engine"]["images_per_second"] / offloaded["engine"]["images_per_second"]
    return {
        "fp8_within_goal": None if fp8_peak is None else fp8_peak <= FP8_GOAL_GB,
        "offload_within_goal": None if offload_peak is None else offload_peak <= OFFLOAD_GOAL_GB,
        "offload_slowdown": slowdown,
        "offload_slowdown_within_goal": None if slowdown is None or offload_peak is None else slowdown <= OFFLOAD_SLOWDOWN_GOAL,
    }


def measure_flux(folder: Path, *, peak: float | None, steps: int, rounds: int, configs: dict[str, dict[str, Any]] | None = None,
                 resolution: int = FLUX_RESOLUTION, images: int = FLUX_IMAGES) -> dict[str, Any]:
    """The FLUX.1 cases: images/s, MFU and peak memory per setting, and issue 17's memory goals. A
    setting that fails is reported with its error, so that the others stand."""
    from engine.checks.costs import FAMILY_COSTS

    optimizer, optimizer_note = sdxl_optimizer()
    try:
        files, train = build_flux_files(folder, configs=configs, images=images, size=resolution)
    except (RuntimeError, OSError) as exc:  # out of host memory or disk for the 34 GB of files
        return {"measured": False, "reason": f"building the FLUX.1 files failed: {str(exc)[-1500:]}"}
    gc.collect()  # the built models are gone: the cases' processes get the host memory
    tflop = FAMILY_COSTS["flux1-dev"].tflop_per_image
    cases: dict[str, dict[str, Any]] = {}
    for name, fp8, offload in FLUX_SETTINGS:
        try:
            case = run_flux_case(files, train, fp8=fp8, offload=offload, steps=steps, rounds=rounds, resolution=resolution,
                                 optimizer=optimizer)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            cases[name] = {"failed": str(exc)[-1500:]}
            continue
        per_second = case["engine"]["images_per_second"]
        cases[name] = {**case, "peak_gb": peak_gb(case), "mfu": per_second * tflop / peak if peak else None}
    return {
        "measured": any("engine" in case for case in cases.values()),
        "reason": "every FLUX.1 setting failed" if not any("engine" in case for case in cases.values()) else None,
        "resolution": resolution,
        "batch": 1,
        "lora_dim": FLUX_DIM,
        "settings": "the transformer only (text-encoder outputs cached), latents cached, gradient checkpointing",
        "optimizer": optimizer,
        "optimizer_note": optimizer_note,
        "tflop_per_image": tflop,
        "cases": cases,
        **flux_goals(cases),
    }
