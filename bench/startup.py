"""Process-level figures, each measured on a fresh child process.

    time to first step   `lora-wizard train FILE` from process start to its first `step` event,
                         with the moments of its `started` and `ready` events on the way
    peak RSS             the training child's maximum resident set (os.wait4's rusage, or psutil)
    peak VRAM            the child's GPU memory as the driver reports it (pynvml), on a GPU only
    --help start         `lora-wizard --help`, best of N
    first paint          the wizard app in a headless Textual session, until its first screen is mounted
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def wizard_command() -> list[str]:
    """The `lora-wizard` script installed beside this Python, as users start it (a PATH lookup could
    find a shim, e.g. pyenv's, which adds its own start-up time); else the module."""
    folder = Path(sys.executable).parent
    for name in ("lora-wizard", "lora-wizard.exe"):
        if (folder / name).is_file():
            return [str(folder / name)]
    script = shutil.which("lora-wizard")
    return [script] if script else [sys.executable, "-m", "tui_lora.cli"]


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's default thread count in the child
    return env


class VramPoller:
    """Peak GPU memory of one process through NVML, polled every 50 ms (nothing without a driver).

    The process's own figure where NVML lists it; in a container NVML may not see the process's
    pid, and then the rise of the devices' used memory over what was used before it started."""

    def __init__(self, pid: int):
        self.pid = pid
        self.process_peak = 0
        self.device_peak = 0
        self.baseline = 0
        self.available = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> VramPoller:
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no NVIDIA driver (pynvml.NVMLError) or no pynvml: nothing to poll
            return self
        self.available = bool(self.handles)
        self.baseline = self._device_used(pynvml)
        self._thread = threading.Thread(target=self._poll, args=(pynvml,), daemon=True)
        self._thread.start()
        return self

    def _device_used(self, pynvml) -> int:
        return sum(pynvml.nvmlDeviceGetMemoryInfo(handle).used for handle in self.handles)

    def _poll(self, pynvml) -> None:
        while not self._stop.wait(0.05):
            self.device_peak = max(self.device_peak, self._device_used(pynvml))
            for handle in self.handles:
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid == self.pid and process.usedGpuMemory:
                        self.process_peak = max(self.process_peak, process.usedGpuMemory)

    @property
    def peak(self) -> tuple[int | None, str]:
        """(peak bytes, how it was measured); None without NVML."""
        if not self.available:
            return None, "no NVML"
        if self.process_peak:
            return self.process_peak, "the process's own (NVML)"
        return max(0, self.device_peak - self.baseline), "device use above the baseline (NVML does not list the pid)"

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _wait_with_peak_rss(process: subprocess.Popen) -> tuple[int, int | None]:
    """(exit status, peak RSS in bytes) of a child; the kernel's own maximum where it keeps one."""
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return process.returncode, usage.ru_maxrss * scale
    import psutil  # Windows: the peak working set, read while the child still exists

    peak = psutil.Process(process.pid).memory_info().peak_wset
    return process.wait(), peak


def time_to_first_step(answers_file: Path, *, threads: int | None) -> dict[str, Any]:
    """Run `lora-wizard train FILE` (stdout not a terminal: one JSON event per line) to its end."""
    command = [*wizard_command(), "train", str(answers_file)]
    moments: dict[str, float] = {}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=child_env(threads), cwd=REPO)
    stderr_lines: list[str] = []
    drain = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
    drain.start()
    with VramPoller(process.pid) as vram:
        for line in process.stdout:
            try:
                kind = json.loads(line).get("kind")
            except ValueError:
                continue
            if kind in ("started", "ready", "step") and kind not in moments:
                moments[kind] = time.perf_counter() - started
        status, peak_rss = _wait_with_peak_rss(process)
    drain.join()
    process.stdout.close()
    process.stderr.close()
    peak_vram, vram_method = vram.peak
    if status != 0 or "step" not in moments:
        raise RuntimeError(f"`{' '.join(command)}` exited {status}: {''.join(stderr_lines)[-2000:]}")
    return {
        "to_started_s": moments.get("started"),
        "to_ready_s": moments.get("ready"),
        "to_first_step_s": moments["step"],
        "total_s": time.perf_counter() - started,
        "peak_rss_mb": peak_rss / 2**20 if peak_rss else None,
        "peak_vram_mb": peak_vram / 2**20 if peak_vram is not None else None,
        "peak_vram_method": vram_method,
    }


def best_wall_time(command: list[str], runs: int, *, env: dict[str, str] | None = None) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env, cwd=REPO)
        best = min(best, time.perf_counter() - started)
    return best


def help_start(runs: int) -> dict[str, Any]:
    """`lora-wizard --help`, best of `runs`, with the bare interpreter's start for reference."""
    env = child_env(None)
    return {
        "help_s": best_wall_time([*wizard_command(), "--help"], runs, env=env),
        "python_s": best_wall_time([sys.executable, "-c", "pass"], runs, env=env),
        "runs": runs,
    }


def first_paint(runs: int, *, timeout: float = 120.0) -> dict[str, Any]:
    """Best of `runs`: process start until the wizard's first screen is mounted (bench/paint_probe.py)."""
    if not (REPO / "tui_lora" / "app.py").is_file():
        return {"measured": False, "reason": "tui_lora/app.py does not exist yet"}
    best, screen = float("inf"), ""
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, str(BENCH_DIR / "paint_probe.py")], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=child_env(None), cwd=REPO)
        painted = None
        for line in process.stdout:
            if line.startswith("painted"):
                painted = time.perf_counter() - started  # the app's shutdown after it is not counted
                screen = line.split()[-1]
        _, errors = process.communicate(timeout=timeout)
        if process.returncode != 0 or painted is None:
            return {"measured": False, "reason": f"the probe failed: {errors.strip()[-500:]}"}
        best = min(best, painted)
    return {"measured": True, "first_paint_s": best, "first_screen": screen, "runs": runs}
