"""How a run ended. Finished: the LoRA, what to type in AUTOMATIC1111, a copy into a web UI's
LoRA folder, and the headless command. Failed, stopped or gone: the error, its remedy and the
resume command (r resumes it here)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.events import Failed, StoppedOnRequest
from engine.run_folder import RunState
from tui_lora.finish import FinishedLora, format_size
from tui_lora.host import WizardNode
from tui_lora.i18n import counted, t
from tui_lora.run_view import RunView, format_duration
from tui_lora.widgets.bindings import translate_bindings
from tui_lora.widgets.confirm import ConfirmScreen
from tui_lora.widgets.path_input import PathInput
from tui_lora.widgets.status_rows import shown_path
from tui_lora.widgets.step_bar import step_bar_text


def run_summary(view: RunView) -> str:
    smoothed = view.smoothed_losses()
    return t(
        "finish.summary",
        steps=counted("steps", view.step),
        epochs=counted("epochs", view.epochs),
        time=format_duration(view.elapsed_seconds(view.attempts[-1].last if view.attempts else 0.0)),
        loss=f"{smoothed[-1]:.4f}" if smoothed else "-",
    )


def leave_run_ending(screen: FinishScreen | FailureScreen) -> None:
    """q, as on the dashboard it follows: back to Home when the run was opened from Home; out
    of the app when the app is `lora-wizard attach RUN`."""
    screen.wizard.leave_dashboard(screen.run_folder, still_running=False)


class FinishScreen(WizardNode, Screen):
    BINDINGS = [
        Binding("w", "focus_copy", "key.finish.copy"),
        Binding("h", "home", "key.home"),
        Binding("escape", "leave_field_or_home", "key.back", show=False),
        Binding("q", "leave", "key.quit", show=False),  # the footer shows Ctrl+Q
    ]

    def __init__(self, run_folder: Path, finished: FinishedLora, summary: str) -> None:
        super().__init__(name="finished")
        translate_bindings(self)
        self.run_folder = run_folder
        self.finished = finished
        self.summary = summary

    def compose(self) -> ComposeResult:
        lora = self.finished
        yield Static(step_bar_text(None, t("finish.title", name=lora.name)), id="step-bar")
        with VerticalScroll(id="body"):
            yield Static(t("finish.ready"), classes="heading", markup=False)
            yield Static(t("finish.file", path=shown_path(lora.lora), size=format_size(lora.size)), markup=False)
            yield Static(self.summary, classes="help", markup=False)
            yield Static(t("finish.webui"), classes="heading", markup=False)
            yield Static(f"  {lora.prompt}", id="lora-prompt", classes="command", markup=False)
            yield Static(self.trigger_help(), classes="help", markup=False)
            yield Static(t("finish.copy_heading"), classes="heading", markup=False)
            with Horizontal(classes="copy-row"):
                yield PathInput(self.wizard.settings.webui_dir or "", folders_only=True, id="webui",
                                placeholder=t("finish.copy_placeholder"))
            yield Static(t("finish.copy_help"), id="copy-note", classes="help", markup=False)
            yield Static(t("finish.headless"), classes="heading", markup=False)
            yield Static(f"  {lora.headless_command(shown_path)}", classes="command", markup=False)
            yield Static(t("finish.headless_help"), classes="help", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#body").focus()

    def trigger_help(self) -> str:
        lora = self.finished
        if not lora.instance_prompts:
            return t("finish.weight_help", name=lora.name)
        trigger = t("finish.trigger", prompt=", ".join(lora.instance_prompts))
        if lora.class_prompts:
            trigger += " " + t("finish.class", classes=", ".join(lora.class_prompts))
        return f"{trigger} {t('finish.weight_help', name=lora.name)}"

    def action_focus_copy(self) -> None:
        self.query_one("#webui", PathInput).focus()

    def action_home(self) -> None:
        self.wizard.go_to("home")

    def action_leave(self) -> None:
        leave_run_ending(self)

    def action_leave_field_or_home(self) -> None:
        """Esc in the copy field gives the keys back to the screen (w, h, q); else Home."""
        if isinstance(self.focused, PathInput):
            self.query_one("#body").focus()
        else:
            self.action_home()

    def on_input_submitted(self, event: PathInput.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.copy_lora(Path(event.value.strip()).expanduser(), overwrite=False)

    @work(thread=True, exclusive=True, group="copy", exit_on_error=False)
    def copy_lora(self, webui: Path, overwrite: bool) -> None:
        from engine.errors import UserError
        from tui_lora.finish import copy_lora

        try:
            target = copy_lora(self.finished.lora, webui, overwrite=overwrite)
        except FileExistsError as exists:
            self.app.call_from_thread(self.ask_overwrite, webui, Path(str(exists)))
            return
        except (UserError, OSError) as exc:
            message = exc.render() if isinstance(exc, UserError) else f"{webui}: {exc.strerror or exc}"
            self.app.call_from_thread(self.copy_done, None, message)
            return
        self.app.call_from_thread(self.copy_done, target, None, webui)

    def ask_overwrite(self, webui: Path, target: Path) -> None:
        def answered(overwrite: bool | None) -> None:
            if overwrite:
                self.copy_lora(webui, True)
            else:
                self.copy_done(None, t("finish.kept", path=str(target)))
                self.query_one("#body").focus()  # nothing to fix in the field

        self.app.push_screen(ConfirmScreen(t("finish.overwrite", path=str(target))), answered)

    def copy_done(self, target: Path | None, problem: str | None, webui: Path | None = None) -> None:
        note = self.query_one("#copy-note", Static)
        note.set_class(problem is not None, "fail")
        note.update(problem if problem is not None else t("finish.copied", path=str(target)))
        if webui is not None:
            self.wizard.remember_webui_dir(webui)
        if target is not None:  # copied: the screen's keys (h, w, q) work again at once
            self.query_one("#body").focus()


class FailureScreen(WizardNode, Screen):
    """The end of a run that did not finish: failed, stopped on request, or gone without a word."""

    BINDINGS = [
        Binding("r", "resume", "key.resume"),
        Binding("h", "home", "key.home"),
        Binding("q", "leave", "key.quit", show=False),  # the footer shows Ctrl+Q
    ]

    def __init__(self, run_folder: Path, view: RunView) -> None:
        super().__init__(name="failed")
        translate_bindings(self)
        self.run_folder = run_folder
        self.view = view

    def compose(self) -> ComposeResult:
        view, final = self.view, self.view.final
        state = view.state if view.events_seen else RunState.NOT_STARTED
        yield Static(step_bar_text(None, t("failure.title." + state.key, name=self.run_folder.name.removesuffix(".run"))),
                     id="step-bar")
        with VerticalScroll(id="body"):
            yield Static(t("failure.at", step=view.step, total=view.total_steps or "?"), classes="heading", markup=False)
            message = (final.message if isinstance(final, Failed) else "") or (
                t("failure.interrupted", reason=final.reason) if isinstance(final, StoppedOnRequest) else t("failure.message." + state.key)
            )
            yield Static(Text(message), id="failure-message", classes="fail" if state != RunState.INTERRUPTED else "")
            remedy = (final.remedy if isinstance(final, Failed) else "") or self.default_remedy(state)
            if remedy:
                yield Static(t("failure.remedy"), classes="heading", markup=False)
                yield Static(Text(remedy), id="failure-remedy")
            error_log = self.run_folder / "error.log"
            if error_log.is_file():
                yield Static(t("failure.error_log", path=shown_path(error_log)), classes="help", markup=False)
            if view.checkpoints:
                yield Static(t("failure.resume_heading", step=view.checkpoints[-1][0]), classes="heading", markup=False)
            else:
                yield Static(t("failure.resume_start"), classes="heading", markup=False)
            yield Static(f"  lora-wizard resume {shown_path(self.run_folder)}", id="resume-command", classes="command", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#body").focus()

    def default_remedy(self, state: RunState) -> str:
        if state == RunState.NOT_STARTED:
            return t("failure.remedy_not_started", path=str(self.run_folder / "engine.log"))
        if state == RunState.STOPPED_UNEXPECTEDLY:
            return t("failure.remedy_unexpected", path=str(self.run_folder / "engine.log"))
        return ""

    def action_resume(self) -> None:
        self.wizard.leave_for([["resume", str(self.run_folder), "--detach"], ["attach", str(self.run_folder)]])

    def action_home(self) -> None:
        self.wizard.go_to("home")

    def action_leave(self) -> None:
        leave_run_ending(self)
