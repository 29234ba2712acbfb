"""The machine a run would train on: the facts, read once.

Reading the facts (`gather_facts`) is the only part that touches the machine; the checks
(engine.checks.machine_items) and the recommendations (engine.checks.recommend) are pure
functions of a `MachineFacts`, so tests can describe any GPU.

Facts come from nvidia-ml-py (GPUs, driver), psutil (memory), importlib.metadata (package
versions, without importing the packages) and torch (its build and whether CUDA works).
Importing torch takes a second or more, so `read_torch` first reads its build from the files of
the install (`torch/version.py`, which torch's own `torch.version` is) and imports torch only when
that cannot settle whether CUDA works: a CPU build (off macOS), or any build on a machine without
an NVIDIA driver, is answered from the files alone.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from engine.checks.costs import GiB
from engine.cpu_threads import allowed_cores, busy_cores

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

# The check samples the other processes' CPU use for this long (a run samples longer).
CHECK_SAMPLE_SECONDS = 0.2


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
    # Cores this process may use (affinity, cgroup quota) and those other processes keep busy:
    # what sizes torch's threads for a run on the CPU (engine/cpu_threads.py). None: not read.
    cpu_usable: int | None = None
    cpu_busy: float | None = None


# ---------------------------------------------------------------------------------------------
# Reading the facts


def gather_facts(output_dir: str | Path | None = None) -> MachineFacts:
    """Read the machine: a fraction of a second, or a second or so where torch must be imported
    to know whether CUDA works. Never raises for a missing
    GPU, driver or package; those are facts too."""
    import psutil

    driver, nvml_gpus = read_nvidia()
    # NVML knows free VRAM without starting CUDA; torch lists the GPUs only where NVML cannot (AMD).
    torch_facts, torch_gpus = read_torch(list_gpus=not nvml_gpus, driver=driver)
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
        cpu_usable=allowed_cores(),
        cpu_busy=busy_cores(CHECK_SAMPLE_SECONDS),
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


def read_torch(*, list_gpus: bool = True, driver: NvidiaDriverFacts | None = None) -> tuple[TorchFacts, tuple[GpuFacts, ...]]:
    """torch's version and build, whether CUDA works, and (with `list_gpus`) the GPUs torch sees:
    for ROCm, where NVML knows nothing. Without importing torch where its files settle it."""
    from_files = torch_facts_from_files(driver)
    if from_files is not None:
        return from_files, ()
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


def torch_facts_from_files(driver: NvidiaDriverFacts | None, folder: Path | None = None) -> TorchFacts | None:
    """TorchFacts read from torch's `version.py` when importing torch could add nothing: no CUDA
    or ROCm in the build (macOS excepted: MPS), or a CUDA build where NVML finds no driver. None
    when torch must be imported to know (or its files cannot be read)."""
    if folder is None:
        try:
            spec = importlib.util.find_spec("torch")  # finds the package without importing it
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(list(spec.submodule_search_locations)[0])
    values = _module_constants(folder / "version.py")
    version, cuda, hip = values.get("__version__"), values.get("cuda"), values.get("hip")
    if not isinstance(version, str) or sys.platform == "darwin" or hip:
        return None
    if cuda and not (driver is not None and driver.status == "not_found"):
        return None
    return TorchFacts(version=version, build="cuda" if cuda else "cpu", cuda_version=cuda)


def _module_constants(path: Path) -> dict[str, object]:
    """The `name = constant` lines of a Python file, read without running it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    constants: dict[str, object] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
        if isinstance(target, ast.Name) and isinstance(getattr(node, "value", None), ast.Constant):
            constants[target.id] = node.value.value
    return constants


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
