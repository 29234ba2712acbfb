"""How many threads torch computes with: sized to the cores that are free when a run starts.

torch's default is one thread per core the process may run on. When other processes keep those
cores busy, its threads wait for each other at every parallel region and a CPU step takes ten
times as long or more (2 busy processes on 2 cores: the demo did 50 of 80 steps in 300 s with 2
threads, and all 80 in 33 s with 1). So a run takes the cores it may use (its CPU affinity,
capped by a cgroup CPU quota in a container) minus those other processes keep busy now, at least
one. `[training] cpu_threads` overrides the count, and so does OMP_NUM_THREADS when set (torch
reads it itself).

The count changes floating-point results (a sum split over more threads adds in another order),
so it is decided once, when a run starts: the `ready` event records it (`cpu_threads`), and a
resume takes the recorded count, so a resumed run ends with the tensors of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

# How long the other processes' CPU use is sampled for when a run starts.
SAMPLE_SECONDS = 0.5
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"

Source = Literal["setting", "OMP_NUM_THREADS", "recorded", "free cores"]


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: Source
    allowed: int  # cores this process may use
    busy: float | None = None  # cores kept busy by other processes, when measured

    def describe(self) -> str:
        threads = f"{self.threads} CPU thread{'s' if self.threads != 1 else ''}"
        if self.source == "setting":
            return f"{threads} ([training] cpu_threads)"
        if self.source == "OMP_NUM_THREADS":
            return f"{threads} (OMP_NUM_THREADS)"
        if self.source == "recorded":
            return f"{threads}, as when the run started (the same results as without the interruption)"
        return f"{threads}: {self.allowed} usable cores, {self.busy or 0:.1f} kept busy by other processes"


def allowed_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on: its affinity, capped by a cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text(encoding="ascii").split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota (another OS, cgroup v1, or none set)
    return max(1, cores)


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores kept busy by other processes over `seconds`: the CPUs this process may use, less its own use."""
    import psutil

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    me = psutil.Process()
    me.cpu_percent(None)
    psutil.cpu_percent(None, percpu=True)
    time.sleep(seconds)
    per_cpu = psutil.cpu_percent(None, percpu=True)
    mine = me.cpu_percent(None)
    used = sum(per_cpu[i] for i in cpus if i < len(per_cpu)) if cpus else sum(per_cpu)
    return max(0.0, (used - mine) / 100)


def threads_for(allowed: int, busy: float, processes: int = 1) -> int:
    """Free cores shared by the run's processes on this machine, at least one each."""
    return max(1, int(allowed - busy + 0.5) // max(1, processes))


def choose_threads(setting: int | None, *, recorded: int | None = None, processes: int = 1,
                   environ: dict[str, str] | None = None) -> ThreadChoice:
    """The count for a run: the recorded one on resume, else the setting, else OMP_NUM_THREADS,
    else the free cores (measured now, shared by `processes` processes)."""
    environ = os.environ if environ is None else environ
    allowed = allowed_cores()
    if recorded is not None:
        return ThreadChoice(recorded, "recorded", allowed)
    if setting is not None:
        return ThreadChoice(setting, "setting", allowed)
    if environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]) >= 1:
        return ThreadChoice(int(environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS", allowed)
    # With several processes on this machine, they start together and would count each other as
    # busy: the cores are shared among them instead of measured.
    busy = busy_cores() if processes == 1 else 0.0
    return ThreadChoice(threads_for(allowed, busy, processes), "free cores", allowed, busy)


def recorded_threads(events_file: Path) -> int | None:
    """The count the run's last start recorded (its `ready` event), if any."""
    from engine.events import read_events

    if not events_file.is_file():
        return None
    counts = [e["cpu_threads"] for e in read_events(events_file) if e.get("kind") == "ready" and e.get("cpu_threads")]
    return counts[-1] if counts else None


def use_threads(choice: ThreadChoice) -> ThreadChoice:
    """Give torch the chosen count; the choice as applied. With OMP_NUM_THREADS, torch has set
    its count itself (and a program that trains in its own process may have set another since):
    that count is kept, and recorded."""
    import torch

    if choice.source == "OMP_NUM_THREADS":
        return replace(choice, threads=torch.get_num_threads())
    torch.set_num_threads(choice.threads)
    return choice
