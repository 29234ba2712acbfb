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
        self.error: str | None = None
        self.note: str | None = None  # shown for a moment in place of the help or the error

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
        self.error = error
        self.set_class(error is not None, "invalid")
        self.show_message()

    def show_help(self, help: str) -> None:
        self.help = help
        self.show_message()

    def show_note(self, note: str | None) -> None:
        """A line about the field (the candidates of a path completion) until None clears it."""
        self.note = note
        self.show_message()

    def show_message(self) -> None:
        self.message.update(next(text for text in (self.note, self.error, self.help) if text is not None))

    @property
    def has_error(self) -> bool:
        return self.has_class("invalid")
