"""VRAM and time estimates for a LoRA run, before anything is loaded.

Every number it uses is data with its source in a comment (engine/checks/costs.py): a published
figure, arithmetic on one, or a measurement of this project (bench/step_time.py). The model is
deliberately small:

    VRAM  = the largest of the run's phases (engine/train.py Trainer.setup, then the steps):
      caching  = CUDA context + the VAE + the VAE encoding one image (setup caches the latents with
                 the VAE alone on the GPU; the UNet and text encoders arrive after it)
      training = CUDA context + the UNet + the frozen parts not parked in host memory after caching
                 (engine.parking.parked_parts) + LoRA parameters x 16 bytes (fp32 weight, gradient,
                 two AdamW moments; 10 with 8-bit AdamW)
                 + activations per image x batch size x (resolution / family resolution)^2
      sampling = training's weights and optimizer state (no gradients, no activations) + a parked
                 VAE + the larger of parked text encoders and the VAE decoding one image
    time  = TFLOP per image x batch / (GPU peak TFLOP/s x utilization(batch)) + fixed overhead,
            times gradient accumulation; on a CPU, the measured TFLOP/s per core instead.

Published speeds of the same job differ by about 2x between sources (see GPU_SPEEDS), so an
estimate is good to about a factor of two: enough to tell minutes from hours, and to catch a
run that cannot fit before hours are spent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from engine.checks.costs import (
    BYTES_PER_TRAINED_PARAM,
    CHECKPOINTING_SLOWDOWN,
    CPU_TFLOPS_PER_CORE,
    CUDA_CONTEXT_GIB,
    FAMILY_COSTS,
    FP32_SLOWDOWN,
    GB,
    GPU_SPEEDS,
    GRADIENT_BYTES,
    STEP_OVERHEAD_S,
    UTILIZATION_BATCH_1,
    UTILIZATION_LARGE_BATCH,
    FamilyCost,
    GiB,
    GpuSpeed,
)
from engine.config import effective_batch
from engine.parking import parked_parts


@dataclass(frozen=True)
class ComputeDevice:
    """Where training would run, as far as the estimate cares."""

    kind: Literal["cuda", "rocm", "mps", "cpu"]
    name: str = ""
    vram_total: int | None = None  # bytes
    compute_capability: tuple[int, int] | None = None
    cpu_cores: int = 1


@dataclass(frozen=True)
class TrainingSetup:
    family: str = "sd1"
    resolution: int | None = None  # None: the family's resolution
    batch_size: int = 1
    gradient_accumulation: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    network_dim: int = 8
    train_text_encoder: bool = True
    optimizer: str = "adamw"  # a key of BYTES_PER_TRAINED_PARAM
    processes: int = 1  # data-parallel processes, one GPU each; the figures are per process
    captions_vary: bool = False  # tags shuffled or captions dropped: the text encoders' outputs are not cached
    fp16_safe_vae: bool = False  # `[model] vae` given: the VAE runs in the training precision, else fp32
    samples: bool = False  # sample images during training (`[samples]`), at the training resolution
    fp8_base: bool = False  # `[training] fp8_base`: the frozen denoiser stored in fp8, 1 byte a weight
    offload_blocks: bool = False  # `[training] offload_blocks`: the denoiser's blocks wait in host memory

    @property
    def half_precision_frozen_weights(self) -> bool:
        """The frozen UNet and text encoders in the training precision (the engine's rule, as
        kohya's: only the LoRA's weights are fp32); fp32 without mixed precision."""
        return self.mixed_precision != "no"

    @property
    def parked_parts(self) -> frozenset[str]:
        """The frozen parts the engine moves to host memory once setup has cached their outputs
        ("vae", "text_encoders"): the engine's own rule."""
        return parked_parts(
            latents_cached=self.cache_latents, text_encoders_trained=self.train_text_encoder, captions_vary=self.captions_vary
        )

    @property
    def cost(self) -> FamilyCost:
        return FAMILY_COSTS[self.family]

    @property
    def effective_batch(self) -> int:
        return effective_batch(self.batch_size, self.processes, self.gradient_accumulation)

    @property
    def pixels_scale(self) -> float:
        """Work per image relative to the family's resolution (linear in pixels; attention grows
        faster, so larger sizes are underestimated)."""
        size = self.resolution or self.cost.resolution
        return (size / self.cost.resolution) ** 2


@dataclass(frozen=True)
class MemoryPhases:
    """VRAM (bytes, the CUDA context included) of a run's phases; it needs the largest."""

    caching: int | None  # setup caching the latents, the VAE alone on the GPU; None when latents are not cached
    training: int  # the steps, with the parked parts in host memory
    sampling: int | None = None  # sample images between steps; None without samples

    @property
    def peak(self) -> int:
        return max(self.training, self.caching or 0, self.sampling or 0)

    @property
    def peak_phase(self) -> Literal["caching", "training", "sampling"]:
        phases = {"training": self.training, "caching": self.caching or 0, "sampling": self.sampling or 0}
        return max(phases, key=phases.__getitem__)  # training first: it wins a tie


@dataclass(frozen=True)
class Estimate:
    setup: TrainingSetup
    vram_needed: int | None  # bytes, the larger phase; None when training does not run on a GPU
    seconds_per_step: float | None  # None when no speed figure is known for the device
    steps: int | None
    basis: str  # which speed figure the time comes from
    notes: tuple[str, ...] = field(default_factory=tuple)
    memory: MemoryPhases | None = None  # None when training does not run on a GPU

    @property
    def total_seconds(self) -> float | None:
        if self.seconds_per_step is None or self.steps is None:
            return None
        return self.seconds_per_step * self.steps


def frozen_part_bytes(setup: TrainingSetup) -> dict[str, float]:
    """Bytes of each frozen part on the GPU ("unet", "text_encoders", "vae"): in the training
    precision, except the base model's VAE, which the engine keeps in fp32 (SDXL's overflows in
    fp16); a VAE from `[model] vae` is taken to be fp16-safe and runs in the training precision."""
    cost = setup.cost
    return {
        "unet": resident_denoiser_params(setup) * (1 if setup.fp8_base else _weight_bytes(setup)),
        "text_encoders": cost.text_encoder_params * _weight_bytes(setup),
        "vae": cost.vae_params * _vae_bytes(setup),
    }


def resident_denoiser_params(setup: TrainingSetup) -> int:
    """The frozen denoiser's parameters on the GPU: all of them, or with `offload_blocks` those
    outside the blocks plus two blocks (the one running and the next, copied ahead)."""
    cost = setup.cost
    if not (setup.offload_blocks and cost.offloadable_params):
        return cost.unet_params
    return cost.unet_params - cost.offloadable_params + 2 * cost.largest_block_params


def _weight_bytes(setup: TrainingSetup) -> int:
    return 2 if setup.half_precision_frozen_weights else 4


def _vae_bytes(setup: TrainingSetup) -> int:
    return 2 if setup.fp16_safe_vae and setup.half_precision_frozen_weights else 4


def vae_encode_memory(setup: TrainingSetup) -> float:
    """Bytes the VAE's tensors take while it encodes one image (the engine encodes them one at a
    time) at the run's resolution, in the VAE's precision."""
    return setup.cost.vae_encode_gib * GiB * setup.pixels_scale * _vae_bytes(setup) / 4


def sampling_work_memory(setup: TrainingSetup) -> float:
    """Bytes of tensors at the peak of making one sample image at the run's resolution: the UNet's
    guided denoising step, or the VAE decoding the result (much the larger), in their precisions."""
    cost = setup.cost
    unet = cost.unet_sampling_gib * _weight_bytes(setup) / 4
    decode = cost.vae_decode_gib * _vae_bytes(setup) / 4
    return max(unet, decode) * GiB * setup.pixels_scale


def memory_phases(setup: TrainingSetup) -> MemoryPhases:
    """VRAM while setup caches the latents, while training steps and while sample images are made
    (engine/train.py Trainer.setup: the parts reach the GPU one at a time; the VAE encodes every
    image alone, the text encoders then encode every caption, and the parts in `setup.parked_parts`
    go to host memory before the UNet and the LoRA arrive). The caption pass holds the text encoders
    (and the VAE when it stays), less than the UNet that training holds, so the caching phase is the
    VAE's."""
    cost = setup.cost
    context = CUDA_CONTEXT_GIB * GiB
    parts = frozen_part_bytes(setup)
    per_rank = cost.lora_params_per_rank_unet + (cost.lora_params_per_rank_text_encoders if setup.train_text_encoder else 0)
    lora_params = per_rank * setup.network_dim
    activations_gib = cost.activations_checkpointed_gib if setup.gradient_checkpointing else cost.activations_gib
    activations = activations_gib * GiB * setup.batch_size * setup.pixels_scale
    resident = sum(size for name, size in parts.items() if name not in setup.parked_parts)
    # Without a latent cache the VAE encodes each image at each step, before the UNet's forward pass.
    step_work = activations if setup.cache_latents else max(activations, vae_encode_memory(setup))
    training = context + resident + lora_params * BYTES_PER_TRAINED_PARAM[setup.optimizer] + step_work
    caching = None
    if setup.cache_latents:
        caching = int(context + parts["vae"] + vae_encode_memory(setup))
    sampling = None
    if setup.samples:
        # Between steps (engine/train.py Trainer.sample): the step's activations and the gradients
        # are gone, the weights and the optimizer's state stay. A parked VAE comes back for the
        # whole of it; parked text encoders only while the prompts are encoded, before the images.
        parked = setup.parked_parts
        held = context + resident + lora_params * (BYTES_PER_TRAINED_PARAM[setup.optimizer] - GRADIENT_BYTES)
        held += parts["vae"] if "vae" in parked else 0
        encoders = parts["text_encoders"] if "text_encoders" in parked else 0
        sampling = int(held + max(encoders, sampling_work_memory(setup)))
    return MemoryPhases(caching=caching, training=int(training), sampling=sampling)


def vram_needed(setup: TrainingSetup) -> int:
    """Bytes a run needs on each GPU: the larger of its phases."""
    return memory_phases(setup).peak


def gpu_speed(name: str, compute_capability: tuple[int, int] | None) -> tuple[GpuSpeed | None, bool]:
    """The table row for a GPU, and whether it is an exact match. An unknown GPU is taken as the
    slowest known one of its architecture (same compute capability, else same major version)."""
    for row in GPU_SPEEDS:
        if re.search(row.pattern, name, flags=re.IGNORECASE):
            return row, True
    if compute_capability is None:
        return None, False
    for same in (lambda r: r.compute_capability == compute_capability, lambda r: r.compute_capability[0] == compute_capability[0]):
        rows = [r for r in GPU_SPEEDS if same(r)]
        if rows:
            return min(rows, key=lambda r: r.peak_tflops), False
    return None, False


def utilization(batch_size: int) -> float:
    return UTILIZATION_LARGE_BATCH - (UTILIZATION_LARGE_BATCH - UTILIZATION_BATCH_1) / math.sqrt(batch_size)


def tflop_per_batch(setup: TrainingSetup) -> float:
    cost = setup.cost
    per_image = cost.tflop_per_image + (0.0 if setup.cache_latents else cost.vae_encode_tflop)
    return per_image * setup.pixels_scale * setup.batch_size


def step_seconds(setup: TrainingSetup, device: ComputeDevice) -> tuple[float | None, str]:
    """Seconds per optimizer step, and the basis of the figure in words."""
    work = tflop_per_batch(setup)
    if device.kind == "cpu":
        tflops = CPU_TFLOPS_PER_CORE * max(device.cpu_cores, 1)
        seconds = work / tflops
        basis = f"CPU, {device.cpu_cores} cores x {CPU_TFLOPS_PER_CORE} TFLOP/s (measured per core, fp32)"
    elif device.kind in ("cuda", "rocm"):
        # ROCm reports AMD architectures as "compute capabilities" too; they mean nothing here.
        row, exact = gpu_speed(device.name, device.compute_capability if device.kind == "cuda" else None)
        if row is None:
            return None, f"no speed figure for {device.name or 'this GPU'}"
        share = utilization(setup.batch_size)
        seconds = work / (row.peak_tflops * share) + STEP_OVERHEAD_S
        if setup.mixed_precision == "no":
            seconds *= FP32_SLOWDOWN
        basis = f"{row.label}: {row.peak_tflops:g} TFLOP/s peak x {share:.0%} utilization"
        if not exact:
            basis += f" (not in the table: taken as the slowest known GPU of its architecture, {row.label})"
    else:
        return None, "no speed figure for Apple GPUs (MPS)"
    if setup.gradient_checkpointing:
        seconds *= CHECKPOINTING_SLOWDOWN
    return seconds * setup.gradient_accumulation, basis


def estimate(setup: TrainingSetup, device: ComputeDevice, steps: int | None = None) -> Estimate:
    """VRAM and time for `steps` optimizer steps of `setup` on `device`."""
    seconds, basis = step_seconds(setup, device)
    on_gpu = device.kind in ("cuda", "rocm", "mps")
    notes = ["good to about a factor of two: published speeds of the same job differ that much"]
    if not setup.cache_latents:
        notes.append("latents are not cached: the VAE encodes every image every step")
    if device.kind == "cpu":
        notes.append("training on the CPU: expect hours where a GPU takes minutes")
    if setup.processes > 1:
        notes.append(
            f"{setup.processes} processes: VRAM and time are per process and step; each step trains "
            f"{setup.effective_batch} images (batch size x processes x accumulation), so a run has "
            f"{setup.processes}x fewer steps (the gradient exchange between GPUs is not counted)"
        )
    memory = memory_phases(setup) if on_gpu else None
    parked = parking_note(setup)
    if memory is not None and parked:
        notes.append(parked)
    if memory is not None and memory.peak_phase == "sampling":
        notes.append(
            f"VRAM peaks while sample images are made ({memory.sampling / GiB:.1f} GiB: the VAE decodes one "
            f"beside the UNet and the optimizer's state); training needs {memory.training / GiB:.1f} GiB"
        )
    return Estimate(
        setup=setup,
        vram_needed=memory.peak if memory else None,
        seconds_per_step=seconds,
        steps=steps,
        basis=basis,
        notes=tuple(notes),
        memory=memory,
    )


PART_NAMES = {"vae": "the VAE", "text_encoders": "the text encoders"}


def parking_note(setup: TrainingSetup) -> str | None:
    """Which frozen parts wait in RAM while training, and how much VRAM that frees; None when none do."""
    parked = sorted(setup.parked_parts)
    if not parked:
        return None
    freed = sum(size for name, size in frozen_part_bytes(setup).items() if name in parked)
    names = " and ".join(PART_NAMES[name] for name in parked)
    return f"after caching, {names} wait in RAM: {freed / GiB:.1f} GiB less VRAM while training"


def ram_needed_to_load(family: str, platform: str) -> tuple[int, str]:
    """RAM + swap (bytes) that loading the base model needs, and where the figure comes from."""
    cost = FAMILY_COSTS[family]
    # A single-file checkpoint converted to diffusers briefly holds the file's tensors and the
    # built model (2 x fp32 weights), plus the torch / CUDA runtime (assumed 4 GiB).
    arithmetic = int(cost.load_bytes_per_param * cost.frozen_params + 4 * GiB)
    if platform == "win32":
        # The seed article: kohya on Windows fails with "paging file too small" below about 80 GB
        # of RAM + paging file; Windows commits memory for every process without overcommit.
        article = 80 * GB
        if article > arithmetic:
            return article, "the seed article: RAM + paging file about 80 GB on Windows"
    if cost.load_bytes_per_param != 8:
        return arithmetic, f"2 x the bf16 weights of {cost.label} (the file's tensors and the model) + 4 GiB for torch"
    return arithmetic, f"2 x the fp32 weights of {cost.label} (loading converts a copy) + 4 GiB for torch"


def format_duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    hours, minutes = divmod(round(minutes), 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{hours / 24:.1f} days"


def describe_time(run_estimate: Estimate) -> str:
    """`"~0.31 s/step, 1,500 steps ~ 8 min"`, or why there is no time."""
    if run_estimate.seconds_per_step is None:
        return run_estimate.basis
    text = f"~{format_duration(run_estimate.seconds_per_step)}/step"
    total = run_estimate.total_seconds
    if total is not None:
        return text + f", {run_estimate.steps:,} steps ~ {format_duration(total)}"
    return text + f", 1,000 steps ~ {format_duration(run_estimate.seconds_per_step * 1000)}"
