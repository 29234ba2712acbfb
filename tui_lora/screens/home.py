"""Home: the runs found under the output folders used before, and a new LoRA.

A run can be attached (its dashboard), resumed (interrupted, failed or stopped unexpectedly), or
opened (its answers become the start of a new LoRA). Resume leaves the wizard and runs
`lora-wizard resume --detach` then `lora-wizard attach` (the dashboard again) in this terminal.
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Static

from engine.run_folder import RunState
from tui_lora.host import WizardNode
from tui_lora.i18n import t
from tui_lora.widgets.bindings import translate_bindings
from tui_lora.widgets.status_rows import shown_path
from tui_lora.widgets.step_bar import StepBar


def list_runs(folders: list[str]) -> list[tuple[Path, RunState, str]]:
    """(run folder, state, progress) of every run under `folders`, newest first."""
    from engine.run_folder import find_runs, run_status

    runs: dict[Path, tuple[RunState, str]] = {}
    for folder in folders:
        for run in find_runs(Path(folder)):
            status = run_status(run)
            runs[run.resolve()] = (status.state, status.progress)
    ordered = sorted(runs, key=lambda run: (run / "events.jsonl").stat().st_mtime if (run / "events.jsonl").exists() else 0, reverse=True)
    return [(run, *runs[run]) for run in ordered]


class HomeScreen(WizardNode, Screen):
    STEP = "home"
    BINDINGS = [
        Binding("n", "new", "key.new"),
        Binding("c", "continue_draft", "key.continue", show=False),
        Binding("a", "attach", "key.attach"),
        Binding("r", "resume", "key.resume"),
        Binding("o", "open", "key.open"),
    ]

    def __init__(self) -> None:
        super().__init__(name=self.STEP)
        translate_bindings(self)
        self.runs: list[tuple[Path, str, str]] = []

    def compose(self) -> ComposeResult:
        yield StepBar(title=t("home.title"))
        with Vertical(id="body"):
            yield Static(t("home.intro"), classes="intro", markup=False)
            with Horizontal(classes="buttons"):
                yield Button(t("home.new"), id="new", variant="primary", compact=True)
                if self.wizard.has_draft_in_progress():
                    yield Button(t("home.continue", step=t("step." + self.wizard.draft.last_step)), id="continue", compact=True)
            yield Static(t("home.runs"), classes="heading", markup=False)
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
            yield Static(t("home.looking"), id="runs-note", classes="help", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(t("home.column.state"), t("home.column.steps"), t("home.column.run"))
        self.load_runs()

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def load_runs(self) -> None:
        runs = list_runs(self.wizard.settings.output_dirs)
        self.app.call_from_thread(self.show_runs, runs)

    def show_runs(self, runs: list[tuple[Path, str, str]]) -> None:
        self.runs = runs
        table = self.query_one(DataTable)
        table.clear()
        for run, state, progress in runs:
            table.add_row(t("state." + state.key), progress, shown_path(run), key=str(run))
        note = self.query_one("#runs-note", Static)
        if runs:
            note.update(t("home.runs_help"))
        else:
            note.update(t("home.no_runs"))

    def selected_run(self) -> tuple[Path, str, str] | None:
        table = self.query_one(DataTable)
        if not self.runs or table.cursor_row is None or not 0 <= table.cursor_row < len(self.runs):
            self.notify(t("home.pick_a_run"), severity="warning")
            return None
        return self.runs[table.cursor_row]

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "new":
            await self.action_new()
        elif event.button.id == "continue":
            await self.action_continue_draft()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        await self.action_attach()

    # Awaited until the next screen is shown: the keys pressed meanwhile are for that screen.
    async def action_new(self) -> None:
        await self.wizard.new_lora()

    async def action_continue_draft(self) -> None:
        if self.wizard.has_draft_in_progress():
            await self.wizard.go_to(self.wizard.draft.last_step)

    async def action_attach(self) -> None:
        selected = self.selected_run()
        if selected:
            await self.wizard.open_dashboard(selected[0])

    def action_resume(self) -> None:
        selected = self.selected_run()
        if not selected:
            return
        run, state, _ = selected
        if not state.resumable:
            self.notify(t("home.not_resumable", state=t("state." + state.key)), severity="warning")
            return
        self.wizard.leave_for([["resume", str(run), "--detach"], ["attach", str(run)]])

    def action_open(self) -> None:
        selected = self.selected_run()
        if selected:
            self.wizard.open_run_answers(selected[0])
