"""Environment: the machine check's results and remedies, and the settings that fit it.

The facts are read in a worker (reading them imports torch, a second or more); the screen
shows a line meanwhile and the wizard stays usable. The recommendations (for the model family
the Model step found, SD 1.x before it has run) become the Parameters step's defaults where the
user has not chosen; with several GPUs they include one process per GPU.
"""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import LoadingIndicator, Static

from tui_lora.i18n import engine_text, t
from tui_lora.screens.base import WizardScreen
from tui_lora.widgets.status_rows import StatusRow

# The items' groups, in the order shown.
GROUPS = ("system", "gpu", "packages")


class EnvironmentScreen(WizardScreen):
    STEP = "environment"
    BODY_FOCUSABLE = True
    AUTO_FOCUS = "#body"

    def compose_body(self) -> ComposeResult:
        yield Static(t("environment.intro"), classes="intro", markup=False)
        yield Static(t("environment.checking"), id="env-status", classes="help", markup=False)
        yield LoadingIndicator(id="env-loading")
        yield Vertical(id="env-items")

    def on_mount(self) -> None:
        self.check_machine()

    @work(thread=True, exclusive=True, group="environment", exit_on_error=False)
    def check_machine(self) -> None:
        from engine.checks.report import run_checks

        facts = self.wizard.machine_facts()
        report = run_checks(facts=facts, family=self.draft.model_family)
        self.app.call_from_thread(self.show_report, report)

    def on_worker_state_changed(self, event) -> None:
        from textual.worker import WorkerState

        if event.worker.group == "environment" and event.state == WorkerState.ERROR:
            self.query_one("#env-loading").display = False
            self.query_one("#env-status", Static).update(t("environment.failed", error=str(event.worker.error)))

    def show_report(self, report) -> None:
        self.query_one("#env-loading").display = False
        counts = {status: sum(item.status == status for item in report.items) for status in ("ok", "warn", "fail")}
        self.query_one("#env-status", Static).update(t("environment.summary", **counts))
        items = self.query_one("#env-items", Vertical)
        rows = [StatusRow(item.status, engine_text(item.title), engine_text(item.summary), engine_text(item.remedy) if item.remedy else None) for item in report.items]
        rec = report.recommendations
        rows.append(Static(t("environment.recommended_heading"), classes="heading", markup=False))
        rows.append(
            Static(
                t(
                    "environment.recommended",
                    device=rec.device_name,
                    batch_size=rec.batch_size,
                    precision=rec.mixed_precision,
                    checkpointing=t("common.on") if rec.gradient_checkpointing else t("common.off"),
                ),
                markup=False,
            )
        )
        if rec.processes > 1:
            rows.append(Static(t("environment.processes", processes=rec.processes, batch_size=rec.batch_size, effective=rec.effective_batch), markup=False))
        items.mount_all(rows)
        self.wizard.apply_recommendations(rec)
