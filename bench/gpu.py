"""Section (e): the real SD 1.5 UNet shape on a GPU, skipped cleanly without one.

The model is built from the configs the package ships (engine/families/configs/sd15: UNet, VAE,
CLIP text encoder) with random weights, and saved as a diffusers folder the engine loads as usual:
nothing is downloaded, and speed does not depend on the weights. Each (batch, gradient
checkpointing) case runs in its own process (bench/gpu_case.py) so that its peak memory is its own.

Model FLOP utilisation = images/s x 1.6 TFLOP (one SD 1.5 LoRA step at 512 px, forward + the
backward to the activations; ../shared/reference/performance-facts.md) / the device's dense bf16
peak. Recomputation under gradient checkpointing is not counted: it is the model's FLOPs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SD15_CONFIGS = BENCH_DIR.parent / "engine" / "families" / "configs" / "sd15"
TFLOP_PER_IMAGE = 1.6  # SD 1.5 LoRA step at 512 px, without checkpointing's recomputation

# Dense (not sparse) bf16 tensor TFLOP/s from the vendors' datasheets; fp16 where a card has no bf16.
# First match wins, so the more specific names come first.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM (HBM3)
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16
    ("T4", 65.0),  # fp16
]
# (batch, gradient checkpointing, also time the engine without its latent cache, engine options beyond the defaults)
CASES = [
    (1, False, True, ()),
    (1, True, False, ()),
    (16, False, True, ()),
    (16, True, False, ()),
    (16, False, False, ("channels_last",)),  # `[training] channels_last`: off by default until measured to help
    (16, False, False, ("compile",)),  # `[training] compile`: its first block holds the compilation
]


def peak_tflops(device_name: str) -> float | None:
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops
    return None


def build_sd15_folder(folder: Path, *, images: int = 16) -> tuple[Path, Path]:
    """A random-weight SD 1.5 diffusers folder (fp16 files) and a training root of 512 px images."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.model import INSTANCE, save_pipeline
    from engine.tiny import write_synthetic_dataset, write_tiny_tokenizer

    def config(name: str) -> dict[str, Any]:
        return json.loads((SD15_CONFIGS / f"{name}.json").read_text())

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config("unet")).half()
    vae = AutoencoderKL.from_config(config("vae")).half()
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder"))).half()
    save_pipeline(folder, unet, vae, text_encoder, write_tiny_tokenizer(folder / "tokenizer"))
    train_dir, _ = write_synthetic_dataset(folder / "data", instance=INSTANCE, repeats=10, images=images,
                                           reg_images=0, size=512)
    return folder, train_dir


def run_case(model: Path, train: Path, *, batch: int, checkpointing: bool, uncached: bool, steps: int, rounds: int,
             options: tuple[str, ...] = (), resolution: int = 512, timeout: float = 900.0) -> dict[str, Any]:
    command = [sys.executable, str(BENCH_DIR / "gpu_case.py"), "--model", str(model), "--train", str(train),
               "--resolution", str(resolution), "--batch", str(batch), "--steps", str(steps), "--rounds", str(rounds)]
    command += ["--checkpointing"] if checkpointing else []
    command += ["--uncached"] if uncached else []
    command += [f"--{option.replace('_', '-')}" for option in options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_gpu(work_dir: Path, *, quick: bool) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no usable GPU"
        return {"measured": False, "reason": f"no CUDA device on this machine (torch {torch.__version__}, {build})"}
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name)
    model, train = build_sd15_folder(work_dir / "sd15")
    cases = []
    for batch, checkpointing, uncached, options in CASES[:1] if quick else CASES:
        case = run_case(model, train, batch=batch, checkpointing=checkpointing, uncached=uncached, options=options,
                        steps=3 if quick else 10, rounds=1 if quick else 3)
        if peak:
            case["mfu"] = case["engine"]["images_per_second"] * TFLOP_PER_IMAGE / peak
        cases.append(case)
    return {
        "measured": True,
        "device": name,
        "peak_tflops": peak,
        "tflop_per_image": TFLOP_PER_IMAGE,
        "resolution": 512,
        "lora_dim": 8,
        "precision": cases[0]["precision"],
        "cases": cases,
        "sdxl": "not measured: the bench builds only the SD 1.5 shape so far",
    }
