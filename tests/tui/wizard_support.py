"""Helpers for the wizard's tests: a simulated machine, an app in a private data folder, and
waiting until the app has nothing left to do."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from engine.checks.environment import GpuFacts, MachineFacts, NvidiaDriverFacts, TorchFacts

GiB = 1024**3


def simulated_facts(output_dir: Path | None = None) -> MachineFacts:
    """A 6 GB NVIDIA card on Linux: the check recommends batch size 1 and gradient
    checkpointing, which differ from the schema's defaults (so a test sees where they came from)."""
    return MachineFacts(
        python_version=(3, 11, 7),
        platform="linux",
        torch=TorchFacts(version="2.13.0", build="cuda", cuda_version="12.4", cuda_available=True, arch_list=("sm_75", "sm_86")),
        driver=NvidiaDriverFacts("ok", "550.54", "12.4"),
        gpus=(GpuFacts(0, "NVIDIA GeForce GTX 1660 SUPER", 6 * GiB, 5 * GiB, (7, 5)),),
        cpu_cores=8,
        ram_total=32 * GiB,
        ram_available=24 * GiB,
        swap_total=8 * GiB,
        swap_free=8 * GiB,
        disk_path=Path("/data"),
        disk_free=500 * GiB,
        packages={
            "diffusers": "0.42.1",
            "transformers": "5.24.0",
            "peft": "0.21.2",
            "accelerate": "1.15.0",
            "safetensors": "0.8.0",
            "bitsandbytes": None,
            "xformers": None,
            "prodigyopt": None,
        },
    )


def gpu(name: str, vram_gib: float, capability: tuple[int, int], index: int = 0) -> GpuFacts:
    """An idle NVIDIA card (the driver keeps a little of its memory)."""
    return GpuFacts(index, name, int(vram_gib * GiB), int((vram_gib - 0.4) * GiB), capability, uuid=f"GPU-{index:08d}-bbbb")


def machine_with(*gpus: GpuFacts, bitsandbytes: str | None = None) -> Callable[[Path | None], MachineFacts]:
    """A facts source for the app: the simulated machine with these GPUs instead of its one
    (none: no GPU at all), and bitsandbytes installed when a version is given."""

    def source(output_dir: Path | None = None) -> MachineFacts:
        facts = simulated_facts(output_dir)
        packages = {**facts.packages, "bitsandbytes": bitsandbytes}
        if not gpus:
            return replace(facts, gpus=(), packages=packages, driver=NvidiaDriverFacts("not_found"), torch=TorchFacts(version="2.13.0", build="cpu"))
        return replace(facts, gpus=gpus, packages=packages)

    return source


def alike(card: GpuFacts, count: int) -> tuple[GpuFacts, ...]:
    """`count` GPUs of the same model, indices 0.. count-1."""
    return tuple(replace(card, index=i, uuid=f"GPU-{i:08d}-bbbb") for i in range(count))


class Launches:
    """Stands in for starting the detached engine: records the run folders it was given."""

    def __init__(self) -> None:
        self.folders: list[Path] = []

    def __call__(self, folder: Path) -> int:
        self.folders.append(folder)
        return 0


def make_app(data_folder: Path, *, answers=None, launch=None, facts=simulated_facts):
    from tui_lora.app import WizardApp

    return WizardApp(answers=answers, data_folder=data_folder, facts_source=facts, launch=launch or Launches())


async def settle(pilot, delay: float = 0.05) -> None:
    """Wait for timers (debounced reads), workers and the screen updates they cause."""
    from textual.worker import WorkerCancelled, WorkerFailed

    for _ in range(3):
        await pilot.pause(delay)
        # A DirectoryTree's loader worker runs for as long as the tree is shown: not waited for.
        for worker in [w for w in pilot.app.workers if w.group != "_loader"]:
            # Cancelled: superseded by a newer one (exclusive workers); failed: the screen shows it.
            with contextlib.suppress(WorkerCancelled, WorkerFailed):
                await worker.wait()
    await pilot.pause()


async def type_text(pilot, text: str) -> None:
    await pilot.press(*text)


async def clear_and_type(pilot, text: str) -> None:
    """Replace the focused Input's text."""
    await pilot.press("end", "ctrl+u")
    await pilot.press(*text)


def screen_text(app) -> str:
    """What the terminal shows now, as text (rendered afresh, as a screenshot is)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def shown(app) -> str:
    """The screen's text with every run of spaces and line breaks made one space, so a phrase
    is found wherever the layout wrapped it."""
    return " ".join(screen_text(app).split())


def widget_text(widget) -> str:
    """What one widget shows (scrolled into view or not), as plain text."""
    return str(widget.render())


def demo_folder(tmp_path_factory) -> Path:
    """The demo's tiny model and dataset, built once per test session (create_demo returns at
    once when the folder is already built). Tests only read it."""
    from engine.demo import create_demo

    folder = tmp_path_factory.getbasetemp() / "wizard-demo"
    create_demo(folder)
    return folder


def sdxl_demo_folder(tmp_path_factory) -> Path:
    """`lora-wizard demo --sdxl`'s tiny SDXL-shaped model and dataset, built once per session."""
    from engine.demo import create_demo

    folder = tmp_path_factory.getbasetemp() / "wizard-demo-sdxl"
    create_demo(folder, sdxl=True)
    return folder


def flux_demo_folder(tmp_path_factory) -> Path:
    """`lora-wizard demo --flux`'s tiny FLUX.1 dev model in kohya's four files, built once per session."""
    from engine.demo import create_demo

    folder = tmp_path_factory.getbasetemp() / "wizard-demo-flux"
    create_demo(folder, flux=True)
    return folder


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (Textual's loop), through anyio's pytest plugin."""
    return "asyncio"
