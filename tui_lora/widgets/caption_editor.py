"""The caption editor's parts: an image drawn in half blocks, a caption's tags as chips, and the
dataset's tag frequency table. Keyboard only:

    chips       ← → pick a tag · shift+← shift+→ move it · Delete / Backspace remove it
    table       ↑ ↓ pick a tag · Delete remove it from every caption · r replace it everywhere

They only show and report: the screen owns the captions and writes the files.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import RenderableType
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable

from tui_lora.i18n import t
from tui_lora.widgets.bindings import translate_bindings
from tui_lora.widgets.sample_panel import half_block_art, load_preview


class ImagePreview(Widget):
    """One image as half-block art, as large as the widget, keeping its shape."""

    DEFAULT_CSS = """
    ImagePreview { height: 1fr; min-height: 6; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.path: Path | None = None
        self.preview = None
        self._art: dict[tuple[int, int], RenderableType] = {}

    def show(self, path: Path | None) -> None:
        """Decode in a thread worker (a large photo takes tens of ms), then draw."""
        self.path = path
        if path is None:
            self._set(None, None)
            return

        def load() -> None:
            preview = load_preview(path, "")
            self.app.call_from_thread(self._set, path, preview)

        self.run_worker(load, thread=True, exclusive=True, group="caption-preview", exit_on_error=False)

    def _set(self, path: Path | None, preview) -> None:
        if path != self.path:
            return  # another image was picked meanwhile
        self.preview, self._art = preview, {}
        self.refresh()

    def render(self) -> RenderableType:
        if self.preview is None:
            return Text("")
        if self.preview.image is None:
            return Text(t("captions.unreadable", name=self.preview.path.name), style="dim")
        width, height = max(1, self.size.width), max(1, self.size.height)
        columns = max(1, min(width, int(height * 2 / self.preview.aspect)))
        rows = max(1, min(height, round(columns * self.preview.aspect / 2)))
        if (columns, rows) not in self._art:
            self._art[columns, rows] = half_block_art(self.preview.image, columns, rows)
        return self._art[columns, rows]


class TagChips(Widget, can_focus=True):
    """A caption's tags as chips; the one under the cursor is highlighted when focused."""

    DEFAULT_CSS = """
    TagChips { height: auto; min-height: 1; padding: 0 1; }
    TagChips:focus { background: $boost; }
    """
    BINDINGS = [
        Binding("left", "cursor(-1)", "key.captions.chip_previous", show=False),
        Binding("right", "cursor(1)", "key.captions.chip_next", show=False),
        Binding("home", "cursor_to(0)", show=False),
        Binding("end", "cursor_to(-1)", show=False),
        Binding("shift+left", "move(-1)", "key.captions.chip_move_left"),
        Binding("shift+right", "move(1)", "key.captions.chip_move_right"),
        Binding("delete,backspace", "remove", "key.captions.chip_remove"),
    ]

    class Changed(Message):
        """The user changed the tags (removed or moved one)."""

        def __init__(self, chips: TagChips, tags: list[str]) -> None:
            super().__init__()
            self.chips = chips
            self.tags = tags

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        translate_bindings(self)
        self.tags: list[str] = []
        self.cursor = 0

    def set_tags(self, tags: list[str], *, cursor: int | None = None) -> None:
        self.tags = list(tags)
        self.cursor = max(0, min(len(self.tags) - 1, self.cursor if cursor is None else cursor))
        self.refresh(layout=True)

    @property
    def current(self) -> str | None:
        return self.tags[self.cursor] if self.tags else None

    def render(self) -> RenderableType:
        if not self.tags:
            return Text(t("captions.no_tags"), style="dim")
        text = Text()
        for index, tag in enumerate(self.tags):
            selected = index == self.cursor and self.has_focus
            text.append(f" {tag} ", style="reverse bold" if selected else "reverse dim")
            text.append(" ")
        return text

    def action_cursor(self, step: int) -> None:
        if self.tags:
            self.cursor = (self.cursor + step) % len(self.tags)
            self.refresh()

    def action_cursor_to(self, index: int) -> None:
        if self.tags:
            self.cursor = index % len(self.tags)
            self.refresh()

    def action_move(self, step: int) -> None:
        target = self.cursor + step
        if not self.tags or not 0 <= target < len(self.tags):
            return
        self.tags[self.cursor], self.tags[target] = self.tags[target], self.tags[self.cursor]
        self.cursor = target
        self._changed()

    def action_remove(self) -> None:
        if not self.tags:
            return
        del self.tags[self.cursor]
        self.cursor = max(0, min(self.cursor, len(self.tags) - 1))
        self._changed()

    def _changed(self) -> None:
        self.refresh(layout=True)
        self.post_message(self.Changed(self, list(self.tags)))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()


class TagTable(DataTable):
    """Each tag of the dataset with the number of captions that hold it, most first."""

    BINDINGS = [
        Binding("delete", "remove_everywhere", "key.captions.remove_all"),
        Binding("r", "replace_everywhere", "key.captions.replace_all"),
    ]

    class RemoveEverywhere(Message):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

    class ReplaceEverywhere(Message):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        translate_bindings(self)

    def on_mount(self) -> None:
        self.add_column(t("captions.column_tag"), key="tag")
        self.add_column(t("captions.column_count"), key="count")

    def show(self, frequency: list[tuple[str, int]]) -> None:
        """Refill, keeping the cursor's row where it was."""
        row = self.cursor_row
        self.clear()
        for tag, count in frequency:
            self.add_row(tag, str(count), key=tag)
        if frequency:
            self.move_cursor(row=min(row, len(frequency) - 1))

    @property
    def current(self) -> str | None:
        if not self.row_count:
            return None
        return str(self.get_row_at(self.cursor_row)[0])

    def action_remove_everywhere(self) -> None:
        if self.current is not None:
            self.post_message(self.RemoveEverywhere(self.current))

    def action_replace_everywhere(self) -> None:
        if self.current is not None:
            self.post_message(self.ReplaceEverywhere(self.current))
