"""Base model: the path (typed with completion, or picked), what it is, its tokenizer, and an
optional VAE to use in place of the model's own (`[model] vae`). A FLUX.1 transformer file also
needs its autoencoder, CLIP-L and T5-XXL files (`[model] ae`, `clip_l`, `t5xxl`): those fields are
shown only for one, each file checked for its slot from its header as it settles.

What the model is (SD 1.x / 2.x / SDXL, diffusers folder or single file, epsilon or
v-prediction) and whether its tokenizer is found are read by the engine from headers and configs
only, in a worker, each time the path settles. The family is kept in the draft, and its defaults
(SDXL: 1024 px, the UNet only, its learning rates; SD 1.x/2.x: the schema's) replace those of
the previous model wherever the user has not typed a value. A VAE path is looked at as cheaply
(a folder's config, a file's header) when it settles.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Button, Input, Select, Static

from tui_lora.i18n import engine_text, t
from tui_lora.remedies import wizard_error
from tui_lora.screens.base import WizardScreen
from tui_lora.widgets.form import FormRow
from tui_lora.widgets.path_input import PathInput
from tui_lora.widgets.path_picker import PathPicker, starting_folder
from tui_lora.widgets.settled_check import SettledCheck
from tui_lora.widgets.status_rows import shown_path

MODEL_SUFFIXES = (".safetensors", ".ckpt")
# What engine/families/vae.py reads besides a folder.
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
PREDICTIONS = ("auto", "epsilon", "v_prediction")
# Wait this long after the last key before reading the model.
SETTLE_SECONDS = 0.3
# FLUX.1's other files in kohya's layout, as `[model]` keys (engine/families/flux_files.py SLOTS).
FLUX_SLOTS = ("ae", "clip_l", "t5xxl")
FLUX_SUFFIXES = (".safetensors",)


def _expanded(path: str | None) -> Path | None:
    return Path(path).expanduser() if path else None


def is_flux_path(path: str) -> bool:
    """A FLUX.1 transformer file or diffusers folder, from its header or config alone."""
    from engine.families.flux import is_flux_model

    return bool(path) and is_flux_model(Path(path).expanduser())


def read_model_info(path: str, tokenizer: str | None, flux_files: tuple[str | None, ...] = (None, None, None)):
    """(engine ModelInfo, None), or (None, why the model cannot be used). `flux_files` are the
    ae, clip_l and t5xxl paths a FLUX.1 transformer file needs, used only for one."""
    from engine.errors import UserError
    from engine.families import inspect_base_model
    from engine.families.flux import FluxOptions

    ae, clip_l, t5xxl = (_expanded(file) for file in flux_files) if is_flux_path(path) else (None, None, None)
    options = FluxOptions(ae=ae, clip_l=clip_l, t5xxl=t5xxl, tokenizer=_expanded(tokenizer))
    try:
        return inspect_base_model(Path(path).expanduser(), _expanded(tokenizer), flux=options), None
    except UserError as exc:
        return None, wizard_error(exc)


def read_model_paths(paths: tuple) -> tuple:
    """(ModelInfo or None, problem or None, whether the path is FLUX.1) for (model path,
    tokenizer, ae, clip_l, t5xxl); nothing to read without a model path, nor for a FLUX.1
    transformer file before its three other files are given."""
    path, tokenizer, *flux_files = paths
    if not path:
        return None, None, False
    flux = is_flux_path(path)
    if flux and not Path(path).expanduser().is_dir() and not all(flux_files):
        return None, None, True
    return (*read_model_info(path, tokenizer, tuple(flux_files)), flux)


def flux_file_problem(slot: str, path: str | None) -> str | None:
    """Why the file in FLUX.1 slot `slot` (ae, clip_l, t5xxl) is not what it takes, or None."""
    from engine.errors import UserError
    from engine.families.flux_files import check_flux_file

    if not path:
        return None
    try:
        check_flux_file(Path(path).expanduser(), slot)
    except UserError as exc:
        return exc.message
    return None


def vae_problem_of(path: str | None) -> str | None:
    return vae_problem(path) if path else None


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
        self.vae_refused = False  # the screen's error is the VAE's (Next refused it)
        self.model_check = SettledCheck(self, "model", key=self.current_paths, run=read_model_paths, show=self.show_info,
                                        started=self.show_reading, delay=SETTLE_SECONDS)
        self.vae_check = SettledCheck(self, "vae", key=lambda: self.draft.get("model.vae"), run=vae_problem_of,
                                      show=self.show_vae_problem, delay=SETTLE_SECONDS)
        self.flux = any(self.draft.get(f"model.{slot}") for slot in FLUX_SLOTS)  # the path is FLUX.1's
        self.slot_checks = {slot: self.slot_check(slot) for slot in FLUX_SLOTS}

    def slot_check(self, slot: str) -> SettledCheck:
        return SettledCheck(self, f"flux-{slot}", key=lambda: self.slot_value(slot), run=partial(flux_file_problem, slot),
                            show=partial(self.show_slot_problem, slot), delay=SETTLE_SECONDS)

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
        for slot in FLUX_SLOTS:
            row = FormRow(
                t(f"model.{slot}"),
                PathInput(self.draft.get(f"model.{slot}", ""), suffixes=FLUX_SUFFIXES, id=f"flux-{slot}", placeholder=t(f"model.{slot}_placeholder")),
                Button(t("common.browse"), id=f"browse-{slot}", compact=True),
                help=t(f"model.{slot}_help"),
                id=f"row-flux-{slot}",
            )
            row.display = self.flux
            yield row

    def on_mount(self) -> None:
        self.model_check.now()
        if self.draft.get("model.vae"):
            self.vae_check.now()
        for slot, check in self.slot_checks.items():
            if self.slot_value(slot):
                check.now()

    @on(Input.Changed, "#model-path, #tokenizer")
    def path_changed(self, event: Input.Changed) -> None:
        key = "model.path" if event.input.id == "model-path" else "model.tokenizer"
        self.draft.set(key, event.value.strip() or None)
        self.changed()
        self.show_screen_error(None)  # it was about the path as it was when Next was pressed
        self.model_check.soon()

    @on(Input.Changed, "#flux-ae, #flux-clip_l, #flux-t5xxl")
    def flux_file_changed(self, event: Input.Changed) -> None:
        slot = (event.input.id or "").removeprefix("flux-")
        if self.flux:
            self.draft.set(f"model.{slot}", event.value.strip() or None)
            self.changed()
        self.slot_checks[slot].soon()
        self.model_check.soon()

    def slot_value(self, slot: str) -> str | None:
        return self.query_one(f"#flux-{slot}", Input).value.strip() or None

    def show_slot_problem(self, slot: str, path: str | None, problem: str | None) -> None:
        self.query_one(f"#row-flux-{slot}", FormRow).show_error(problem)

    def show_flux_fields(self, flux: bool) -> None:
        """FLUX.1's file fields for a FLUX.1 transformer file, in the draft only then: a SD or SDXL
        model's answers name none (the engine would take the path for a FLUX.1 transformer)."""
        self.flux = flux
        single_files = flux and not Path(self.draft.get("model.path", "")).expanduser().is_dir()
        for slot in FLUX_SLOTS:
            self.query_one(f"#row-flux-{slot}", FormRow).display = single_files
            value = self.slot_value(slot) if single_files else None
            if self.draft.get(f"model.{slot}") != value:
                self.draft.set(f"model.{slot}", value, by_user=value is not None)
                self.changed()

    @on(Input.Changed, "#vae")
    def vae_changed(self, event: Input.Changed) -> None:
        self.draft.set("model.vae", event.value.strip() or None)
        self.changed()
        self.vae_check.soon()

    def show_vae_problem(self, path: str | None, problem: str | None) -> None:
        self.query_one("#row-vae", FormRow).show_error(problem)
        if problem is None and self.vae_refused:
            self.vae_refused = False
            self.show_screen_error(None)

    @on(Select.Changed, "#prediction")
    def prediction_changed(self, event: Select.Changed) -> None:
        self.draft.set("model.prediction", event.value)
        self.changed()

    def current_paths(self) -> tuple:
        """The model check's key: the path, the tokenizer and FLUX.1's three files as typed."""
        return (self.draft.get("model.path", ""), self.draft.get("model.tokenizer"), *(self.slot_value(s) for s in FLUX_SLOTS))

    def show_reading(self, paths: tuple) -> None:
        if paths[0]:
            self.query_one("#model-info", Static).update(t("model.reading"))

    def show_info(self, paths: tuple, read: tuple) -> None:
        info, problem, flux = read
        self.show_flux_fields(flux)
        waiting = flux and info is None and problem is None  # for FLUX.1's other files
        if not paths[0]:
            problem = t("model.none_yet")
        elif waiting:
            problem = t("model.flux_files_needed")
        self.info, self.problem = info, problem
        text = self.query_one("#model-info", Static)
        row = self.query_one("#row-model-path", FormRow)
        if info is None:
            text.update(problem or "")
            text.set_class(bool(self.draft.get("model.path")) and not waiting, "fail")
            self.draft.model_family = None
            return
        self.use_family(info.family)
        text.set_class(False, "fail")
        self.show_screen_error(None)
        tokenizer = (
            t("model.tokenizer_found", path=shown_path(info.tokenizer), note=engine_text(info.tokenizer_note))
            if info.tokenizer
            else t("model.tokenizer_missing", note=engine_text(info.tokenizer_note))
        )
        text.update(
            t("model.detected", label=info.label, layout=info.layout, prediction=info.prediction, reason=engine_text(info.prediction_reason))
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

    async def settle_checks(self) -> None:
        await self.model_check.settled()
        if self.draft.get("model.vae"):
            await self.vae_check.settled()
        for slot, check in self.slot_checks.items():
            if self.flux and self.slot_value(slot):
                await check.settled()

    def ready_to_leave(self) -> bool:
        if not self.draft.get("model.path"):
            self.query_one("#row-model-path", FormRow).show_error(t("model.required"))
            return False
        if self.flux and not self.flux_files_ready():
            return False
        if self.info is None:
            self.show_screen_error(self.problem or t("model.reading"))
            return False
        if self.info.tokenizer is None:
            self.show_screen_error(t("model.tokenizer_needed"))
            return False
        problem = self.vae_check.result if self.draft.get("model.vae") else None
        if problem is not None:
            self.query_one("#row-vae", FormRow).show_error(problem)
            self.show_screen_error(problem)
            self.vae_refused = True
            return False
        return True

    def flux_files_ready(self) -> bool:
        """Each of FLUX.1's shown file fields holds a file of its kind; else its row says why."""
        if not self.query_one("#row-flux-ae", FormRow).display:
            return True  # a diffusers folder holds them
        for slot in FLUX_SLOTS:
            row = self.query_one(f"#row-flux-{slot}", FormRow)
            problem = self.slot_checks[slot].result if self.slot_value(slot) else t("model.flux_file_required", field=t(f"model.{slot}"))
            if problem is not None:
                row.show_error(problem)
                self.show_screen_error(problem)
                self.query_one(f"#flux-{slot}", Input).focus()
                return False
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "browse":
            event.stop()
            self.action_browse()
        elif (event.button.id or "").startswith("browse-"):
            event.stop()
            self.browse_for(event.button.id.removeprefix("browse-"))

    def action_browse(self) -> None:
        focused = self.focused.id if self.focused is not None else None
        slot = (focused or "").removeprefix("flux-")
        if slot in FLUX_SLOTS:
            self.browse_for(slot)
            return
        start = starting_folder(self.draft.get("model.path", ""))

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.query_one("#model-path", Input).value = str(path)

        self.app.push_screen(PathPicker(t("model.pick_title"), start, suffixes=MODEL_SUFFIXES), chosen)

    def browse_for(self, slot: str) -> None:
        """Pick FLUX.1's `slot` file, starting where it or the transformer is."""
        start = starting_folder(self.slot_value(slot) or self.draft.get("model.path", ""))

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.query_one(f"#flux-{slot}", Input).value = str(path)

        self.app.push_screen(PathPicker(t(f"model.{slot}_pick_title"), start, suffixes=FLUX_SUFFIXES), chosen)
