"""The dashboard's GPU and sample panels, mounted in a tiny app and read back from what Textual
actually draws (the widget's rendered lines, with their colours)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from textual.app import App, ComposeResult
from textual.strip import Strip
from textual.widget import Widget

from tui_lora import system_stats
from tui_lora.system_stats import GpuStats, SystemStats
from tui_lora.widgets.gpu_panel import GpuPanel
from tui_lora.widgets.sample_panel import SamplePanel

pytestmark = pytest.mark.anyio

GiB = 1024**3
RED = (200, 30, 40)
BLUE = (20, 60, 220)

TWO_GPUS = SystemStats(
    gpus=(
        GpuStats(0, "NVIDIA GeForce RTX 4090", 57, int(12.3 * GiB), 24 * GiB, 71, 285.4, 450.0),
        GpuStats(1, "NVIDIA GeForce RTX 3050 Laptop GPU", None, int(3.9 * GiB), 4 * GiB, None, None, None),
    ),
    gpu_note=None,
    cpu_percent=12.4,
    ram_used=int(10.2 * GiB),
    ram_total=int(31.3 * GiB),
)
NO_GPU = SystemStats((), system_stats.NOTE_NO_GPU, 3.0, 2 * GiB, 16 * GiB)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual's loop


class PanelApp(App):
    """One panel, `width` x `height` cells, top left."""

    def __init__(self, panel: Widget, width: str, height: str) -> None:
        super().__init__()
        self.panel = panel
        self.panel_css = f"width: {width}; height: {height};"

    def compose(self) -> ComposeResult:
        yield self.panel

    def on_mount(self) -> None:
        self.panel.set_styles(self.panel_css)


def drawn(widget: Widget) -> list[Strip]:
    """The widget's lines as Textual draws them."""
    return [widget.render_line(y) for y in range(widget.size.height)]


def drawn_text(widget: Widget) -> list[str]:
    return [strip.text.rstrip() for strip in drawn(widget)]


def block_colours(widget: Widget) -> list[tuple[int, tuple[int, int, int], tuple[int, int, int]]]:
    """(column, foreground, background) of every half block drawn."""
    found = []
    for strip in drawn(widget):
        column = 0
        for segment in strip:
            if segment.text in ("▀", "▄") and segment.style and segment.style.color and segment.style.bgcolor:
                found.append((column, tuple(segment.style.color.triplet), tuple(segment.style.bgcolor.triplet)))
            column += segment.cell_length
    return found


# ---------------------------------------------------------------------------------------------
# GPU panel


async def test_gpu_panel_fits_two_gpus_in_the_smallest_dashboard():
    app = PanelApp(GpuPanel(), "38", "7")
    async with app.run_test(size=(80, 24)) as pilot:
        app.panel.show(TWO_GPUS)
        await pilot.pause()
        lines = drawn_text(app.panel)
    assert lines[0].startswith("0 NVIDIA GeForce RTX")
    assert lines[0].endswith("71°C 285/450 W")
    assert "57%" in lines[1] and "12.3/24.0 GiB" in lines[2]
    assert lines[3] == "1 NVIDIA GeForce RTX 3050 Laptop GPU"  # no temperature or power: none shown
    assert "n/a" in lines[4] and "3.9/4.0 GiB" in lines[5]
    assert "CPU 12%" in lines[6] and "RAM 10.2/31.3 GiB" in lines[6]
    assert "°C" not in lines[3] and " W" not in lines[3]
    assert all(len(line) <= 38 for line in lines)


async def test_gpu_panel_bars_show_the_share_and_grow_with_the_width():
    app = PanelApp(GpuPanel(), "50%", "7")
    async with app.run_test(size=(80, 24)) as pilot:
        app.panel.show(TWO_GPUS)
        await pilot.pause()
        narrow = drawn_text(app.panel)[1]
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        wide = drawn_text(app.panel)[1]
    for line in (narrow, wide):
        filled, empty = line.count("█"), line.count("░")
        assert abs(filled / (filled + empty) - 0.57) <= 1 / (filled + empty)
    assert wide.count("█") + wide.count("░") > narrow.count("█") + narrow.count("░")


async def test_gpu_panel_without_gpus_says_why():
    app = PanelApp(GpuPanel(), "38", "7")
    async with app.run_test(size=(80, 24)) as pilot:
        app.panel.show(NO_GPU)
        await pilot.pause()
        lines = [line for line in drawn_text(app.panel) if line]
    assert lines == ["no NVIDIA GPU", "CPU 3%  RAM 2.0/16.0 GiB"]


# ---------------------------------------------------------------------------------------------
# Sample panel


@pytest.fixture
def two_samples(tmp_path) -> list[tuple[Path, str]]:
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (512, 512), RED).save(red)
    Image.new("RGB", (512, 512), BLUE).save(blue)
    return [(red, "usu bear in a forest"), (blue, "usu bear on a beach")]


async def shown(pilot, panel: SamplePanel, step: int, images) -> list[str]:
    panel.show(step, images)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    return drawn_text(panel)


async def test_sample_panel_draws_each_image_in_its_colours_with_its_prompt(two_samples):
    app = PanelApp(SamplePanel(), "60", "14")
    async with app.run_test(size=(80, 24)) as pilot:
        lines = await shown(pilot, app.panel, 400, two_samples)
        blocks = block_colours(app.panel)
    assert lines[0] == "samples at step 400"
    assert any("usu bear in a forest" in line and "usu bear on a beach" in line for line in lines)
    # Side by side: the red image's half blocks left of the blue one's, both in the files' colours.
    red = [column for column, fg, bg in blocks if fg == bg == RED]
    blue = [column for column, fg, bg in blocks if fg == bg == BLUE]
    assert red and blue
    assert max(red) < min(blue)
    assert len(red) + len(blue) == len(blocks)


async def test_sample_panel_shows_as_many_as_fit_and_redraws_on_resize(two_samples):
    three = [*two_samples, (two_samples[0][0], "usu bear again")]
    app = PanelApp(SamplePanel(), "1fr", "1fr")
    async with app.run_test(size=(30, 12)) as pilot:
        lines = await shown(pilot, app.panel, 8, three)
        assert lines[0] == "samples at step 8 (2 of 3)"
        assert "usu bear again" not in "".join(lines)
        small = len(block_colours(app.panel))
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        lines = drawn_text(app.panel)
        large = block_colours(app.panel)
    assert lines[0] == "samples at step 8"
    assert "usu bear again" in "".join(lines)
    assert {fg for _, fg, _ in large} == {RED, BLUE}
    assert len(large) > 2 * small


async def test_sample_panel_notes_missing_and_broken_files(tmp_path, two_samples):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images = [(tmp_path / "missing.png", "a lost prompt"), (broken, "a broken prompt"), two_samples[0]]
    app = PanelApp(SamplePanel(), "78", "14")
    async with app.run_test(size=(80, 24)) as pilot:
        lines = await shown(pilot, app.panel, 3, images)
        blocks = block_colours(app.panel)
    text = "\n".join(lines)
    assert "cannot read missing.png" in text and "cannot read broken.png" in text
    assert "a lost prompt" in text and "a broken prompt" in text and "usu bear in a forest" in text
    assert {fg for _, fg, _ in blocks} == {RED}


async def test_sample_panel_empty_and_a_later_show_wins(two_samples):
    app = PanelApp(SamplePanel(), "60", "14")
    async with app.run_test(size=(80, 24)) as pilot:
        assert await shown(pilot, app.panel, 0, []) == ["no samples yet"] + [""] * 13
        # The files of step 5 load in a thread; step 6 (no prompts) comes first and must stay.
        app.panel.show(5, two_samples)
        lines = await shown(pilot, app.panel, 6, [])
    assert lines[0] == "no samples yet"
    assert not block_colours(app.panel)
