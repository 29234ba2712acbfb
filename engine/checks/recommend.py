"""Settings that fit the machine: which GPUs train, the batch size, precision, gradient
checkpointing and optimizer, each with the reason for it. Pure functions of a `MachineFacts`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from engine.checks.costs import GiB
from engine.checks.defaults import family_defaults, trains_text_encoder_by_default
from engine.checks.environment import OPTIMIZER_PACKAGES, GpuFacts, MachineFacts, gib, version_tuple
from engine.checks.estimate import ComputeDevice, TrainingSetup, parking_note, ram_needed_to_load, vram_needed
from engine.config import effective_batch

# The seed article: batch size 1 when the card has less than 10 GB. Cards sold as 8 GB report
# 8 GiB and 10 GB cards report 10 GiB, hence the line between them.
SMALL_VRAM = int(9.5 * GiB)
# Batch sizes tried, largest first. 4 at most: a DreamBooth set is ~20 images, and larger batches
# mean fewer optimizer steps per epoch than the usual learning rates assume.
BATCH_SIZES = (4, 2, 1)
# Share of the card a plan may fill: the rest is for fragmentation and the desktop.
VRAM_HEADROOM = 0.9


@dataclass(frozen=True)
class Recommendations:
    """Settings that fit the machine; the wizard's parameter screen starts from them."""

    device: Literal["cuda", "rocm", "mps", "cpu"]
    device_name: str
    batch_size: int
    mixed_precision: Literal["no", "fp16", "bf16"]
    gradient_checkpointing: bool
    cache_latents: Literal["memory"]
    fits: bool | None  # whether the estimate fits in VRAM; None off the GPU
    ram_swap_needed: int  # bytes of RAM + swap to load the model
    ram_swap_source: str
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    family: str = "sd1"  # the model family the settings are for
    processes: int = 1  # data-parallel processes: one per GPU like the training GPU
    process_gpus: tuple[int, ...] = ()  # the GPUs (NVML indices) the processes would use
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    train_text_encoder: bool = True  # what the fit assumed (SDXL: the UNet only)
    gradient_accumulation: int = 1  # what the effective batch assumed

    @property
    def effective_batch(self) -> int:
        return effective_batch(self.batch_size, self.processes, self.gradient_accumulation)

    @property
    def half_precision_frozen_weights(self) -> bool:
        """Frozen weights in the training precision: whenever there is mixed precision (the engine's rule)."""
        return self.mixed_precision != "no"

    def training_defaults(self) -> dict[str, object]:
        """The keys of the answers file's [training] section these settings fill in."""
        return {
            "batch_size": self.batch_size,
            "processes": self.processes,
            "mixed_precision": self.mixed_precision,
            "gradient_checkpointing": self.gradient_checkpointing,
            "optimizer": self.optimizer,
            "cache_latents": self.cache_latents,
        }

    def answers_defaults(self) -> dict[str, object]:
        """Every answers key these settings and the model family decide, as `section.key`
        (None: the schema's default): what the wizard starts a new LoRA from. Precision is not
        among them: an answers file keeps `auto`, which the engine resolves on the machine that
        trains (`mixed_precision` says what that is here)."""
        defaults: dict[str, object] = family_defaults(self.family)
        defaults["network.train_text_encoder"] = self.train_text_encoder
        training = {key: value for key, value in self.training_defaults().items() if key != "mixed_precision"}
        defaults.update({f"training.{key}": value for key, value in training.items()})
        return defaults


# ---------------------------------------------------------------------------------------------
# Which GPU trains, and with what


def visible_gpus(facts: MachineFacts) -> tuple[GpuFacts, ...]:
    """The GPUs CUDA would use, in the order CUDA_VISIBLE_DEVICES names them (NVML ignores that
    variable and lists every GPU; torch lists only the visible ones, so its list is kept)."""
    if facts.cuda_visible_devices is None or facts.driver.status != "ok":
        return facts.gpus
    chosen: list[GpuFacts] = []
    for name in facts.cuda_visible_devices.split(","):
        name = name.strip()
        gpu = next((g for g in facts.gpus if name and (name == str(g.index) or (g.uuid and g.uuid.startswith(name)))), None)
        if gpu is None:
            break  # CUDA stops at the first entry it cannot match
        if gpu not in chosen:
            chosen.append(gpu)
    return tuple(chosen)


def training_gpu(facts: MachineFacts) -> GpuFacts | None:
    """The GPU a run uses: the first one CUDA_VISIBLE_DEVICES names, else the first one."""
    if not facts.gpus:
        return None
    visible = visible_gpus(facts)
    return visible[0] if visible else facts.gpus[0]


def alike(gpu: GpuFacts, other: GpuFacts) -> bool:
    """The same model with the same memory: data-parallel processes run in lock step, each
    with the same batch, so a slower or smaller GPU would hold the others back."""
    return gpu.name == other.name and abs(gpu.vram_total - other.vram_total) < GiB // 2


def data_parallel_gpus(facts: MachineFacts) -> tuple[GpuFacts, ...]:
    """The visible GPUs like the training GPU: one process each. Empty when CUDA is not usable."""
    gpu = training_gpu(facts)
    if gpu is None or not facts.torch.cuda_available:
        return ()
    return tuple(other for other in visible_gpus(facts) if alike(gpu, other)) or (gpu,)


def training_device(facts: MachineFacts) -> ComputeDevice:
    """Where torch would train on this machine (the GPU only when torch can use it)."""
    gpu = training_gpu(facts)
    if facts.torch.cuda_available and gpu is not None:
        kind = "rocm" if facts.torch.build == "rocm" else "cuda"
        return ComputeDevice(kind, gpu.name, gpu.vram_total, gpu.compute_capability, facts.cpu_cores)
    if facts.torch.mps_available:
        return ComputeDevice("mps", "Apple GPU", None, None, facts.cpu_cores)
    return ComputeDevice("cpu", f"CPU ({facts.cpu_cores} cores)", None, None, facts.cpu_cores)


def usable_vram(gpu: GpuFacts) -> int:
    """What a plan may fill: most of the card, and no more than is free now."""
    usable = int(gpu.vram_total * VRAM_HEADROOM)
    return min(usable, gpu.vram_free) if gpu.vram_free is not None else usable


def recommend(
    facts: MachineFacts,
    *,
    family: str = "sd1",
    resolution: int | None = None,
    network_dim: int = 8,
    train_text_encoder: bool | None = None,
    gradient_accumulation: int = 1,
    captions_vary: bool = False,
    fp16_safe_vae: bool = False,
) -> Recommendations:
    """Settings that fit this machine for a model family, with the reason for each.
    `train_text_encoder` None: the family's default (SDXL trains the UNet only). `captions_vary`
    (tags shuffled or captions dropped) and `fp16_safe_vae` (`[model] vae` given) change what the
    engine keeps on the GPU, as an answers file says."""
    if train_text_encoder is None:
        train_text_encoder = trains_text_encoder_by_default(family)
    device = training_device(facts)
    ram_needed, ram_source = ram_needed_to_load(family, facts.platform)
    warnings = _ram_warnings(facts, ram_needed, ram_source)
    cached = "latents cached in memory: each image is encoded once, not every epoch (the VAE encoder costs more than the UNet forward pass)"
    common = {
        "device": device.kind, "device_name": device.name, "cache_latents": "memory", "ram_swap_needed": ram_needed,
        "ram_swap_source": ram_source, "family": family, "train_text_encoder": train_text_encoder,
        "gradient_accumulation": gradient_accumulation,
    }
    family_reasons = _family_reasons(family, train_text_encoder)
    gpu = training_gpu(facts)
    if device.kind in ("cpu", "mps") or gpu is None:
        where = "Apple GPU (MPS): untested by lora-wizard" if device.kind == "mps" else "no usable GPU: training runs on the CPU"
        return Recommendations(
            **common, batch_size=1, mixed_precision="no", gradient_checkpointing=False,
            fits=None, reasons=(f"{where}, in fp32 at batch size 1", *family_reasons, cached), warnings=warnings,
        )
    gpus = data_parallel_gpus(facts)
    tightest = min(gpus, key=usable_vram)  # every process holds the same batch: the fullest GPU decides
    precision = "bf16" if gpu.supports_bf16 else "fp16"
    base = TrainingSetup(
        family=family, resolution=resolution, network_dim=network_dim, train_text_encoder=train_text_encoder,
        mixed_precision=precision,
        gradient_accumulation=gradient_accumulation, processes=len(gpus), captions_vary=captions_vary,
        fp16_safe_vae=fp16_safe_vae,
    )
    setup, reasons = _fit_to_vram(base, tightest, eight_bit_optimizer=_bitsandbytes_usable(facts))
    fits = vram_needed(setup) <= usable_vram(tightest)
    if not fits:
        warnings += (
            f"{setup.cost.label} needs about {gib(vram_needed(setup))} even at batch size 1 with every saving; "
            f"this GPU has {gib(tightest.vram_total)}: expect it to run out of memory",
        )
    capability = ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "unknown"
    why_precision = "supports bf16 (no loss scaling needed)" if precision == "bf16" else "has no bf16 (needs 8.0)"
    processes_reasons = _processes_reasons(facts, gpus, setup)
    return Recommendations(
        **common, batch_size=setup.batch_size, mixed_precision=precision,
        gradient_checkpointing=setup.gradient_checkpointing,
        optimizer=setup.optimizer, processes=len(gpus), process_gpus=tuple(g.index for g in gpus), fits=fits,
        reasons=(
            f"{precision}: compute capability {capability} {why_precision}; the frozen weights in {precision} too, "
            "the LoRA's in fp32 (as kohya)", *reasons, *processes_reasons, *family_reasons, cached,
            *filter(None, [parking_note(setup)]),
        ),
        warnings=warnings,
    )


def _bitsandbytes_usable(facts: MachineFacts) -> bool:
    """8-bit AdamW can run: bitsandbytes new enough, on an NVIDIA GPU that torch can use."""
    package, minimum = OPTIMIZER_PACKAGES["adamw8bit"]
    version = facts.packages.get(package)
    usable_version = version is not None and version_tuple(version) >= version_tuple(minimum)
    return usable_version and facts.torch.build == "cuda" and facts.torch.cuda_available


def _family_reasons(family: str, train_text_encoder: bool) -> tuple[str, ...]:
    if family != "sdxl":
        return ()
    defaults = family_defaults("sdxl")
    encoders = (
        "the UNet only, text-encoder outputs cached: kohya's memory-saving default for SDXL"
        if not train_text_encoder
        else "text encoders trained too: kohya recommends the UNet only for SDXL (and it needs more VRAM)"
    )
    return (
        f"SDXL: {defaults['dataset.resolution']} px, buckets up to {defaults['dataset.max_bucket']} "
        f"(kohya's SDXL settings), unet_lr {defaults['training.unet_lr']:g}, text encoders {defaults['training.text_encoder_lr']:g}",
        encoders,
    )


def _processes_reasons(facts: MachineFacts, gpus: tuple[GpuFacts, ...], setup: TrainingSetup) -> tuple[str, ...]:
    """Why `processes` is what it is; nothing to say with one GPU."""
    visible = visible_gpus(facts)
    if len(visible) < 2:
        return ()
    n = len(gpus)
    effective = (
        f"effective batch = batch size {setup.batch_size} x {n} processes x accumulation {setup.gradient_accumulation} "
        f"= {setup.effective_batch} images per optimizer step"
    )
    reasons = [
        f"processes {n}: one per {gpus[0].name} (data-parallel through torchrun); {effective}, so an epoch takes "
        f"{n}x fewer steps (kohya's convention: learning rates are not scaled)"
        if n > 1
        else f"processes 1: no other GPU is like the training GPU {gpus[0].index} ({gpus[0].name}); {effective}"
    ]
    others = [g for g in visible if g not in gpus]
    if others:
        listed = ", ".join(f"GPU {g.index} ({g.name}, {gib(g.vram_total)})" for g in others)
        reasons.append(
            f"not counted: {listed}; processes run in lock step with the same batch each, so a GPU unlike "
            f"the training GPU {gpus[0].index} would hold the others back or run out of memory"
        )
    return tuple(reasons)


def _fit_to_vram(base: TrainingSetup, gpu: GpuFacts, *, eight_bit_optimizer: bool = False) -> tuple[TrainingSetup, list[str]]:
    """The largest batch whose estimate fits the card without gradient checkpointing. When even
    batch size 1 needs gradient checkpointing (~18% slower), every saving is used: 8-bit AdamW too
    where bitsandbytes works (kohya's advice for SDXL on 8-12 GB cards). The frozen weights are in
    the training precision either way (the engine's rule)."""
    usable = usable_vram(gpu)
    room = f"{gib(usable)} usable of {gib(gpu.vram_total)}"
    small = gpu.vram_total < SMALL_VRAM
    for batch in (1,) if small else BATCH_SIZES:
        setup = replace(base, batch_size=batch, gradient_checkpointing=False)
        if vram_needed(setup) <= usable:
            if small:
                why_batch = "batch size 1: under 10 GB of VRAM (the seed article)"
            else:
                offered = ", ".join(map(str, sorted(BATCH_SIZES)))
                why_batch = f"batch size {batch}: the largest of {offered} that fits {room}"
            return setup, [why_batch, "no gradient checkpointing: the card has room"]
    optimizer = "adamw8bit" if eight_bit_optimizer else "adamw"
    setup = replace(base, batch_size=1, gradient_checkpointing=True, optimizer=optimizer)
    why_optimizer = (
        "8-bit AdamW (bitsandbytes): smaller optimizer state, every megabyte counts here"
        if eight_bit_optimizer
        else "AdamW: 8-bit AdamW would save a little more, but bitsandbytes is not usable here (pip install bitsandbytes, NVIDIA only)"
    )
    return setup, [
        "batch size 1: the smallest there is",
        f"gradient checkpointing on: batch size 1 does not fit {room} without it (~18% slower)",
        why_optimizer,
    ]


def _ram_warnings(facts: MachineFacts, needed: int, source: str) -> tuple[str, ...]:
    have = facts.ram_total + facts.swap_total
    if have >= needed:
        return ()
    what = "paging file" if facts.platform == "win32" else "swap"
    return (f"RAM + {what} is {gib(have)}; loading the model needs about {gib(needed)} ({source})",)
