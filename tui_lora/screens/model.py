"""Base model: the path (typed with completion, or picked), what it is, its tokenizer, and an
optional VAE to use in place of the model's own (`[model] vae`).

What the model is (SD 1.x / 2.x / SDXL, diffusers folder or single file, epsilon or
v-prediction) and whether its tokenizer is found are read by the engine from headers and configs
only, in a worker, each time the path settles. The family is kept in the draft, and its defaults
(SDXL: 1024 px, the UNet only, its learning rates; SD 1.x/2.x: the schema's) replace those of
the previous model wherever the user has not typed a value. A VAE path is looked at as cheaply
(a folder's config, a file's header) when it settles.
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Button, Input, Select, Static

from tui_lora.i18n import t
from tui_lora.screens.base import WizardScreen
from tui_lora.widgets.form import FormRow
from tui_lora.widgets.path_input import PathInput
from tui_lora.widgets.path_picker import PathPicker, starting_folder
from tui_lora.widgets.status_rows import shown_path

MODEL_SUFFIXES = (".safetensors", ".ckpt")
# What engine/families/vae.py reads besides a folder.
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
PREDICTIONS = ("auto", "epsilon", "v_prediction")
# Wait this long after the last key before reading the model.
SETTLE_SECONDS = 0.3


def read_model_info(path: str, tokenizer: str | None):
    """(engine ModelInfo, None), or (None, why the model cannot be used)."""
    from engine.errors import UserError
    from engine.families import inspect_base_model

    try:
        return inspect_base_model(Path(path).expanduser(), Path(tokenizer).expanduser() if tokenizer else None), None
    except UserError as exc:
        return None, exc.render()


def vae_problem(path: str) -> str | None:
    """Why `[model] vae` cannot be used (nothing there, no VAE in it), or None."""
    from engine.errors import UserError
    from engine.families.vae import check_vae_path

    try:
        check_vae_path(Path(path).expanduser())
    except UserError as exc:
        return exc.message
    return None


class ModelScreen(WizardScreen):
    STEP = "model"
    AUTO_FOCUS = "#model-path"
    BINDINGS = [Binding("ctrl+o", "browse", "key.browse")]

    def __init__(self) -> None:
        super().__init__()
        self.info = None  # engine ModelInfo of the path, when readable
        self.problem: str | None = None  # why it is not usable
        self.info_for: tuple[str, str | None] | None = None  # the paths `info` was read from
        self._timer = None
        self._vae_timer = None
        self.vae_refused = False  # the screen's error is the VAE's (Next refused it)

    def compose_body(self) -> ComposeResult:
        yield Static(t("model.intro"), classes="intro", markup=False)
        yield FormRow(
            t("model.path"),
            PathInput(self.draft.get("model.path", ""), suffixes=MODEL_SUFFIXES, id="model-path", placeholder=t("model.path_placeholder")),
            Button(t("common.browse"), id="browse", compact=True),
            help=t("model.path_help"),
            id="row-model-path",
        )
        yield Static("", id="model-info", classes="detected", markup=False)
        yield FormRow(
            t("model.prediction"),
            Select([(t("model.predictions." + p), p) for p in PREDICTIONS], value=self.draft.get("model.prediction", "auto"), allow_blank=False, compact=True, id="prediction"),
            help=t("model.prediction_help"),
        )
        yield FormRow(
            t("model.tokenizer"),
            PathInput(self.draft.get("model.tokenizer", ""), folders_only=True, id="tokenizer", placeholder=t("model.tokenizer_placeholder")),
            help=t("model.tokenizer_help"),
            id="row-tokenizer",
        )
        yield FormRow(
            t("model.vae"),
            PathInput(self.draft.get("model.vae", ""), suffixes=VAE_SUFFIXES, id="vae", placeholder=t("model.vae_placeholder")),
            help=t("model.vae_help"),
            id="row-vae",
        )

    def on_mount(self) -> None:
        self.inspect()
        if self.draft.get("model.vae"):
            self.check_vae()

    @on(Input.Changed, "#model-path, #tokenizer")
    def path_changed(self, event: Input.Changed) -> None:
        key = "model.path" if event.input.id == "model-path" else "model.tokenizer"
        self.draft.set(key, event.value.strip() or None)
        self.changed()
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(SETTLE_SECONDS, self.inspect)

    @on(Input.Changed, "#vae")
    def vae_changed(self, event: Input.Changed) -> None:
        self.draft.set("model.vae", event.value.strip() or None)
        self.changed()
        if self._vae_timer is not None:
            self._vae_timer.stop()
        self._vae_timer = self.set_timer(SETTLE_SECONDS, self.check_vae)

    def check_vae(self) -> None:
        self.read_vae(self.draft.get("model.vae"))

    @work(thread=True, exclusive=True, group="vae", exit_on_error=False)
    def read_vae(self, path: str | None) -> None:
        problem = vae_problem(path) if path else None
        self.app.call_from_thread(self.show_vae_problem, path, problem)

    def show_vae_problem(self, path: str | None, problem: str | None) -> None:
        if path != self.draft.get("model.vae"):
            return  # the path changed meanwhile: a newer read follows
        self.query_one("#row-vae", FormRow).show_error(problem)
        if problem is None and self.vae_refused:
            self.vae_refused = False
            self.show_screen_error(None)

    @on(Select.Changed, "#prediction")
    def prediction_changed(self, event: Select.Changed) -> None:
        self.draft.set("model.prediction", event.value)
        self.changed()

    def inspect(self) -> None:
        path = self.draft.get("model.path", "")
        if not path:
            self.show_info(None, t("model.none_yet"), self.current_paths())
            return
        self.query_one("#model-info", Static).update(t("model.reading"))
        self.read_model(path, self.draft.get("model.tokenizer"))

    def current_paths(self) -> tuple[str, str | None]:
        return self.draft.get("model.path", ""), self.draft.get("model.tokenizer")

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def read_model(self, path: str, tokenizer: str | None) -> None:
        info, problem = read_model_info(path, tokenizer)
        self.app.call_from_thread(self.show_info, info, problem, (path, tokenizer))

    def show_info(self, info, problem: str | None, paths: tuple[str, str | None]) -> None:
        if paths != self.current_paths():
            return  # the path changed meanwhile: a newer read follows
        self.info, self.problem, self.info_for = info, problem, paths
        text = self.query_one("#model-info", Static)
        row = self.query_one("#row-model-path", FormRow)
        if info is None:
            text.update(problem or "")
            text.set_class(bool(self.draft.get("model.path")), "fail")
            self.draft.model_family = None
            return
        self.use_family(info.family)
        text.set_class(False, "fail")
        self.show_screen_error(None)
        tokenizer = (
            t("model.tokenizer_found", path=shown_path(info.tokenizer), note=info.tokenizer_note)
            if info.tokenizer
            else t("model.tokenizer_missing", note=info.tokenizer_note)
        )
        text.update(
            t("model.detected", label=info.label, layout=info.layout, prediction=info.prediction, reason=info.prediction_reason)
            + "\n"
            + tokenizer
        )
        row.show_error(None)
        self.query_one("#row-tokenizer", FormRow).show_error(None if info.tokenizer else t("model.tokenizer_needed"))

    def use_family(self, family: str) -> None:
        """Keep the model's family; its defaults replace the previous family's where the user
        has not chosen (the machine's settings for it follow on the Parameters step)."""
        from engine.checks.defaults import family_defaults

        changed = self.draft.model_family != family
        self.draft.model_family = family
        if self.draft.apply_defaults(family_defaults(family)) or changed:
            self.changed()

    def ready_to_leave(self) -> bool:
        if not self.draft.get("model.path"):
            self.query_one("#row-model-path", FormRow).show_error(t("model.required"))
            return False
        if self.info_for != self.current_paths():  # Next pressed before the read settled: read now
            self.show_info(*read_model_info(*self.current_paths()), self.current_paths())
        if self.info is None:
            self.show_screen_error(self.problem or t("model.reading"))
            return False
        if self.info.tokenizer is None:
            self.show_screen_error(t("model.tokenizer_needed"))
            return False
        vae = self.draft.get("model.vae")
        problem = vae_problem(vae) if vae else None
        if problem is not None:
            self.query_one("#row-vae", FormRow).show_error(problem)
            self.show_screen_error(problem)
            self.vae_refused = True
            return False
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "browse":
            event.stop()
            self.action_browse()
        else:
            super().on_button_pressed(event)

    def action_browse(self) -> None:
        start = starting_folder(self.draft.get("model.path", ""))

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.query_one("#model-path", Input).value = str(path)

        self.app.push_screen(PathPicker(t("model.pick_title"), start, suffixes=MODEL_SUFFIXES), chosen)
