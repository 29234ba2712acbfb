"""A modal folder/file picker over a DirectoryTree, driven from the keyboard.

↑↓ move, → or Enter opens a folder, ← closes it, Enter on a file chooses it, `c` chooses the
highlighted entry (how a folder is chosen), Backspace goes up to the parent folder, Esc cancels.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Footer, Static

from tui_lora.i18n import t
from tui_lora.widgets.bindings import translate_bindings


class FilteredTree(DirectoryTree):
    """Folders, and files with one of `suffixes` (no files when `folders_only`)."""

    BINDINGS = [Binding("right", "open_node", show=False), Binding("left", "close_node", show=False)]

    def __init__(self, path: Path, *, suffixes: tuple[str, ...], folders_only: bool, **kwargs) -> None:
        self.suffixes = suffixes
        self.folders_only = folders_only
        super().__init__(path, **kwargs)

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        for path in paths:
            if path.name.startswith("."):
                continue
            if path.is_dir() or (not self.folders_only and (not self.suffixes or path.name.lower().endswith(self.suffixes))):
                yield path

    def action_open_node(self) -> None:
        node = self.cursor_node
        if node is not None and node.allow_expand and not node.is_expanded:
            node.expand()

    def action_close_node(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)


def starting_folder(value: str) -> Path:
    """The deepest existing folder of a typed path, else the working folder."""
    path = Path(value).expanduser() if value.strip() else Path.cwd()
    path = path if path.is_absolute() else Path.cwd() / path
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path.cwd()


class PathPicker(ModalScreen[Path | None]):
    BINDINGS = [
        Binding("c", "choose", "key.choose"),
        Binding("backspace", "parent", "key.parent"),
        Binding("escape", "cancel", "key.cancel"),
    ]

    def __init__(self, title: str, start: Path, *, suffixes: tuple[str, ...] = (), folders_only: bool = False) -> None:
        super().__init__()
        translate_bindings(self)
        self.title_text = title
        self.root = start
        self.suffixes = suffixes
        self.folders_only = folders_only

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static(self.title_text, classes="heading", markup=False)
            yield Static(t("picker.help"), classes="help", markup=False)
            yield FilteredTree(self.root, suffixes=self.suffixes, folders_only=self.folders_only, id="picker-tree")
        yield Footer()

    @property
    def tree(self) -> FilteredTree:
        return self.query_one(FilteredTree)

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(event.path)

    def action_choose(self) -> None:
        node = self.tree.cursor_node
        if node is not None and node.data is not None:
            self.dismiss(Path(node.data.path))

    def action_parent(self) -> None:
        parent = Path(self.tree.path).parent
        self.tree.path = parent

    def action_cancel(self) -> None:
        self.dismiss(None)
