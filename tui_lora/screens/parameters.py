"""Parameters: how to train, each field with a one-line help and checked as it is typed.

A value the answers schema refuses is shown in red under its field with the reason, and is not
taken: the draft keeps the last accepted value, and Next stays here until every field is right.
Defaults come from the environment check (batch size, gradient checkpointing, latent caching)
where the user has not chosen; precision stays `auto`, which the engine resolves on the machine
that trains, so a file written here still fits a GPU machine it is copied to.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.widgets import Checkbox, Input, Select, Static

from tui_lora.fields import PARAMETER_GROUPS, FieldSpec, accept, shown_value
from tui_lora.i18n import has_message, t
from tui_lora.screens.base import WizardScreen
from tui_lora.widgets.form import FormRow
from tui_lora.widgets.path_input import PathInput

SPECS = {spec.key: spec for group in PARAMETER_GROUPS.values() for spec in group}


def control_id(key: str) -> str:
    return "field-" + key.replace(".", "-")


def key_of(widget_id: str | None) -> str:
    """`field-training-batch_size` -> `training.batch_size`."""
    return (widget_id or "").removeprefix("field-").replace("-", ".", 1)


def choice_label(spec: FieldSpec, value: str) -> str:
    message = f"choice.{spec.key}.{value}"
    return t(message) if has_message(message) else value


class ParametersScreen(WizardScreen):
    STEP = "parameters"
    AUTO_FOCUS = "#field-training-batch_size"

    def __init__(self) -> None:
        super().__init__()
        self.invalid: set[str] = set()

    def compose_body(self) -> ComposeResult:
        yield Static(t("parameters.intro"), classes="intro", markup=False)
        yield Static(t("parameters.defaults_pending"), id="defaults-note", classes="help", markup=False)
        for group, specs in PARAMETER_GROUPS.items():
            yield Static(t(f"parameters.group.{group}"), classes="heading", markup=False)
            for spec in specs:
                yield FormRow(spec.label, self.control(spec), help=spec.help, id="row-" + control_id(spec.key))

    def control(self, spec: FieldSpec):
        value = self.draft.get(spec.key)
        if spec.kind == "choice":
            options = [(choice_label(spec, choice), choice) for choice in spec.choices]
            return Select(options, value=value if value in spec.choices else spec.choices[0], allow_blank=False, compact=True, id=control_id(spec.key))
        if spec.kind == "bool":
            return Checkbox(t("common.enabled"), bool(value), compact=True, id=control_id(spec.key))
        if spec.kind == "path":
            return PathInput(shown_value(value), folders_only=True, id=control_id(spec.key))
        return Input(shown_value(value), compact=True, id=control_id(spec.key), placeholder=t("parameters.empty_default") if spec.optional else "")

    def on_mount(self) -> None:
        if self.app.recommendations is not None:
            self.show_recommendations(self.app.recommendations)
        else:
            self.read_machine()

    @work(thread=True, exclusive=True, group="parameters-machine", exit_on_error=False)
    def read_machine(self) -> None:
        from engine.checks.environment import recommend

        recommendations = recommend(self.app.machine_facts())
        self.app.call_from_thread(self.apply_machine, recommendations)

    def apply_machine(self, recommendations) -> None:
        for key in self.app.apply_recommendations(recommendations):
            self.show_draft_value(key)
        self.show_recommendations(recommendations)

    def show_recommendations(self, rec) -> None:
        self.query_one("#defaults-note", Static).update(
            t(
                "parameters.defaults_from_machine",
                device=rec.device_name,
                batch_size=rec.batch_size,
                checkpointing=t("common.on") if rec.gradient_checkpointing else t("common.off"),
            )
        )
        precision_row = self.query_one("#row-" + control_id("training.mixed_precision"), FormRow)
        precision_row.show_help(t("field.training.mixed_precision.help_machine", precision=rec.mixed_precision))

    def show_draft_value(self, key: str) -> None:
        """Show a value the app set in the draft (a machine default)."""
        if key not in SPECS:
            return
        widget = self.query_one("#" + control_id(key))
        value = self.draft.get(key)
        if isinstance(widget, Checkbox):
            widget.value = bool(value)
        elif isinstance(widget, Select):
            widget.value = value
        elif isinstance(widget, Input):
            widget.value = shown_value(value)

    def take(self, key: str, raw: Any) -> None:
        spec = SPECS[key]
        row = self.query_one("#row-" + control_id(key), FormRow)
        value, error = accept(spec, raw, dict(self.draft.answers.get(spec.section, {})))
        if error is not None:
            self.invalid.add(key)
            row.show_error(error)
            return
        self.invalid.discard(key)
        row.show_error(None)
        if value != self.draft.get(key):
            self.draft.set(key, value)
            self.changed()

    @on(Input.Changed)
    def input_changed(self, event: Input.Changed) -> None:
        key = key_of(event.input.id)
        if key in SPECS and (event.value.strip() != shown_value(self.draft.get(key)) or key in self.invalid):
            self.take(key, event.value)

    @on(Select.Changed)
    def select_changed(self, event: Select.Changed) -> None:
        key = key_of(event.select.id)
        if key in SPECS and event.value != self.draft.get(key):
            self.take(key, event.value)

    @on(Checkbox.Changed)
    def checkbox_changed(self, event: Checkbox.Changed) -> None:
        key = key_of(event.checkbox.id)
        if key in SPECS and event.value != self.draft.get(key):
            self.take(key, event.value)

    def ready_to_leave(self) -> bool:
        if not self.draft.get("output.name"):
            self.invalid.add("output.name")
            self.query_one("#row-" + control_id("output.name"), FormRow).show_error(t("invalid.required"))
        if self.invalid:
            names = ", ".join(SPECS[key].label for key in sorted(self.invalid, key=list(SPECS).index))
            self.show_screen_error(t("parameters.fix_fields", fields=names))
            first = sorted(self.invalid, key=list(SPECS).index)[0]
            self.query_one("#" + control_id(first)).focus()
            return False
        return True
