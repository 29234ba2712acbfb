"""After Start: where the run lives and how to follow it. Training runs as its own process, so
quitting here (or losing the SSH connection) does not stop it."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui_lora.i18n import t
from tui_lora.widgets.bindings import translate_bindings
from tui_lora.widgets.status_rows import shown_path
from tui_lora.widgets.step_bar import StepBar


class StartedScreen(Screen):
    BINDINGS = [
        Binding("a,enter", "attach", "key.attach"),
        Binding("h", "home", "key.home"),
        Binding("q", "app.quit", "key.quit", show=False),  # Ctrl+Q works too, and the footer shows it
    ]

    def __init__(self, run_folder: Path, answers_file: str | None = None) -> None:
        super().__init__(name="started")
        translate_bindings(self)
        self.run_folder = run_folder
        self.answers_file = answers_file

    def compose(self) -> ComposeResult:
        yield StepBar(title=t("started.title"))
        with Vertical(id="body"):
            yield Static(t("started.running"), classes="heading", markup=False)
            yield Static(t("started.folder", folder=shown_path(self.run_folder)), markup=False)
            yield Static(t("started.detached"), classes="help", markup=False)
            yield Static(t("started.follow"), markup=False)
            yield Static(f"  lora-wizard attach {self.run_folder}", classes="command", markup=False)
            if self.answers_file:
                yield Static(t("started.headless"), markup=False)
                yield Static(f"  lora-wizard train {self.answers_file}", classes="command", markup=False)
        yield Footer()

    def action_attach(self) -> None:
        self.app.leave_for([["attach", str(self.run_folder)]])

    def action_home(self) -> None:
        self.app.go_to("home")
