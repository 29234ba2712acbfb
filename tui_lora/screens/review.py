"""Review: the answers file as it will be saved, the step count, the time and VRAM estimate;
save it where the user says (never over a file without asking), or Start training.

Everything shown comes from the engine: the answers validated by the schema, kohya's step
arithmetic (engine.plan), the run's checks and estimate (engine.checks.report). Start checks
the model and every image first (as `lora-wizard train` does), creates the run folder and starts
the engine as its own process, so training goes on when this terminal closes.
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Static
from textual.worker import Worker, WorkerState

from tui_lora.draft import answers_for_file
from tui_lora.i18n import counted, engine_text, t
from tui_lora.remedies import wizard_error, wizard_fix
from tui_lora.screens.base import WizardScreen
from tui_lora.widgets.confirm import ConfirmScreen
from tui_lora.widgets.form import FormRow
from tui_lora.widgets.path_input import PathInput
from tui_lora.widgets.status_rows import StatusRow, shown_path


def default_save_path(name: str | None) -> str:
    return f"{name or 'answers'}.toml"


class ReviewScreen(WizardScreen):
    STEP = "review"
    AUTO_FOCUS = "#save-path"
    BINDINGS = [
        Binding("ctrl+s", "save", "key.save"),
        Binding("ctrl+r", "start", "key.start"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.answers = None  # engine Answers, when the draft is valid

    def compose_body(self) -> ComposeResult:
        yield Static(t("review.intro"), classes="intro", markup=False)
        yield Static(t("review.planning"), id="plan", markup=False)
        yield Static("", id="estimate", markup=False)
        yield Vertical(id="run-items")
        save_path = self.draft.choices.get("save_path") or default_save_path(self.draft.get("output.name"))
        yield FormRow(
            t("review.save_to"),
            PathInput(save_path, suffixes=(".toml",), id="save-path"),
            Button(t("review.save"), id="save", compact=True),
            help=t("review.save_help"),
            id="row-save",
        )
        with Horizontal(classes="buttons"):
            yield Button(t("review.start"), id="start", variant="success", compact=True)
        yield Static("", id="start-status", markup=False)
        yield Static(t("review.file_heading"), classes="heading", markup=False)
        yield Static("", id="toml", markup=False)

    def on_mount(self) -> None:
        from engine.errors import UserError

        try:
            self.answers = self.draft.build_answers()
        except UserError as exc:
            self.query_one("#plan", Static).update(exc.message)
            self.query_one("#plan", Static).set_class(True, "fail")
            self.query_one("#save", Button).disabled = True
            self.query_one("#start", Button).disabled = True
            return
        self.show_file()
        self.plan_run(self.answers)

    def show_file(self) -> None:
        """The answers as they will be written at the save path shown."""
        from engine.config import answers_to_toml

        target = self.save_target(quiet=True)
        answers = answers_for_file(self.answers, target) if target else self.answers
        self.query_one("#toml", Static).update(answers_to_toml(answers))

    # ----------------------------------------------------------------------------- plan and estimate

    @work(thread=True, exclusive=True, group="review-plan", exit_on_error=False)
    def plan_run(self, answers) -> None:
        from engine.checks.report import run_checks
        from engine.errors import UserError
        from engine.plan import plan_training

        report = run_checks(answers, facts=self.wizard.machine_facts())
        try:
            plan = plan_training(answers, family_label=report.estimate.setup.cost.label, default_resolution=report.estimate.setup.cost.resolution)
        except UserError as exc:
            plan, problem = None, wizard_error(exc)
        else:
            problem = None
        self.app.call_from_thread(self.show_plan, plan, problem, report)

    def show_plan(self, plan, problem: str | None, report) -> None:
        plan_text = self.query_one("#plan", Static)
        if plan is None:
            plan_text.update(problem or "")
            plan_text.set_class(True, "fail")
        else:
            lines = [t("review.steps", steps=counted("steps", plan.total_steps), epochs=counted("epochs", plan.epochs)), *plan.breakdown()]
            plan_text.update("\n".join(lines))
        estimate = next((item for item in report.items if item.id == "run.estimate"), None)
        if estimate is not None:
            lines = [t("review.estimate", summary=estimate.summary)]
            if estimate.status != "ok" and estimate.remedy:  # tight or too large: what to change, not only that
                lines.append(t("review.estimate_remedy", remedy=estimate.remedy))
            self.query_one("#estimate", Static).update("\n".join(lines))
        problems = [item for item in report.items if item.group == "run" and item.status != "ok" and item.id != "run.estimate"]
        self.query_one("#run-items", Vertical).mount_all([StatusRow(i.status, engine_text(i.title), engine_text(i.summary), wizard_fix(i.key, engine_text(i.remedy) if i.remedy else None)) for i in problems])

    # ----------------------------------------------------------------------------- save

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "save-path":
            self.draft.choices["save_path"] = event.value.strip()
            self.changed()
            if self.answers is not None:
                self.show_file()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            event.stop()
            self.action_save()
        elif event.button.id == "start":
            event.stop()
            self.action_start()

    def save_target(self, *, quiet: bool = False) -> Path | None:
        text = self.query_one("#save-path", Input).value.strip()
        if not text:
            if not quiet:
                self.query_one("#row-save", FormRow).show_error(t("invalid.required"))
            return None
        path = Path(text).expanduser()
        return path if path.is_absolute() else Path.cwd() / path

    def action_save(self) -> None:
        if self.answers is None:
            return
        path = self.save_target()
        if path is None:
            return
        if path.exists():
            self.app.push_screen(ConfirmScreen(t("review.overwrite", path=shown_path(path))), lambda yes: self.save(path, overwrite=True) if yes else None)
        else:
            self.save(path, overwrite=False)

    def save(self, path: Path, *, overwrite: bool) -> None:
        from engine.config import save_answers
        from engine.errors import UserError

        row = self.query_one("#row-save", FormRow)
        if path.is_dir():
            row.show_error(t("review.is_folder"))
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_answers(answers_for_file(self.answers, path), path, overwrite=overwrite)
        except (UserError, OSError) as exc:
            row.show_error(exc.message if isinstance(exc, UserError) else str(exc))
            return
        row.show_error(None)
        row.show_help(t("review.saved", path=shown_path(path)))
        self.draft.choices["saved_to"] = str(path)
        self.changed()
        self.wizard.remember_output_dir(self.answers.output.dir)
        self.notify(t("review.saved_note", path=shown_path(path)))

    # ----------------------------------------------------------------------------- start

    def action_start(self) -> None:
        if self.answers is None:
            return
        self.query_one("#start", Button).disabled = True
        self.query_one("#start-status", Static).update(t("review.starting"))
        self.start_run(self.answers)

    @work(thread=True, exclusive=True, group="review-start", exit_on_error=False)
    def start_run(self, answers) -> Path:
        from engine.launch import start_run

        # The model files and every image are checked before any GPU time (as `train --detach`).
        folder, _ = start_run(answers, spawn=self.wizard.launch)
        return folder

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "review-start":
            return
        if event.state == WorkerState.SUCCESS:
            self.wizard.run_started(event.worker.result)
        elif event.state == WorkerState.ERROR:
            from engine.errors import UserError

            error = event.worker.error
            status = self.query_one("#start-status", Static)
            status.update(wizard_error(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
            status.set_class(True, "fail")
            self.query_one("#start", Button).disabled = False
