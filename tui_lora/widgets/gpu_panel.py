"""The dashboard's machine panel: each GPU's load, memory, temperature and power, then CPU and RAM.

Compact by design: one GPU takes three lines, so two GPUs and the CPU/RAM line fit the 7 rows
the dashboard has at 80x24; the bars grow with the panel's width.

    0 NVIDIA GeForce RTX 4090  71°C 285/450 W
    GPU  ██████████░░░░░░░░░░   57%
    VRAM ████████░░░░░░░░ 12.3/24.0 GiB
    CPU 12%  RAM 10.2/31.3 GiB
"""

from __future__ import annotations

from textual.content import Content
from textual.events import Resize
from textual.widgets import Static

from tui_lora import system_stats
from tui_lora.i18n import t
from tui_lora.system_stats import GpuStats, SystemStats
from tui_lora.widgets.status_rows import pad_cells

# The monitor's notes that the catalogue translates; other notes (driver errors) are shown as
# NVML words them.
NOTE_KEYS: dict[str, str] = {
    system_stats.NOTE_NO_GPU: "dashboard.gpu.no_gpu",
    system_stats.NOTE_NOT_FOUND: "dashboard.gpu.not_found",
    system_stats.NOTE_DRIVER_NOT_LOADED: "dashboard.gpu.driver_not_loaded",
    system_stats.NOTE_NO_PYNVML: "dashboard.gpu.no_pynvml",
}

GiB = 1024**3
LABEL_WIDTH = 5  # "VRAM "
MAX_BAR_WIDTH = 40
MIN_BAR_WIDTH = 4
NARROWEST = 38  # the panel's width at 80x24, used until the first layout says otherwise
BAR_FULL, BAR_EMPTY = "█", "░"
# Colours from the theme, so the dark and light themes both read well.
STYLE_NAME = "bold"
STYLE_BAR = "$accent"
STYLE_BAR_HIGH = "$warning"  # memory nearly full: the next allocation may fail
STYLE_EMPTY = "$foreground 25%"
STYLE_NOTE = "$text-muted"
MEMORY_HIGH = 0.9


def gpu_panel_content(stats: SystemStats | None, width: int) -> Content:
    """What the panel shows for `stats` at `width` cells (None: nothing read yet)."""
    if stats is None:
        return Content.styled(t("dashboard.gpu.waiting"), STYLE_NOTE)
    # One value column for all GPUs, so their bars line up.
    value_width = max((Content(_gib_pair(gpu.memory_total, gpu.memory_total)).cell_length for gpu in stats.gpus), default=0)
    bar_width = max(MIN_BAR_WIDTH, min(MAX_BAR_WIDTH, width - LABEL_WIDTH - 1 - value_width))
    lines = [line for gpu in stats.gpus for line in _gpu_lines(gpu, width, bar_width, value_width)]
    if stats.gpu_note:
        lines.append(Content.styled(_note_text(stats.gpu_note), STYLE_NOTE))
    lines.append(_machine_line(stats))
    return Content("\n").join(line.truncate(width, ellipsis=True) for line in lines)


def _note_text(note: str) -> str:
    key = NOTE_KEYS.get(note)
    return t(key) if key else note  # driver errors are shown as NVML words them


def _gpu_lines(gpu: GpuStats, width: int, bar_width: int, value_width: int) -> list[Content]:
    """The name and readings, the utilisation bar, the memory bar."""
    utilisation = None if gpu.utilisation is None else gpu.utilisation / 100
    memory = gpu.memory_used / gpu.memory_total if gpu.memory_total else None
    if gpu.utilisation is None:
        utilisation_text = t("dashboard.gpu.unknown")
    else:
        utilisation_text = t("dashboard.gpu.percent", value=gpu.utilisation)
    memory_text = _gib_pair(gpu.memory_used, gpu.memory_total)
    memory_style = STYLE_BAR_HIGH if memory is not None and memory >= MEMORY_HIGH else STYLE_BAR
    return [
        _heading_line(gpu, width),
        _bar_line(t("dashboard.gpu.utilisation"), utilisation, _pad_left(utilisation_text, value_width), bar_width, STYLE_BAR),
        _bar_line(t("dashboard.gpu.memory"), memory, _pad_left(memory_text, value_width), bar_width, memory_style),
    ]


def _heading_line(gpu: GpuStats, width: int) -> Content:
    """`0 NVIDIA GeForce RTX 4090  71°C 285/450 W`: the name gives way to the readings."""
    readings = Content(" ".join(_readings(gpu)))
    room = width - readings.cell_length - 1 if readings else width
    name = Content.styled(f"{gpu.index} {gpu.name}", STYLE_NAME).truncate(max(room, 1), ellipsis=True)
    gap = " " * max(1, width - name.cell_length - readings.cell_length)
    return Content.assemble(name, gap, readings) if readings else name


def _readings(gpu: GpuStats) -> list[str]:
    """Temperature and power, each only where the GPU reports it."""
    readings = []
    if gpu.temperature is not None:
        readings.append(t("dashboard.gpu.temperature", value=gpu.temperature))
    if gpu.power is not None and gpu.power_limit is not None:
        readings.append(t("dashboard.gpu.power_limit", value=round(gpu.power), limit=round(gpu.power_limit)))
    elif gpu.power is not None:
        readings.append(t("dashboard.gpu.power", value=round(gpu.power)))
    return readings


def _bar_line(label: str, fraction: float | None, value: str, bar_width: int, style: str) -> Content:
    filled = 0 if fraction is None else round(max(0.0, min(1.0, fraction)) * bar_width)
    return Content.assemble(
        pad_cells(label, LABEL_WIDTH),
        (BAR_FULL * filled, style),
        (BAR_EMPTY * (bar_width - filled), STYLE_EMPTY),
        " ",
        value,
    )


def _pad_left(text: str, width: int) -> str:
    return " " * max(0, width - Content(text).cell_length) + text


def _machine_line(stats: SystemStats) -> Content:
    cpu = t("dashboard.gpu.percent", value=round(stats.cpu_percent))
    ram = _gib_pair(stats.ram_used, stats.ram_total)
    return Content.assemble(
        (t("dashboard.gpu.cpu"), STYLE_NAME), f" {cpu}  ", (t("dashboard.gpu.ram"), STYLE_NAME), f" {ram}"
    )


def _gib_pair(used: int, total: int) -> str:
    return t("dashboard.gpu.gib", used=f"{used / GiB:.1f}", total=f"{total / GiB:.1f}")


class GpuPanel(Static):
    """Shows the latest `SystemStats`; the dashboard calls `show` after each read."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(gpu_panel_content(None, NARROWEST), id=id, classes=classes)
        self.stats: SystemStats | None = None

    def show(self, stats: SystemStats) -> None:
        self.stats = stats
        self._refresh_content()

    def on_resize(self, event: Resize) -> None:
        self._refresh_content()

    def _refresh_content(self) -> None:
        self.update(gpu_panel_content(self.stats, self.size.width or NARROWEST))
