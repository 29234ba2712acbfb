"""The dashboard's sample panel: the latest sample images side by side, each with its prompt.

Images are drawn as half-block art (rich-pixels: "▄" with the upper pixel as the background and
the lower one as the foreground, two pixel rows per terminal row), which every colour terminal
shows, over SSH too, and which Textual's Pilot and snapshot tests see exactly as a user does.

    samples at step 400
    ▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄ ▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄
    ▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄ ▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄▄
    usu bear, in th… usu bear on a…

The files are decoded in a thread worker: a 512x512 PNG takes ~15 ms, a 1024x1024 one 25-50 ms
(shared 2-core machine), so four SDXL samples would stall the screen. Drawing a decoded preview
takes 1-10 ms at dashboard sizes and is cached per size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from tui_lora.i18n import t

if TYPE_CHECKING:
    from PIL.Image import Image

# Decoded previews are kept this small: no terminal panel shows more pixels than this.
PREVIEW_PIXELS = 256
MIN_TILE_WIDTH = 10  # cells; narrower previews are not worth showing side by side
GAP = 1  # cells between two samples
STYLE_HEADING = "bold"
STYLE_PROMPT = "italic"
STYLE_NOTE = "dim"


@dataclass(frozen=True)
class SamplePreview:
    path: Path
    prompt: str
    image: Image | None  # RGB, at most PREVIEW_PIXELS a side; None when the file cannot be read

    @property
    def aspect(self) -> float:
        """Height / width (1 for an unreadable file, which takes one line)."""
        return self.image.height / self.image.width if self.image is not None else 1.0


def load_preview(path: Path, prompt: str) -> SamplePreview:
    """The image decoded and shrunk; a missing or broken file gives a preview without an image."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (PREVIEW_PIXELS, PREVIEW_PIXELS))  # JPEG: decode at a lower scale
            image = opened.convert("RGB")
        image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
    except (OSError, ValueError, Image.DecompressionBombError):
        return SamplePreview(Path(path), prompt, None)
    return SamplePreview(Path(path), prompt, image)


def half_block_art(image: Image, columns: int, rows: int) -> RenderableType:
    """`image` as `columns` x `rows` cells of half blocks (2 * rows pixel rows)."""
    from PIL.Image import Resampling
    from rich_pixels import Pixels

    # rich-pixels resizes with NEAREST; a filtered resize keeps small previews recognisable.
    return Pixels.from_image(image.resize((columns, rows * 2), Resampling.LANCZOS))


@dataclass(frozen=True)
class TileLayout:
    count: int  # samples shown, from the first
    width: int  # cells a tile, the prompt's width too
    image_rows: int  # terminal rows the tallest image may take


def tile_layout(previews: list[SamplePreview], width: int, height: int) -> TileLayout:
    """How many samples fit side by side in `width` x `height` cells, and how large: as many as
    fit at MIN_TILE_WIDTH, each as wide as its share of the width and the height allow (a cell is
    one pixel wide and two high, so a short panel gets narrower previews, not cropped ones)."""
    image_rows = max(1, height - 2)  # the heading above, the prompt below
    tallest = max(preview.aspect for preview in previews)
    count = min(len(previews), max(1, (width + GAP) // (MIN_TILE_WIDTH + GAP)))
    share = (width - GAP * (count - 1)) // count
    tile_width = max(1, min(share, max(MIN_TILE_WIDTH, int(image_rows * 2 / tallest))))
    return TileLayout(count, tile_width, image_rows)


def art_size(preview: SamplePreview, layout: TileLayout) -> tuple[int, int]:
    """(columns, rows) of a preview as large as its tile allows, keeping its shape; an unreadable
    file takes one line."""
    if preview.image is None:
        return layout.width, 1
    columns = max(1, min(layout.width, int(layout.image_rows * 2 / preview.aspect)))
    rows = max(1, min(layout.image_rows, round(columns * preview.aspect / 2)))
    return columns, rows


class SamplePanel(Widget):
    """Shows one step's sample images; the dashboard calls `show` on each `sample` event."""

    # Fill what the dashboard's layout gives: the previews are sized to it.
    DEFAULT_CSS = """
    SamplePanel {
        height: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.step: int | None = None
        self.previews: list[SamplePreview] = []
        self._generation = 0  # the latest `show`; a slower earlier load must not overwrite it
        self._art: dict[tuple[int, int, int], RenderableType] = {}  # by (sample, columns, rows)

    def show(self, step: int, images: list[tuple[Path, str]]) -> None:
        """The samples of `step`: (image file, its prompt) each; an empty list shows none.

        The files are read in a thread worker; the panel redraws when they are in
        (tests: `await app.workers.wait_for_complete()`, then `await pilot.pause()`)."""
        self._generation += 1
        generation = self._generation
        if not images:
            self._set_previews(generation, step, [])
            return

        def load() -> None:
            previews = [load_preview(Path(path), prompt) for path, prompt in images]
            self.app.call_from_thread(self._set_previews, generation, step, previews)

        self.run_worker(load, thread=True, group="sample-previews", name="load sample previews", exit_on_error=False)

    def _set_previews(self, generation: int, step: int, previews: list[SamplePreview]) -> None:
        if generation != self._generation:
            return
        self.step, self.previews, self._art = step, previews, {}
        self.refresh()

    def render(self) -> RenderableType:
        if not self.previews:
            return Text(t("dashboard.samples.empty"), style=STYLE_NOTE)
        layout = tile_layout(self.previews, self.size.width, self.size.height)
        shown = self.previews[: layout.count]
        # Every prompt on the same line, under the tallest image.
        art_rows = max(art_size(preview, layout)[1] for preview in shown)
        grid = Table.grid(padding=(0, GAP, 0, 0))
        for _ in shown:
            grid.add_column(width=layout.width, no_wrap=True)
        grid.add_row(*(self._tile(index, layout, art_rows) for index in range(len(shown))))
        return Group(Text(self._heading(len(shown)), style=STYLE_HEADING, no_wrap=True, overflow="ellipsis"), grid)

    def _heading(self, shown: int) -> str:
        if shown < len(self.previews):
            return t("dashboard.samples.heading_some", step=self.step, shown=shown, count=len(self.previews))
        return t("dashboard.samples.heading", step=self.step)

    def _tile(self, index: int, layout: TileLayout, art_rows: int) -> RenderableType:
        """The image (or why there is none), blank lines down to `art_rows`, the prompt."""
        preview = self.previews[index]
        columns, rows = art_size(preview, layout)
        if preview.image is None:
            note = t("dashboard.samples.unreadable", name=preview.path.name)
            art: RenderableType = Text(note, style=STYLE_NOTE, no_wrap=True, overflow="ellipsis")
        else:
            if (index, columns, rows) not in self._art:
                self._art[index, columns, rows] = half_block_art(preview.image, columns, rows)
            art = self._art[index, columns, rows]
        padding = [Text("")] * (art_rows - rows)
        return Group(art, *padding, Text(preview.prompt, style=STYLE_PROMPT, no_wrap=True, overflow="ellipsis"))
