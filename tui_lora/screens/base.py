"""What every wizard step shares: the step bar, a scrolling body, Back / Next, the footer.

A step reads its fields from the app's draft when it is composed and writes each accepted value
back at once (the app keeps the draft on disk). Next asks the step `ready_to_leave()`: a step with
a problem says so on the screen and stays.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static

from tui_lora.draft import STEPS, Draft
from tui_lora.host import WizardNode
from tui_lora.i18n import t
from tui_lora.widgets.bindings import translate_bindings
from tui_lora.widgets.step_bar import StepBar


class WizardScreen(WizardNode, Screen):
    STEP: ClassVar[str]
    # A body of text to read (not a form) takes the focus, so ↑↓ PgUp PgDn scroll it.
    BODY_FOCUSABLE: ClassVar[bool] = False
    BINDINGS = [
        Binding("escape", "back", "key.back"),
        Binding("ctrl+n", "next", "key.next"),
    ]

    def __init__(self) -> None:
        super().__init__(name=self.STEP)
        translate_bindings(self)
        self.landing, self.AUTO_FOCUS = self.AUTO_FOCUS, ""  # focused by on_mount instead

    @property
    def is_last_step(self) -> bool:
        return STEPS[-1] == self.STEP

    @property
    def draft(self) -> Draft:
        return self.wizard.draft

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        with VerticalScroll(id="body", can_focus=self.BODY_FOCUSABLE):
            yield from self.compose_body()
        yield Static("", id="screen-error", markup=False)
        with Horizontal(id="nav"):
            yield Button(t("nav.back"), id="back", compact=True)
            if not self.is_last_step:
                yield Button(t("nav.next"), id="next", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        # Landing on a step (reopening a draft) focuses its first field with the cursor after
        # the text, nothing selected: the next key must not replace a path. (Textual's
        # AUTO_FOCUS would select it; Tab into a field still does, to type over it.)
        for widget in self.query(self.landing or "#none"):
            if widget.focusable:
                if isinstance(widget, Input):
                    widget.select_on_focus = False
                widget.focus()
                break

    @on(Input.Blurred)
    def selects_on_focus_again(self, event: Input.Blurred) -> None:
        event.input.select_on_focus = True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # The last step has no Next: Save or Start instead.
        return not (action == "next" and self.is_last_step)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def changed(self) -> None:
        """A value was accepted into the draft: keep it."""
        self.wizard.save_draft()

    def show_screen_error(self, message: str | None) -> None:
        error = self.query_one("#screen-error", Static)
        error.update(message or "")
        error.set_class(bool(message), "visible")

    async def settle_checks(self) -> None:
        """Wait for the step's checks of what is typed now (a step with checks in a worker)."""

    def ready_to_leave(self) -> bool:
        """Whether Next may go on (the checks have settled); when not, the reason is on the screen."""
        return True

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        # Textual calls this after a step's own on_button_pressed (each class's handler runs).
        if event.button.id == "next":
            event.stop()
            await self.action_next()
        elif event.button.id == "back":
            event.stop()
            await self.action_back()

    async def action_next(self) -> None:
        # Awaited to the end, the next step shown: the keys pressed meanwhile wait for it.
        await self.settle_checks()
        if self.is_current and self.ready_to_leave():
            self.show_screen_error(None)
            await self.wizard.go_next(self.STEP)

    async def action_back(self) -> None:
        await self.wizard.go_back(self.STEP)
