"""A form row: a label, its control, and one line under it that is the field's help, or the
reason its value was not accepted."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static


class FormRow(Vertical):
    def __init__(self, label: str, *controls: Widget, help: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.controls = controls
        self.help = help

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label(self.label, classes="label", markup=False)
            yield from self.controls
        yield Static(self.help, classes="help", markup=False)

    @property
    def message(self) -> Static:
        return self.query_one(".help", Static)

    def show_error(self, error: str | None) -> None:
        """Show why the value was not accepted (None: the help again)."""
        self.set_class(error is not None, "invalid")
        self.message.update(error if error is not None else self.help)

    def show_help(self, help: str) -> None:
        self.help = help
        if not self.has_class("invalid"):
            self.message.update(help)

    @property
    def has_error(self) -> bool:
        return self.has_class("invalid")
