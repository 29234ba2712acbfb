"""Section (e): the real SD 1.5 and SDXL UNet shapes on a GPU, skipped cleanly without one.

The models are built from the configs the package ships (engine/families/configs/sd15: UNet, VAE,
CLIP text encoder; engine/families/configs/sdxl: UNet, VAE, both text encoders) with random weights,
and saved as diffusers folders the engine loads as usual: nothing is downloaded, and speed does not
depend on the weights. Each case runs in its own process (bench/gpu_case.py) so that its peak
memory is its own: SD 1.5 at 512 px per (batch, gradient checkpointing, option), and SDXL at
1024 px once, with kohya's SDXL memory savings (the wizard's recommendation for an 8 GB card).
FLUX.1 [dev] at 1024 px, rank 16, with and without fp8 and offloading: bench/gpu_flux.py.

Model FLOP utilisation = images/s x TFLOP per image (one LoRA step, forward + the backward to the
activations: 1.6 for SD 1.5 at 512 px, 13.5 for SDXL at 1024 px; ../shared/reference/
performance-facts.md, engine/checks/costs.py FAMILY_COSTS) / the device's dense bf16 peak.
Recomputation under gradient checkpointing is not counted: it is the model's FLOPs.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SD15_CONFIGS = BENCH_DIR.parent / "engine" / "families" / "configs" / "sd15"
SDXL_CONFIGS = BENCH_DIR.parent / "engine" / "families" / "configs" / "sdxl"
SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
TFLOP_PER_IMAGE = 1.6  # SD 1.5 LoRA step at 512 px, without checkpointing's recomputation
# SDXL as the wizard sets it up for an 8 GB card (engine/checks/recommend.py: _fit_to_vram), kohya's
# SDXL memory savings: batch 1 at 1024 px, the UNet only with the text encoders' outputs cached,
# latents cached, gradient checkpointing, 8-bit AdamW where bitsandbytes works.
SDXL_RESOLUTION = 1024
SDXL_BATCH = 1
SDXL_IMAGES = 4
SDXL_VRAM_GOAL_GIB = 8.0  # the goal; cards sold as 8 GB report 8 GiB (engine/checks/recommend.py)

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


@contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Modules created inside get their weights in `dtype` from the start (torch's default dtype)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def shipped_sdxl_configs() -> dict[str, dict[str, Any]]:
    """SDXL's UNet, VAE and text-encoder configs as the package ships them, by part name."""
    return {part: json.loads((SDXL_CONFIGS / f"{part}.json").read_text()) for part in SDXL_PARTS}


def build_sdxl_folder(folder: Path, *, configs: dict[str, dict[str, Any]] | None = None, images: int = SDXL_IMAGES,
                      size: int = SDXL_RESOLUTION) -> tuple[Path, Path]:
    """A random-weight SDXL diffusers folder (fp16 files; both tokenizers, the tiny offline ones) and
    a training root of `size` px images. `configs` (part name -> config) default to the shipped SDXL
    ones; the smoke test gives tiny ones. Every part is created in fp16 directly: the full UNet then
    takes 5 GB of host memory, not 10 GB in fp32 and a half copy beside it."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from bench.model import INSTANCE
    from engine.families.templates import load_template
    from engine.tiny import write_synthetic_dataset
    from engine.tiny_sdxl import write_tiny_sdxl_tokenizers

    configs = configs or shipped_sdxl_configs()
    first_tokenizer, second_tokenizer = write_tiny_sdxl_tokenizers(folder)
    torch.manual_seed(0)
    with default_dtype(torch.float16):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(configs["text_encoder_2"]))
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(first_tokenizer), tokenizer_2=CLIPTokenizer.from_pretrained(second_tokenizer),
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(load_template("sdxl", "scheduler")), add_watermarker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    train_dir, _ = write_synthetic_dataset(folder / "data", instance=INSTANCE, repeats=10, images=images,
                                           reg_images=0, size=size)
    return folder, train_dir


def sdxl_optimizer() -> tuple[str, str]:
    """(optimizer, why): 8-bit AdamW, the wizard's choice for SDXL on 8 GB, where bitsandbytes
    imports on a CUDA machine; AdamW otherwise, and the report says so."""
    import torch

    if not torch.cuda.is_available():
        return "adamw", "AdamW: 8-bit AdamW (bitsandbytes) needs a CUDA GPU"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # not installed, or its CUDA set-up failed
        return "adamw", f"AdamW: bitsandbytes does not import here ({type(exc).__name__}), so not the wizard's 8-bit AdamW"
    return "adamw8bit", "8-bit AdamW (bitsandbytes), the wizard's choice for 8 GB"


def vram_goal(case: dict[str, Any]) -> dict[str, Any]:
    """Whether the case fits the 8 GB goal: the process's peak on the device as the driver reports it
    (the CUDA context included), or without NVML, torch's peak reserved memory (setup and steps)
    plus the CUDA context the estimator assumes. Nothing to judge without CUDA."""
    from engine.checks.costs import CUDA_CONTEXT_GIB

    goal: dict[str, Any] = {"vram_goal_gib": SDXL_VRAM_GOAL_GIB, "vram_for_goal_gib": None, "within_vram_goal": None,
                            "vram_goal_basis": "nothing (no CUDA device)"}
    if "peak_reserved_gb" not in case:
        return goal
    if case.get("process_peak_gb"):
        needed, basis = case["process_peak_gb"], f"the driver's figure: {case['process_peak_method']}"
    else:
        reserved = max(case["peak_reserved_gb"], case.get("setup_peak_reserved_gb", 0.0))
        needed = reserved + CUDA_CONTEXT_GIB
        basis = f"torch's peak reserved (setup, steps) + {CUDA_CONTEXT_GIB} GiB CUDA context (assumed, engine/checks/costs.py)"
    return {**goal, "vram_for_goal_gib": needed, "within_vram_goal": needed <= SDXL_VRAM_GOAL_GIB, "vram_goal_basis": basis}


def measure_sdxl(folder: Path, *, peak: float | None, steps: int, rounds: int, configs: dict[str, dict[str, Any]] | None = None,
                 resolution: int = SDXL_RESOLUTION, images: int = SDXL_IMAGES) -> dict[str, Any]:
    """The SDXL case with the wizard's 8 GB settings: images/s, MFU, peak memory and the 8 GB verdict.
    A case that fails is reported as not measured, with its error, so that the SD 1.5 figures stand."""
    from engine.checks.costs import FAMILY_COSTS

    optimizer, optimizer_note = sdxl_optimizer()
    model, train = build_sdxl_folder(folder, configs=configs, images=images, size=resolution)
    gc.collect()  # the built models are gone: the case's process gets the host memory
    try:
        case = run_case(model, train, batch=SDXL_BATCH, checkpointing=True, uncached=False, steps=steps, rounds=rounds,
                        resolution=resolution, optimizer=optimizer)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"measured": False, "reason": f"the SDXL case failed: {str(exc)[-1500:]}"}
    tflop = FAMILY_COSTS["sdxl"].tflop_per_image
    images_per_second = case["engine"]["images_per_second"]
    return {
        "measured": True,
        "resolution": resolution,
        "batch": SDXL_BATCH,
        "lora_dim": 8,
        "settings": "UNet only (text-encoder outputs cached), latents cached, gradient checkpointing",
        "optimizer": optimizer,
        "optimizer_note": optimizer_note,
        "precision": case["precision"],
        "tflop_per_image": tflop,
        "images_per_second": images_per_second,
        "mfu": images_per_second * tflop / peak if peak else None,
        **vram_goal(case),
        "case": case,
    }


def run_case(model: Path, train: Path, *, batch: int, checkpointing: bool, uncached: bool, steps: int, rounds: int,
             options: tuple[str, ...] = (), resolution: int = 512, optimizer: str = "adamw",
             timeout: float = 900.0) -> dict[str, Any]:
    command = [sys.executable, str(BENCH_DIR / "gpu_case.py"), "--model", str(model), "--train", str(train),
               "--resolution", str(resolution), "--batch", str(batch), "--steps", str(steps), "--rounds", str(rounds),
               "--optimizer", optimizer]
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
    from bench.gpu_flux import measure_flux

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
        # --quick: one short block, enough to show the SDXL path runs on this GPU.
        "sdxl": measure_sdxl(work_dir / "sdxl", peak=peak, steps=2 if quick else 10, rounds=1 if quick else 3),
        # FLUX.1 at 1024 px, rank 16, with and without fp8 and offloading (bench/gpu_flux.py).
        "flux": measure_flux(work_dir / "flux", peak=peak, steps=2 if quick else 5, rounds=1 if quick else 2),
    }
