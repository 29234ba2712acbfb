"""The machine's checks, each with its remedy: Python, torch, CUDA, the driver, each GPU, the
processes, CPU, memory, disk and packages. Pure functions of a `MachineFacts`.
"""

from __future__ import annotations

from pathlib import Path

from engine.checks.costs import GiB
from engine.checks.environment import (
    MIN_PYTHON,
    MIN_TORCH,
    OPTIONAL_PACKAGES,
    REQUIRED_PACKAGES,
    GpuFacts,
    MachineFacts,
    gib,
    version_tuple,
)
from engine.checks.items import CheckItem
from engine.checks.recommend import Recommendations, recommend, training_gpu, visible_gpus
from engine.cpu_threads import threads_for
from engine.messages import Message

# Below this much free disk at the output folder, a run may not be able to save (LoRA files,
# resumable checkpoints with optimizer state, samples, a disk latent cache).
DISK_WARN = 5 * GiB
DISK_FAIL = 1 * GiB
MEMORY = Message("check.memory.title", "Memory")
CPU = Message("check.cpu.title", "CPU")
FREE_DISK = Message("check.disk.title", "Free disk")


# ---------------------------------------------------------------------------------------------
# Checks with remedies


def machine_items(facts: MachineFacts, recommendations: Recommendations | None = None) -> list[CheckItem]:
    """Every machine check, in display order."""
    recommendations = recommendations or recommend(facts)
    items = [_python_item(facts), _torch_item(facts), _cuda_item(facts), _driver_item(facts)]
    items += [_gpu_item(facts, gpu) for gpu in facts.gpus]
    items += _processes_items(facts, recommendations)
    items += [_cpu_item(facts, recommendations.device), _memory_item(facts, recommendations), disk_item(facts.disk_path, facts.disk_free, "disk", "system")]
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
        "cuda": Message("check.torch.cuda_build", "CUDA {version} build", version=torch.cuda_version),
        "rocm": Message("check.torch.rocm_build", "ROCm {version} build", version=torch.hip_version),
        "mps": Message("check.torch.mps_build", "CPU + Apple MPS build"),
        "cpu": Message("check.torch.cpu_build", "CPU-only build"),
    }[torch.build or "cpu"]
    summary = Message("check.torch.summary", "{version} ({build})", version=torch.version, build=build)
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
    title = Message("check.cuda.title", "GPU for training")
    if torch.cuda_available and facts.gpus:
        gpu = training_gpu(facts)
        problem = _arch_problem(torch.arch_list, gpu.compute_capability if gpu else None)
        if problem:
            return CheckItem("cuda", "system", title, "fail", problem, "install a torch build that supports this GPU (pytorch.org)")
        usable = Message("check.cuda.usable_on", "CUDA usable: trains on GPU {index}, {name}", index=gpu.index, name=gpu.name) if gpu else Message("check.cuda.usable", "CUDA usable")
        return CheckItem("cuda", "system", title, "ok", usable)
    if torch.mps_available:
        return CheckItem("cuda", "system", title, "warn", "Apple GPU (MPS): usable, not tested by lora-wizard", None)
    if facts.gpus and torch.build in ("cuda", "rocm"):
        return CheckItem("cuda", "system", title, "fail", "torch cannot use the GPU (torch.cuda.is_available() is False)", _cuda_remedy(facts))
    if facts.gpus:
        return CheckItem("cuda", "system", title, "fail", "the GPU is unused: torch has no CUDA", "install a CUDA build of torch (see the torch line)")
    return CheckItem(
        "cuda", "system", title, "warn", Message("check.cuda.none", "no GPU found: training runs on the CPU, very slowly (see the estimate)"),
        Message("check.cuda.none.fix", "use a machine with an NVIDIA GPU and its driver for real runs"),
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
    title = Message("check.nvidia_driver.title", "NVIDIA driver")
    if driver.status != "ok" and (facts.torch.build == "rocm" and facts.torch.cuda_available or facts.torch.mps_available):
        return CheckItem("nvidia_driver", "gpu", title, "ok", "not needed: torch uses the " + ("AMD GPU (ROCm)" if facts.torch.build == "rocm" else "Apple GPU"))
    if driver.status == "not_found":
        return CheckItem(
            "nvidia_driver", "gpu", title, "warn", Message("check.nvidia_driver.not_found", "not found (no NVIDIA GPU, or no driver installed)"),
            Message("check.nvidia_driver.not_found.fix", "on a machine with an NVIDIA GPU, install the NVIDIA driver; `nvidia-smi` must work"),
        )
    if driver.status == "error":
        return CheckItem("nvidia_driver", "gpu", title, "warn", f"not usable: {driver.error}", "reinstall the NVIDIA driver, then reboot")
    summary = Message("check.nvidia_driver.summary", "{version}, supports CUDA up to {cuda}", version=driver.version, cuda=driver.cuda_version)
    built = facts.torch.cuda_version
    if built and driver.cuda_version and version_tuple(driver.cuda_version) < version_tuple(built):
        return CheckItem(
            "nvidia_driver", "gpu", title, "fail", f"{summary}; torch was built for CUDA {built}",
            f"update the NVIDIA driver, or install torch for CUDA {driver.cuda_version}",
        )
    if not facts.gpus:
        return CheckItem(
            "nvidia_driver", "gpu", title, "warn", Message("check.nvidia_driver.no_gpu", "{summary}; no GPU found", summary=summary),
            Message("check.nvidia_driver.no_gpu.fix", "check that the GPU is seated and powered (`nvidia-smi`)"),
        )
    return CheckItem("nvidia_driver", "gpu", title, "ok", summary)


def _gpu_item(facts: MachineFacts, gpu: GpuFacts) -> CheckItem:
    capability = ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "?"
    bf16 = Message("check.gpu.bf16", "bf16") if gpu.supports_bf16 else Message("check.gpu.no_bf16", "no bf16")
    if gpu.vram_free is not None:
        summary = Message(
            "check.gpu.summary_free", "{name}: {total} VRAM, {free} free, compute {capability}, {bf16}",
            name=gpu.name, total=gib(gpu.vram_total), free=gib(gpu.vram_free), capability=capability, bf16=bf16,
        )
    else:
        summary = Message("check.gpu.summary", "{name}: {total} VRAM, compute {capability}, {bf16}", name=gpu.name, total=gib(gpu.vram_total), capability=capability, bf16=bf16)
    item_id, title = f"gpu.{gpu.index}", Message("check.gpu.title", "GPU {index}", index=gpu.index)
    if gpu.vram_free is not None and gpu.vram_free < gpu.vram_total * 0.5:
        used = gpu.vram_total - gpu.vram_free
        return CheckItem(
            item_id, "gpu", title, "warn", Message("check.gpu.busy", "{summary} ({used} in use)", summary=summary, used=gib(used)),
            Message("check.gpu.busy.fix", "other programs hold VRAM: close them (`nvidia-smi` lists them)"),
        )
    if gpu.compute_capability is not None and gpu.compute_capability < (7, 0):
        return CheckItem(
            item_id, "gpu", title, "warn", Message("check.gpu.old", "{summary}: old and slow for training", summary=summary),
            Message("check.gpu.old.fix", "a GPU of compute capability 7.0 or newer trains far faster"),
        )
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


def _cpu_item(facts: MachineFacts, device_kind: str) -> CheckItem:
    cores = Message("check.cpu.cores", "{cores} physical cores", cores=facts.cpu_cores)
    if facts.cpu_usable is None or facts.cpu_busy is None:
        return CheckItem("cpu", "system", CPU, "ok", cores)
    threads = threads_for(facts.cpu_usable, facts.cpu_busy)
    summary = Message(
        "check.cpu.threads", "{cores}; {usable} usable here, {busy} kept busy by other processes: torch would get {threads} threads",
        cores=cores, usable=facts.cpu_usable, busy=f"{facts.cpu_busy:.1f}", threads=threads,
    )
    if device_kind == "cpu" and threads < facts.cpu_usable:
        return CheckItem(
            "cpu", "system", CPU, "warn", summary,
            Message("check.cpu.shared.fix", "training on the CPU shares it with those processes; fewer threads keep it from slowing to a crawl, and [training] cpu_threads sets the count"),
        )
    return CheckItem("cpu", "system", CPU, "ok", summary)


def _memory_item(facts: MachineFacts, recommendations: Recommendations) -> CheckItem:
    what = Message("check.memory.paging_file", "paging file") if facts.platform == "win32" else Message("check.memory.swap", "swap")
    summary = Message(
        "check.memory.summary", "{ram} RAM ({available} available) + {swap} {what}",
        ram=gib(facts.ram_total), available=gib(facts.ram_available), swap=gib(facts.swap_total), what=what,
    )
    needed = recommendations.ram_swap_needed
    if facts.ram_total + facts.swap_total < needed:
        remedy = (
            Message("check.memory.paging_file.fix", "set the paging file so RAM + paging file reaches {needed} (System > Advanced > Performance > Virtual memory)", needed=gib(needed))
            if facts.platform == "win32"
            else Message("check.memory.swap.fix", "add swap so RAM + swap reaches {needed} ({source})", needed=gib(needed), source=recommendations.ram_swap_source)
        )
        return CheckItem("memory", "system", MEMORY, "warn", Message("check.memory.too_little", "{summary}; loading needs about {needed}", summary=summary, needed=gib(needed)), remedy)
    if facts.ram_available + facts.swap_free < needed:
        return CheckItem(
            "memory", "system", MEMORY, "warn", Message("check.memory.too_little_free", "{summary}; loading needs about {needed} free", summary=summary, needed=gib(needed)),
            Message("check.memory.too_little_free.fix", "close other programs before training"),
        )
    return CheckItem("memory", "system", MEMORY, "ok", summary)


def disk_item(path: Path, free: int | None, item_id: str, group: str) -> CheckItem:
    """Free disk where the run writes."""
    if free is None:
        return CheckItem(
            item_id, group, FREE_DISK, "warn", Message("check.disk.unknown", "cannot read the free space at {path}", path=str(path)),
            Message("check.disk.unknown.fix", "check the output folder's drive"),
        )
    summary = Message("check.disk.summary", "{free} free at {path}", free=gib(free), path=str(path))
    if free < DISK_FAIL:
        return CheckItem(item_id, group, FREE_DISK, "fail", summary, Message("check.disk.full.fix", "free some space or choose an output folder on another drive"))
    if free < DISK_WARN:
        return CheckItem(
            item_id, group, FREE_DISK, "warn", Message("check.disk.low", "{summary} (checkpoints and samples need a few GB)", summary=summary),
            Message("check.disk.low.fix", "free some space before a long run"),
        )
    return CheckItem(item_id, group, FREE_DISK, "ok", summary)


def _package_item(name: str, version: str | None, minimum: str) -> CheckItem:
    if version is None:
        return CheckItem(f"package.{name}", "packages", name, "fail", "not installed", f"pip install '{name}>={minimum}'")
    if version_tuple(version) < version_tuple(minimum):
        return CheckItem(f"package.{name}", "packages", name, "fail", f"{version} is older than {minimum}", f"pip install -U '{name}>={minimum}'")
    return CheckItem(f"package.{name}", "packages", name, "ok", version)


def _optional_package_item(name: str, version: str | None, use: str) -> CheckItem:
    summary = version if version is not None else f"not installed ({use})"
    return CheckItem(f"package.{name}", "packages", name, "ok", summary)
