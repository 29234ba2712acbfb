"""The machine a run would train on: facts, checks with remedies, and settings that fit it.

Reading the facts (`gather_facts`) is the only part that touches the machine; the checks and the
recommendations are pure functions of a `MachineFacts`, so tests can describe any GPU.

Facts come from nvidia-ml-py (GPUs, driver), psutil (memory), importlib.metadata (package
versions, without importing the packages) and torch (its build and whether CUDA works; imported
inside `read_torch`, never at module level, because importing it takes over a second).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Literal

from engine.checks.defaults import family_defaults, trains_text_encoder_by_default
from engine.checks.estimate import (
    ComputeDevice,
    GiB,
    TrainingSetup,
    parking_note,
    ram_needed_to_load,
    vram_needed,
)

Status = Literal["ok", "warn", "fail"]
STATUS_ORDER: dict[str, int] = {"ok": 0, "warn": 1, "fail": 2}

MIN_PYTHON = (3, 10)
MIN_TORCH = "2.4"
# Mirrors [project] dependencies in pyproject.toml (a test keeps the two in step).
REQUIRED_PACKAGES: dict[str, str] = {
    "diffusers": "0.35",
    "transformers": "4.45",
    "peft": "0.17",
    "accelerate": "1.0",
    "safetensors": "0.4",
}
# Optional packages and what they are for.
OPTIONAL_PACKAGES: dict[str, str] = {
    "bitsandbytes": "optional, only for optimizer = adamw8bit",
    "xformers": "optional; torch's built-in attention makes it unnecessary",
    "prodigyopt": "optional, only for optimizer = prodigy",
}
# What each optimizer needs beyond torch: (package, minimum version).
OPTIMIZER_PACKAGES: dict[str, tuple[str, str]] = {"adamw8bit": ("bitsandbytes", "0.43"), "prodigy": ("prodigyopt", "1.0")}

# The seed article: batch size 1 when the card has less than 10 GB. Cards sold as 8 GB report
# 8 GiB and 10 GB cards report 10 GiB, hence the line between them.
SMALL_VRAM = int(9.5 * GiB)
# Batch sizes tried, largest first. 4 at most: a DreamBooth set is ~20 images, and larger batches
# mean fewer optimizer steps per epoch than the usual learning rates assume.
BATCH_SIZES = (4, 2, 1)
# Share of the card a plan may fill: the rest is for fragmentation and the desktop.
VRAM_HEADROOM = 0.9
# Below this much free disk at the output folder, a run may not be able to save (LoRA files,
# resumable checkpoints with optimizer state, samples, a disk latent cache).
DISK_WARN = 5 * GiB
DISK_FAIL = 1 * GiB


@dataclass(frozen=True)
class GpuFacts:
    index: int
    name: str
    vram_total: int  # bytes
    vram_free: int | None = None  # bytes; None when unknown
    compute_capability: tuple[int, int] | None = None
    uuid: str | None = None
    bf16: bool | None = None  # None: derived from the compute capability (NVIDIA)

    @property
    def supports_bf16(self) -> bool:
        if self.bf16 is not None:
            return self.bf16
        return self.compute_capability is not None and self.compute_capability >= (8, 0)


@dataclass(frozen=True)
class NvidiaDriverFacts:
    status: Literal["ok", "not_found", "error"]
    version: str | None = None
    cuda_version: str | None = None  # the newest CUDA the driver supports, e.g. "12.4"
    error: str | None = None


@dataclass(frozen=True)
class TorchFacts:
    version: str | None  # None: torch cannot be imported
    build: Literal["cuda", "rocm", "mps", "cpu"] | None = None
    cuda_version: str | None = None  # CUDA the build was made for
    hip_version: str | None = None
    cuda_available: bool = False  # torch.cuda works (CUDA or ROCm)
    mps_available: bool = False
    arch_list: tuple[str, ...] = ()  # GPU architectures compiled in, e.g. ("sm_80", "sm_90")
    error: str | None = None


@dataclass(frozen=True)
class MachineFacts:
    python_version: tuple[int, int, int]
    platform: str  # sys.platform: "linux", "win32", "darwin"
    torch: TorchFacts
    driver: NvidiaDriverFacts
    gpus: tuple[GpuFacts, ...]
    cpu_cores: int
    ram_total: int
    ram_available: int
    swap_total: int
    swap_free: int
    disk_path: Path
    disk_free: int | None
    packages: dict[str, str | None] = field(default_factory=dict)  # name -> version, None if missing
    cuda_visible_devices: str | None = None


@dataclass(frozen=True)
class CheckItem:
    id: str  # stable, e.g. "python", "gpu.0", "package.peft"
    group: str  # "system", "gpu", "packages", "run"
    title: str
    status: Status
    summary: str  # one line: what was found
    remedy: str | None = None  # one line: what to do; None when nothing is to be done


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
        """Images per optimizer step: batch size x processes x gradient accumulation."""
        return self.batch_size * self.processes * self.gradient_accumulation

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
# Reading the facts


def gather_facts(output_dir: str | Path | None = None) -> MachineFacts:
    """Read the machine: a second or so, most of it importing torch. Never raises for a missing
    GPU, driver or package; those are facts too."""
    import psutil

    driver, nvml_gpus = read_nvidia()
    # NVML knows free VRAM without starting CUDA; torch lists the GPUs only where NVML cannot (AMD).
    torch_facts, torch_gpus = read_torch(list_gpus=not nvml_gpus)
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    disk_path = existing_ancestor(Path(output_dir) if output_dir else Path.cwd() / "output")
    return MachineFacts(
        python_version=tuple(sys.version_info[:3]),
        platform=sys.platform,
        torch=torch_facts,
        driver=driver,
        gpus=nvml_gpus or torch_gpus,
        cpu_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        ram_total=memory.total,
        ram_available=memory.available,
        swap_total=swap.total,
        swap_free=swap.free,
        disk_path=disk_path,
        disk_free=free_disk(disk_path),
        packages=read_packages([*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES]),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def read_nvidia() -> tuple[NvidiaDriverFacts, tuple[GpuFacts, ...]]:
    """The NVIDIA driver and its GPUs from NVML; no driver is a fact, not an error."""
    try:
        import pynvml
    except ImportError:
        return NvidiaDriverFacts("error", error="nvidia-ml-py is not installed (pip install nvidia-ml-py)"), ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return NvidiaDriverFacts("not_found"), ()
    except pynvml.NVMLError as exc:
        return NvidiaDriverFacts("error", error=str(exc)), ()
    try:
        version = _text(pynvml.nvmlSystemGetDriverVersion())
        driver = NvidiaDriverFacts("ok", version=version, cuda_version=_driver_cuda_version(pynvml))
        gpus = tuple(_nvml_gpu(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as exc:
        return NvidiaDriverFacts("error", error=str(exc)), ()
    finally:
        pynvml.nvmlShutdown()
    return driver, gpus


def _driver_cuda_version(pynvml) -> str | None:
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040
    except pynvml.NVMLError:
        return None
    return f"{cuda // 1000}.{cuda % 1000 // 10}"


def _nvml_gpu(pynvml, index: int) -> GpuFacts:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    except pynvml.NVMLError:
        capability = None
    try:
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
    except pynvml.NVMLError:
        uuid = None
    return GpuFacts(index, _text(pynvml.nvmlDeviceGetName(handle)), int(memory.total), int(memory.free), capability, uuid)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_torch(*, list_gpus: bool = True) -> tuple[TorchFacts, tuple[GpuFacts, ...]]:
    """torch's version and build, whether CUDA works, and (with `list_gpus`) the GPUs torch sees:
    for ROCm, where NVML knows nothing."""
    try:
        import torch
    except Exception as exc:  # not installed, or a broken install (a missing DLL on Windows)
        return TorchFacts(version=None, error=f"{type(exc).__name__}: {exc}"), ()
    hip = getattr(torch.version, "hip", None)
    mps_built = sys.platform == "darwin" and torch.backends.mps.is_built()
    build = "rocm" if hip else "cuda" if torch.version.cuda else "mps" if mps_built else "cpu"
    cuda_available = build in ("cuda", "rocm") and torch.cuda.is_available()
    facts = TorchFacts(
        version=torch.__version__,
        build=build,
        cuda_version=torch.version.cuda,
        hip_version=hip,
        cuda_available=cuda_available,
        mps_available=mps_built and torch.backends.mps.is_available(),
        arch_list=tuple(torch.cuda.get_arch_list()) if cuda_available else (),
    )
    gpus = []
    if cuda_available and list_gpus:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            bf16 = torch.cuda.is_bf16_supported() if hip else None
            gpus.append(GpuFacts(index, props.name, int(props.total_memory), None, (props.major, props.minor), bf16=bf16))
    return facts, tuple(gpus)


def read_packages(names: list[str]) -> dict[str, str | None]:
    """Installed versions from package metadata: no import, so this stays fast."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def existing_ancestor(path: Path) -> Path:
    """The folder itself, or the nearest parent that exists (where it would be created)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    """`"2.13.0+cpu"` -> `(2, 13, 0)`; enough to compare against a minimum."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def gib(size: int | float) -> str:
    return f"{size / GiB:.1f} GiB"


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
    cached = "latents cached in memory: the VAE encoder costs more than the UNet forward pass (performance-facts.md)"
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


# ---------------------------------------------------------------------------------------------
# Checks with remedies


def machine_items(facts: MachineFacts, recommendations: Recommendations | None = None) -> list[CheckItem]:
    """Every machine check, in display order."""
    recommendations = recommendations or recommend(facts)
    items = [_python_item(facts), _torch_item(facts), _cuda_item(facts), _driver_item(facts)]
    items += [_gpu_item(facts, gpu) for gpu in facts.gpus]
    items += _processes_items(facts, recommendations)
    items += [_cpu_item(facts), _memory_item(facts, recommendations), disk_item(facts.disk_path, facts.disk_free, "disk", "system")]
    items += [_package_item(name, facts.packages.get(name), minimum) for name, minimum in REQUIRED_PACKAGES.items()]
    items += [_optional_package_item(name, facts.packages.get(name), use) for name, use in OPTIONAL_PACKAGES.items()]
    return items


def _python_item(facts: MachineFacts) -> CheckItem:
    version = ".".join(map(str, facts.python_version))
    if facts.python_version[:2] >= MIN_PYTHON:
        return CheckItem("python", "system", "Python", "ok", version)
    return CheckItem("python", "system", "Python", "fail", f"{version} is too old", "install Python 3.10 or newer")


def _torch_item(facts: MachineFacts) -> CheckItem:
    torch = facts.torch
    if torch.version is None:
        return CheckItem("torch", "system", "torch", "fail", f"cannot be imported ({torch.error})", "pip install torch (see pytorch.org for the build that fits your GPU)")
    build = {
        "cuda": f"CUDA {torch.cuda_version} build",
        "rocm": f"ROCm {torch.hip_version} build",
        "mps": "CPU + Apple MPS build",
        "cpu": "CPU-only build",
    }[torch.build or "cpu"]
    summary = f"{torch.version} ({build})"
    if version_tuple(torch.version) < version_tuple(MIN_TORCH):
        return CheckItem("torch", "system", "torch", "fail", summary + " is too old", f"pip install 'torch>={MIN_TORCH}'")
    if torch.build == "cpu" and facts.gpus:
        cuda = f" (your driver supports CUDA {facts.driver.cuda_version})" if facts.driver.cuda_version else ""
        return CheckItem(
            "torch", "system", "torch", "fail", summary + ": it cannot use your NVIDIA GPU",
            f"install a CUDA build of torch from pytorch.org/get-started/locally{cuda}",
        )
    return CheckItem("torch", "system", "torch", "ok", summary)


def _cuda_item(facts: MachineFacts) -> CheckItem:
    torch = facts.torch
    title = "GPU for training"
    if torch.cuda_available and facts.gpus:
        gpu = training_gpu(facts)
        problem = _arch_problem(torch.arch_list, gpu.compute_capability if gpu else None)
        if problem:
            return CheckItem("cuda", "system", title, "fail", problem, "install a torch build that supports this GPU (pytorch.org)")
        return CheckItem("cuda", "system", title, "ok", f"CUDA usable: trains on GPU {gpu.index}, {gpu.name}" if gpu else "CUDA usable")
    if torch.mps_available:
        return CheckItem("cuda", "system", title, "warn", "Apple GPU (MPS): usable, not tested by lora-wizard", None)
    if facts.gpus and torch.build in ("cuda", "rocm"):
        return CheckItem("cuda", "system", title, "fail", "torch cannot use the GPU (torch.cuda.is_available() is False)", _cuda_remedy(facts))
    if facts.gpus:
        return CheckItem("cuda", "system", title, "fail", "the GPU is unused: torch has no CUDA", "install a CUDA build of torch (see the torch line)")
    return CheckItem(
        "cuda", "system", title, "warn", "no GPU found: training runs on the CPU, very slowly (see the estimate)",
        "use a machine with an NVIDIA GPU and its driver for real runs",
    )


def _cuda_remedy(facts: MachineFacts) -> str:
    built, supported = facts.torch.cuda_version, facts.driver.cuda_version
    if built and supported and version_tuple(supported) < version_tuple(built):
        return f"the driver supports CUDA {supported} but torch needs {built}: update the NVIDIA driver, or install torch for CUDA {supported}"
    if facts.cuda_visible_devices is not None:
        return f"CUDA_VISIBLE_DEVICES={facts.cuda_visible_devices!r} may hide the GPU: unset it or name a GPU index"
    return "reinstall the NVIDIA driver, then reboot; `nvidia-smi` must list the GPU"


def _arch_problem(arch_list: tuple[str, ...], capability: tuple[int, int] | None) -> str | None:
    """Whether this torch build has kernels for the GPU: its sm_XY, or PTX (compute_XY) of an
    older architecture that the driver can compile. None when it does, or when unknown."""
    if capability is None or not any(a.startswith("sm_") for a in arch_list):
        return None  # unknown, or a ROCm build (gfx names)
    number = capability[0] * 10 + capability[1]
    compiled = [int(a[3:]) for a in arch_list if a.startswith("sm_") and a[3:].isdigit()]
    ptx = [int(a[8:]) for a in arch_list if a.startswith("compute_") and a[8:].isdigit()]
    if number in compiled or any(p <= number for p in ptx) or any(c // 10 == capability[0] and c <= number for c in compiled):
        return None
    return f"this torch build has no kernels for compute capability {capability[0]}.{capability[1]} (it has {', '.join(arch_list)})"


def _driver_item(facts: MachineFacts) -> CheckItem:
    driver = facts.driver
    title = "NVIDIA driver"
    if driver.status != "ok" and (facts.torch.build == "rocm" and facts.torch.cuda_available or facts.torch.mps_available):
        return CheckItem("nvidia_driver", "gpu", title, "ok", "not needed: torch uses the " + ("AMD GPU (ROCm)" if facts.torch.build == "rocm" else "Apple GPU"))
    if driver.status == "not_found":
        return CheckItem(
            "nvidia_driver", "gpu", title, "warn", "not found (no NVIDIA GPU, or no driver installed)",
            "on a machine with an NVIDIA GPU, install the NVIDIA driver; `nvidia-smi` must work",
        )
    if driver.status == "error":
        return CheckItem("nvidia_driver", "gpu", title, "warn", f"not usable: {driver.error}", "reinstall the NVIDIA driver, then reboot")
    summary = f"{driver.version}, supports CUDA up to {driver.cuda_version}"
    built = facts.torch.cuda_version
    if built and driver.cuda_version and version_tuple(driver.cuda_version) < version_tuple(built):
        return CheckItem(
            "nvidia_driver", "gpu", title, "fail", f"{summary}; torch was built for CUDA {built}",
            f"update the NVIDIA driver, or install torch for CUDA {driver.cuda_version}",
        )
    if not facts.gpus:
        return CheckItem("nvidia_driver", "gpu", title, "warn", summary + "; no GPU found", "check that the GPU is seated and powered (`nvidia-smi`)")
    return CheckItem("nvidia_driver", "gpu", title, "ok", summary)


def _gpu_item(facts: MachineFacts, gpu: GpuFacts) -> CheckItem:
    capability = ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "?"
    free = f", {gib(gpu.vram_free)} free" if gpu.vram_free is not None else ""
    summary = f"{gpu.name}: {gib(gpu.vram_total)} VRAM{free}, compute {capability}, " + ("bf16" if gpu.supports_bf16 else "no bf16")
    item_id, title = f"gpu.{gpu.index}", f"GPU {gpu.index}"
    if gpu.vram_free is not None and gpu.vram_free < gpu.vram_total * 0.5:
        used = gpu.vram_total - gpu.vram_free
        return CheckItem(item_id, "gpu", title, "warn", summary + f" ({gib(used)} in use)", "other programs hold VRAM: close them (`nvidia-smi` lists them)")
    if gpu.compute_capability is not None and gpu.compute_capability < (7, 0):
        return CheckItem(item_id, "gpu", title, "warn", summary + ": old and slow for training", "a GPU of compute capability 7.0 or newer trains far faster")
    return CheckItem(item_id, "gpu", title, "ok", summary)


def _processes_items(facts: MachineFacts, recommendations: Recommendations) -> list[CheckItem]:
    """With more than one GPU that torch can use: how many processes train together."""
    visible = visible_gpus(facts)
    if len(visible) < 2 or not facts.torch.cuda_available:
        return []
    n = recommendations.processes
    used = ("GPU " if n == 1 else "GPUs ") + ", ".join(map(str, recommendations.process_gpus))
    summary = (
        f"{len(visible)} GPUs: processes = {n} ({used}), effective batch {recommendations.batch_size} x {n} "
        f"x {recommendations.gradient_accumulation} = {recommendations.effective_batch}"
    )
    if n == len(visible):
        return [CheckItem("processes", "gpu", "Several GPUs", "ok", summary)]
    names = ",".join(g.uuid or str(g.index) for g in visible if g.index in recommendations.process_gpus)
    return [
        CheckItem(
            "processes", "gpu", "Several GPUs", "warn", summary + "; the GPUs differ, only those like the training GPU are counted",
            f"set CUDA_VISIBLE_DEVICES={names} so that the processes use these GPUs",
        )
    ]


def _cpu_item(facts: MachineFacts) -> CheckItem:
    return CheckItem("cpu", "system", "CPU", "ok", f"{facts.cpu_cores} physical cores")


def _memory_item(facts: MachineFacts, recommendations: Recommendations) -> CheckItem:
    what = "paging file" if facts.platform == "win32" else "swap"
    summary = f"{gib(facts.ram_total)} RAM ({gib(facts.ram_available)} available) + {gib(facts.swap_total)} {what}"
    needed = recommendations.ram_swap_needed
    if facts.ram_total + facts.swap_total < needed:
        remedy = (
            f"set the paging file so RAM + paging file reaches {gib(needed)} (System > Advanced > Performance > Virtual memory)"
            if facts.platform == "win32"
            else f"add swap so RAM + swap reaches {gib(needed)} ({recommendations.ram_swap_source})"
        )
        return CheckItem("memory", "system", "Memory", "warn", summary + f"; loading needs about {gib(needed)}", remedy)
    if facts.ram_available + facts.swap_free < needed:
        return CheckItem("memory", "system", "Memory", "warn", summary + f"; loading needs about {gib(needed)} free", "close other programs before training")
    return CheckItem("memory", "system", "Memory", "ok", summary)


def disk_item(path: Path, free: int | None, item_id: str, group: str) -> CheckItem:
    """Free disk where the run writes."""
    if free is None:
        return CheckItem(item_id, group, "Free disk", "warn", f"cannot read the free space at {path}", "check the output folder's drive")
    summary = f"{gib(free)} free at {path}"
    if free < DISK_FAIL:
        return CheckItem(item_id, group, "Free disk", "fail", summary, "free some space or choose an output folder on another drive")
    if free < DISK_WARN:
        return CheckItem(item_id, group, "Free disk", "warn", summary + " (checkpoints and samples need a few GB)", "free some space before a long run")
    return CheckItem(item_id, group, "Free disk", "ok", summary)


def _package_item(name: str, version: str | None, minimum: str) -> CheckItem:
    if version is None:
        return CheckItem(f"package.{name}", "packages", name, "fail", "not installed", f"pip install '{name}>={minimum}'")
    if version_tuple(version) < version_tuple(minimum):
        return CheckItem(f"package.{name}", "packages", name, "fail", f"{version} is older than {minimum}", f"pip install -U '{name}>={minimum}'")
    return CheckItem(f"package.{name}", "packages", name, "ok", version)


def _optional_package_item(name: str, version: str | None, use: str) -> CheckItem:
    summary = version if version is not None else f"not installed ({use})"
    return CheckItem(f"package.{name}", "packages", name, "ok", summary)


def worst(items: Iterable[CheckItem]) -> Status:
    return max((item.status for item in items), key=STATUS_ORDER.__getitem__, default="ok")
