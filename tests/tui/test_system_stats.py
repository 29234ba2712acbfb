"""SystemMonitor: real psutil readings on this machine, and NVML readings through a test double of
the pynvml module that raises pynvml's own errors (an unsupported reading, a failed init)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pynvml
import pytest

from tui_lora import system_stats
from tui_lora.system_stats import GpuStats, SystemMonitor

REPO = Path(__file__).resolve().parents[2]
MiB = 1024**2
GiB = 1024**3


def nvml_error(code: int) -> pynvml.NVMLError:
    """The exception pynvml itself raises for an NVML return code (a subclass per code)."""
    return pynvml.NVMLError(code)


class FakeNvml:
    """The part of pynvml the monitor uses, over a list of simulated GPUs (dicts of readings in
    NVML's units; None: the GPU does not support the reading, raised as pynvml does)."""

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, devices: list[dict], init_error: int | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error is not None:
            raise nvml_error(self.init_error)

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        device = self.devices[index]
        if device.get("lost"):
            raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return device

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self._reading(handle, "utilisation"), memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        used, total = handle["memory"]
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._reading(handle, "temperature")

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._reading(handle, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._reading(handle, "power_limit_mw")

    @staticmethod
    def _reading(handle: dict, key: str):
        if handle.get(key) is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return handle[key]


DESKTOP = {
    "name": "NVIDIA GeForce RTX 4090",
    "utilisation": 57,
    "memory": (12 * GiB + 300 * MiB, 24 * GiB),
    "temperature": 71,
    "power_mw": 285_432,
    "power_limit_mw": 450_000,
}
# A laptop GPU: NVML reports neither power nor temperature, and names come back as bytes from
# older nvidia-ml-py versions.
LAPTOP = {
    "name": b"NVIDIA GeForce RTX 3050 Laptop GPU",
    "utilisation": 3,
    "memory": (500 * MiB, 4 * GiB),
    "temperature": None,
    "power_mw": None,
    "power_limit_mw": None,
}


def test_the_test_double_has_pynvml_signatures():
    """What FakeNvml offers, pynvml offers with the same parameters: the double cannot drift."""
    for name, function in inspect.getmembers(FakeNvml, inspect.isfunction):
        if name.startswith("nvml"):
            real = inspect.signature(getattr(pynvml, name))
            fake = inspect.signature(function)
            assert list(real.parameters) == list(fake.parameters)[1:], name  # less self


def test_this_machine_reads_like_psutil_and_nvml():
    monitor = SystemMonitor()
    try:
        stats = monitor.read()
    finally:
        monitor.close()
    memory = psutil.virtual_memory()
    assert stats.ram_total == memory.total
    assert abs(stats.ram_used - (memory.total - memory.available)) < 256 * MiB
    assert 0.0 <= stats.cpu_percent <= 100.0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # this machine: no NVIDIA driver
        assert stats.gpus == ()
        assert stats.gpu_note in (system_stats.NOTE_NOT_FOUND, system_stats.NOTE_DRIVER_NOT_LOADED)
        return
    try:  # a GPU machine: the same GPUs as NVML lists
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()
    assert [gpu.name for gpu in stats.gpus] == names
    assert all(0 < gpu.memory_used <= gpu.memory_total for gpu in stats.gpus)


def test_cpu_load_is_measured_between_reads_from_different_threads():
    """A Textual thread worker is a new thread each time; the load must still be the load since
    the previous read, as psutil measures it over the same stretch (not psutil's per-thread 0.0)."""
    monitor = SystemMonitor()
    psutil.cpu_percent(interval=None)
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:  # keep one core busy
        pass
    results = {}
    reader = threading.Thread(target=lambda: results.update(stats=monitor.read()))
    reader.start()
    expected = psutil.cpu_percent(interval=None)
    reader.join()
    measured = results["stats"].cpu_percent
    assert measured > 0.0
    assert abs(measured - expected) < 15


def test_nvml_readings_are_converted():
    nvml = FakeNvml([DESKTOP, LAPTOP])
    stats = SystemMonitor(nvml).read()
    assert stats.gpu_note is None
    desktop, laptop = stats.gpus
    assert desktop == GpuStats(
        index=0,
        name="NVIDIA GeForce RTX 4090",
        utilisation=57,
        memory_used=12 * GiB + 300 * MiB,
        memory_total=24 * GiB,
        temperature=71,
        power=pytest.approx(285.432),
        power_limit=pytest.approx(450.0),
    )
    assert laptop.name == "NVIDIA GeForce RTX 3050 Laptop GPU"
    assert (laptop.index, laptop.utilisation, laptop.memory_used, laptop.memory_total) == (1, 3, 500 * MiB, 4 * GiB)
    assert (laptop.temperature, laptop.power, laptop.power_limit) == (None, None, None)


def test_nvml_is_initialised_once():
    nvml = FakeNvml([DESKTOP])
    monitor = SystemMonitor(nvml)
    assert nvml.calls == []  # lazily: nothing until the first read
    monitor.read()
    monitor.read()
    assert nvml.calls == ["init"]


@pytest.mark.parametrize(
    ("code", "note"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, system_stats.NOTE_NOT_FOUND),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, system_stats.NOTE_DRIVER_NOT_LOADED),
        (pynvml.NVML_ERROR_NO_PERMISSION, "NVIDIA driver not usable: Insufficient Permissions"),
    ],
)
def test_failed_init_gives_no_gpus_and_says_why(code, note):
    nvml = FakeNvml([DESKTOP], init_error=code)
    monitor = SystemMonitor(nvml)
    first, second = monitor.read(), monitor.read()
    assert first.gpus == second.gpus == ()
    assert first.gpu_note == second.gpu_note == note
    assert nvml.calls == ["init"]  # not retried every second
    monitor.close()
    assert "shutdown" not in nvml.calls


def test_no_devices_is_no_nvidia_gpu():
    stats = SystemMonitor(FakeNvml([])).read()
    assert stats.gpus == ()
    assert stats.gpu_note == system_stats.NOTE_NO_GPU == "no NVIDIA GPU"


def test_a_lost_gpu_is_left_out_with_a_note():
    stats = SystemMonitor(FakeNvml([{**DESKTOP, "lost": True}, LAPTOP])).read()
    assert [gpu.index for gpu in stats.gpus] == [1]
    assert stats.gpu_note == "GPU 0 not readable: GPU is lost"


def test_close_shuts_nvml_down_only_after_init():
    nvml = FakeNvml([DESKTOP])
    monitor = SystemMonitor(nvml)
    monitor.close()
    assert nvml.calls == []
    monitor.read()
    monitor.close()
    monitor.close()
    assert nvml.calls == ["init", "shutdown"]
    monitor.read()  # reading after close initialises again
    assert nvml.calls == ["init", "shutdown", "init"]


def test_importing_loads_neither_psutil_nor_pynvml_nor_textual():
    script = "import sys, json, tui_lora.system_stats\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not loaded & {"psutil", "pynvml", "textual", "rich"}
