"""Live GPU, CPU and RAM readings for the training dashboard.

`SystemMonitor.read()` is cheap (a few NVML calls and two /proc reads): call it every second or
two from a worker thread. NVML is initialised once, on the first read, and a reading a GPU does
not support (power on many laptop GPUs, temperature on some) is None, never an exception.

psutil and pynvml are imported inside the functions, so importing this module costs nothing
until the dashboard starts reading.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# Why a machine shows no GPU (SystemStats.gpu_note). Same findings as the environment check
# (engine/checks/environment.py read_nvidia), worded for one line of the dashboard.
NOTE_NO_GPU = "no NVIDIA GPU"
NOTE_NOT_FOUND = "no NVIDIA GPU or driver found"
NOTE_DRIVER_NOT_LOADED = "NVIDIA driver not loaded"
NOTE_NO_PYNVML = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
NOTE_DRIVER_ERROR = "NVIDIA driver not usable: {error}"
NOTE_GPU_ERROR = "GPU {index} not readable: {error}"


@dataclass(frozen=True)
class GpuStats:
    index: int
    name: str
    utilisation: int | None  # percent
    memory_used: int  # bytes
    memory_total: int  # bytes
    temperature: int | None  # Celsius
    power: float | None  # watts
    power_limit: float | None  # watts


@dataclass(frozen=True)
class SystemStats:
    gpus: tuple[GpuStats, ...]
    gpu_note: str | None  # why there are no GPUs (or why one is missing); None when all read
    cpu_percent: float  # all cores together, 0-100
    ram_used: int  # bytes: total - available, what other programs cannot have
    ram_total: int  # bytes


class SystemMonitor:
    """Reads the GPUs (NVML), the CPU load and the RAM in use; safe to call from any thread."""

    def __init__(self, nvml: ModuleType | Any = None) -> None:
        """`nvml`: the pynvml module (nvidia-ml-py), or an object with the same functions;
        by default pynvml, imported on the first read."""
        self._nvml = nvml
        self._lock = threading.Lock()
        self._initialised = False
        self._init_note: str | None = None  # set when nvmlInit failed: no retry every second
        self._cpu_before = _cpu_times()

    def read(self) -> SystemStats:
        with self._lock:
            gpus, note = self._read_gpus()
            cpu_percent = self._read_cpu_percent()
        import psutil

        memory = psutil.virtual_memory()
        return SystemStats(
            gpus=gpus,
            gpu_note=note,
            cpu_percent=cpu_percent,
            ram_used=int(memory.total - memory.available),
            ram_total=int(memory.total),
        )

    def close(self) -> None:
        """Shut NVML down if this monitor initialised it; a later read initialises it again."""
        with self._lock:
            if self._initialised:
                self._initialised = False
                # An error means the driver went away meanwhile: nothing is left to release.
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlShutdown()

    # -----------------------------------------------------------------------------------------
    # GPUs

    def _read_gpus(self) -> tuple[tuple[GpuStats, ...], str | None]:
        note = self._ensure_initialised()
        if note is not None:
            return (), note
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            return (), NOTE_DRIVER_ERROR.format(error=exc)
        if count == 0:
            return (), NOTE_NO_GPU
        gpus, problems = [], []
        for index in range(count):
            try:
                gpus.append(_read_gpu(nvml, index))
            except nvml.NVMLError as exc:  # the handle or its memory: e.g. "GPU is lost"
                problems.append(NOTE_GPU_ERROR.format(index=index, error=exc))
        return tuple(gpus), "; ".join(problems) or None

    def _ensure_initialised(self) -> str | None:
        """Initialise NVML once; the note saying why there are no GPUs when it cannot be."""
        if self._initialised:
            return None
        if self._init_note is not None:
            return self._init_note
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                self._init_note = NOTE_NO_PYNVML
                return self._init_note
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._init_note = _init_failure_note(nvml, exc)
            return self._init_note
        self._initialised = True
        return None

    # -----------------------------------------------------------------------------------------
    # CPU

    def _read_cpu_percent(self) -> float:
        """Busy share of all cores since the previous read (or since the monitor was made).

        Not psutil.cpu_percent(interval=None): psutil 7 keeps its "since the last call" sample per
        thread, and a Textual thread worker is a new thread each time, so every read would be
        its first one and say 0.0. The same arithmetic as psutil's, on the monitor's own sample."""
        after = _cpu_times()
        before, self._cpu_before = self._cpu_before, after
        total = _total_time(after) - _total_time(before)
        idle = _idle_time(after) - _idle_time(before)
        if total <= 0:
            return 0.0
        return round(min(100.0, max(0.0, (total - idle) / total * 100)), 1)


def _init_failure_note(nvml: Any, exc: Exception) -> str:
    if isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ())):
        return NOTE_NOT_FOUND
    if isinstance(exc, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
        return NOTE_DRIVER_NOT_LOADED
    return NOTE_DRIVER_ERROR.format(error=exc)


def _read_gpu(nvml: Any, index: int) -> GpuStats:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    name = _optional(nvml, lambda: _text(nvml.nvmlDeviceGetName(handle)))
    utilisation = _optional(nvml, lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
    temperature = _optional(nvml, lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
    power = _optional(nvml, lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000)  # milliwatts
    power_limit = _optional(nvml, lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000)
    return GpuStats(
        index=index,
        name=name or f"GPU {index}",
        utilisation=utilisation,
        memory_used=int(memory.used),
        memory_total=int(memory.total),
        temperature=temperature,
        power=power,
        power_limit=power_limit,
    )


def _optional(nvml: Any, reading):
    """A reading, or None where the GPU does not support it (NVML_ERROR_NOT_SUPPORTED ...)."""
    try:
        return reading()
    except nvml.NVMLError:
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _cpu_times():
    import psutil

    return psutil.cpu_times()


def _total_time(times) -> float:
    # On Linux guest time is already counted in user and nice (as psutil and htop do).
    guest = getattr(times, "guest", 0) + getattr(times, "guest_nice", 0) if sys.platform.startswith("linux") else 0
    return sum(times) - guest


def _idle_time(times) -> float:
    # Linux counts waiting for I/O apart from idle; it is idle all the same.
    return times.idle + getattr(times, "iowait", 0)
