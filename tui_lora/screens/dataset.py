"""Dataset: an existing kohya training root, or a flat folder of images laid out here; the
regularization root; and the pre-flight check of both, in a worker, with every problem named.

    train/20_usu bear/*.png     training root: <repeats>_<instance token> <class>
    reg/1_bear/*.png            regularization root: <repeats>_<class>

Preparing links the images into `<root>/<repeats>_<token> <class>/` (engine.dataset_prepare,
as `lora-wizard dataset prepare` does); the originals are never moved. Next stays here while the
check reports errors (training would refuse them).
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, RadioButton, RadioSet, Static

from engine.dataset import REG_IMAGES_PER_TRAINING_IMAGE
from tui_lora.i18n import counted, engine_text, t
from tui_lora.screens.base import WizardScreen
from tui_lora.widgets.captions_section import CaptionsSection
from tui_lora.widgets.form import FormRow
from tui_lora.widgets.path_input import PathInput
from tui_lora.widgets.path_picker import PathPicker, starting_folder
from tui_lora.widgets.settled_check import SettledCheck
from tui_lora.widgets.status_rows import StatusRow, shown_path

MODES = ("existing", "prepare")
SETTLE_SECONDS = 0.4
# Problems listed on the screen at most; `lora-wizard dataset check --json` lists every one.
MAX_PROBLEMS_SHOWN = 30
# The same problem in this many files or more is one line (12 small images: one warning).
GROUP_FROM = 3


def suggested_tokens() -> tuple[str, ...]:
    from engine.checks.tokens import SUGGESTED_TOKENS

    return SUGGESTED_TOKENS


def grouped_problems(problems) -> list[list]:
    """The problems with one kind (code) in `GROUP_FROM` or more files as one group, in the order
    each kind is first met; the others alone."""
    by_code: dict[tuple[str, str], list] = {}
    for problem in problems:
        by_code.setdefault((problem.severity, problem.code), []).append(problem)
    groups: list[list] = []
    for same in by_code.values():
        groups += [same] if len(same) >= GROUP_FROM else [[p] for p in same]
    order = {id(p): i for i, p in enumerate(problems)}
    return sorted(groups, key=lambda g: order[id(g[0])])


def check_folders(key: tuple):
    """The engine's pre-flight check of (training root, regularization root, caption extension,
    resolution, batch size); None without a training root."""
    from engine.checks.dataset import check_dataset

    train_dir, reg_dir, caption_extension, resolution, batch_size = key
    if not train_dir:
        return None
    return check_dataset(
        Path(train_dir).expanduser(),
        Path(reg_dir).expanduser() if reg_dir else None,
        caption_extension=caption_extension,
        resolution=resolution,
        batch_size=batch_size,
    )


class DatasetScreen(WizardScreen):
    STEP = "dataset"
    BODY_FOCUSABLE = True
    AUTO_FOCUS = "#dataset-mode"
    BINDINGS = [
        Binding("ctrl+o", "browse", "key.browse"),
        Binding("ctrl+r", "check", "key.recheck"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report = None  # engine DatasetReport of the folders shown
        self.check = SettledCheck(self, "dataset", key=self.check_key, run=check_folders, show=self.show_report,
                                  started=self.show_checking, delay=SETTLE_SECONDS)

    # ----------------------------------------------------------------------------- layout

    def compose_body(self) -> ComposeResult:
        choices = self.draft.choices
        mode = choices.get("dataset_mode", "existing")
        yield Static(t("dataset.intro"), classes="intro", markup=False)
        with RadioSet(id="dataset-mode", compact=True):
            for option in MODES:
                yield RadioButton(t(f"dataset.mode.{option}"), value=option == mode, id=f"mode-{option}", compact=True)
        with Vertical(id="existing"):
            yield FormRow(
                t("dataset.train_dir"),
                PathInput(self.draft.get("dataset.train_dir", ""), folders_only=True, id="train-dir"),
                Button(t("common.browse"), id="browse-train", compact=True),
                help=t("dataset.train_dir_help"),
                id="row-train-dir",
            )
        with Vertical(id="prepare"):
            yield FormRow(
                t("dataset.images_dir"),
                PathInput(choices.get("images_dir", ""), folders_only=True, id="images-dir"),
                Button(t("common.browse"), id="browse-images", compact=True),
                help=t("dataset.images_dir_help"),
                id="row-images-dir",
            )
            tokens = suggested_tokens()
            yield FormRow(
                t("dataset.token"),
                Input(choices.get("token", ""), suggester=SuggestFromList(tokens), compact=True, id="token"),
                help=t("dataset.token_help", tokens=" ".join(tokens)),
            )
            yield FormRow(t("dataset.class_word"), Input(choices.get("class_word", ""), compact=True, id="class-word"), help=t("dataset.class_help"))
            yield FormRow(
                t("dataset.repeats"),
                Input(str(choices.get("repeats", "")), compact=True, id="repeats", placeholder=t("dataset.repeats_auto")),
                help=t("dataset.repeats_help"),
                id="row-repeats",
            )
            yield FormRow(
                t("dataset.prepare_out"),
                PathInput(choices.get("prepare_out", ""), folders_only=True, id="prepare-out"),
                help=t("dataset.prepare_out_help"),
                id="row-prepare-out",
            )
            with Horizontal(classes="buttons"):
                yield Button(t("dataset.prepare_button"), id="prepare-button", compact=True)
        yield Static("", id="prepare-result", markup=False)
        yield FormRow(
            t("dataset.reg_dir"),
            PathInput(self.draft.get("dataset.reg_dir", ""), folders_only=True, id="reg-dir"),
            Button(t("common.browse"), id="browse-reg", compact=True),
            help=t("dataset.reg_dir_help"),
            id="row-reg-dir",
        )
        with Horizontal(classes="buttons"):
            yield Button(t("dataset.reg_generate"), id="reg-generate", disabled=True, compact=True)
        yield Static(t("dataset.reg_generate_later", count="-"), id="reg-generate-help", classes="help", markup=False)
        yield Static(t("dataset.check_heading"), classes="heading", markup=False)
        yield Static("", id="check-status", classes="help", markup=False)
        yield Vertical(id="concepts")
        yield Vertical(id="problems")
        yield CaptionsSection(id="captions-section")

    def on_mount(self) -> None:
        self.show_mode(self.draft.choices.get("dataset_mode", "existing"))
        self.show_style(self.query_one(CaptionsSection).style)
        self.check.now()
        # Focusing the first field centres it, which scrolls a long body past the intro.
        self.call_after_refresh(self.query_one("#body").scroll_home, animate=False)

    def show_style(self, style: str) -> None:
        """Fine-tune style trains without regularization: its fields are hidden."""
        for widget in (self.query_one("#row-reg-dir"), self.query_one("#reg-generate").parent, self.query_one("#reg-generate-help")):
            widget.display = style != "finetune"

    @on(CaptionsSection.StyleChanged)
    def style_changed(self, event: CaptionsSection.StyleChanged) -> None:
        if event.style == "finetune":
            self.query_one("#reg-dir", Input).value = ""
        self.show_style(event.style)

    @on(CaptionsSection.Edited)
    def captions_edited(self) -> None:
        self.check.now(again=True)  # the check reads the caption files as they are now

    def show_mode(self, mode: str) -> None:
        self.query_one("#existing").display = mode == "existing"
        self.query_one("#prepare").display = mode == "prepare"

    # ----------------------------------------------------------------------------- input

    @on(RadioSet.Changed, "#dataset-mode")
    def mode_changed(self, event: RadioSet.Changed) -> None:
        mode = (event.pressed.id or "mode-existing").removeprefix("mode-")
        self.draft.choices["dataset_mode"] = mode
        self.changed()
        self.show_mode(mode)

    @on(Input.Changed, "#train-dir, #reg-dir")
    def root_changed(self, event: Input.Changed) -> None:
        key = "dataset.train_dir" if event.input.id == "train-dir" else "dataset.reg_dir"
        value = event.value.strip() or None
        if value != self.draft.get(key):
            self.draft.set(key, value)
            self.changed()
            self.check.soon()

    @on(Input.Changed, "#images-dir, #token, #class-word, #repeats, #prepare-out")
    def prepare_field_changed(self, event: Input.Changed) -> None:
        name = {"images-dir": "images_dir", "token": "token", "class-word": "class_word", "repeats": "repeats", "prepare-out": "prepare_out"}[event.input.id]
        self.draft.choices[name] = event.value.strip()
        if name == "images_dir" and event.value.strip() and not self.draft.choices.get("prepare_out_edited"):
            # The training root to create: beside the images, unless typed.
            folder = Path(event.value.strip().rstrip("/")).expanduser()
            self.query_one("#prepare-out", Input).value = str(folder.parent / "train") if folder.name else ""
        if name == "prepare_out" and self.focused is event.input:
            self.draft.choices["prepare_out_edited"] = True
        if name == "repeats":
            self.validate_repeats(event.value.strip())
        self.changed()

    def validate_repeats(self, text: str) -> bool:
        row = self.query_one("#row-repeats", FormRow)
        ok = text == "" or (text.isdigit() and int(text) >= 1)
        row.show_error(None if ok else t("invalid.ge", limit=1))
        return ok

    # ----------------------------------------------------------------------------- prepare

    def on_button_pressed(self, event: Button.Pressed) -> None:
        button = event.button.id or ""
        if button.startswith("browse-"):
            event.stop()
            self.browse({"browse-train": "#train-dir", "browse-images": "#images-dir", "browse-reg": "#reg-dir"}[button])
        elif button == "prepare-button":
            event.stop()
            self.start_prepare()

    def start_prepare(self) -> None:
        choices = self.draft.choices
        repeats = choices.get("repeats", "")
        if not self.validate_repeats(str(repeats)):
            return
        missing = [t(label) for name, label in (("images_dir", "dataset.images_dir"), ("token", "dataset.token"), ("class_word", "dataset.class_word"), ("prepare_out", "dataset.prepare_out")) if not choices.get(name)]
        result = self.query_one("#prepare-result", Static)
        if missing:
            result.update(t("dataset.prepare_missing", fields=", ".join(missing)))
            result.set_class(True, "fail")
            return
        result.set_class(False, "fail")
        result.update(t("dataset.preparing"))
        self.prepare(choices["images_dir"], choices["token"], choices["class_word"], choices["prepare_out"], int(repeats) if repeats else None)

    @work(thread=True, exclusive=True, group="prepare", exit_on_error=False)
    def prepare(self, images_dir: str, token: str, class_word: str, out: str, repeats: int | None) -> None:
        from engine.dataset_prepare import prepare_dataset
        from engine.errors import UserError

        try:
            prepared = prepare_dataset(Path(images_dir).expanduser(), token=token, class_word=class_word, out=Path(out).expanduser(), repeats=repeats)
        except UserError as exc:
            self.app.call_from_thread(self.prepare_failed, exc.render())
        else:
            self.app.call_from_thread(self.prepared, prepared, out)

    def prepare_failed(self, message: str) -> None:
        result = self.query_one("#prepare-result", Static)
        result.update(message)
        result.set_class(True, "fail")

    def prepared(self, prepared, out: str) -> None:
        lines = [t("dataset.prepared", folder=shown_path(prepared.concept_folder), images=counted("images", prepared.images), repeats=counted("repeats", prepared.repeats))]
        if prepared.left_out:
            lines.append(t("dataset.prepared_left_out", count=len(prepared.left_out)))
            lines += [f"  {problem.path.name}: {problem.message}" for problem in prepared.left_out]
        self.query_one("#prepare-result", Static).update("\n".join(lines))
        self.query_one("#train-dir", Input).value = out
        self.draft.set("dataset.train_dir", out)
        self.query_one("#mode-existing", RadioButton).value = True
        self.check.now(again=True)  # the folder may have been there before, with other images

    # ----------------------------------------------------------------------------- the check

    def check_key(self) -> tuple:
        return (
            self.draft.get("dataset.train_dir"),
            self.draft.get("dataset.reg_dir"),
            self.draft.get("dataset.caption_extension", ".txt"),
            self.draft.get("dataset.resolution") or self.model_resolution(),
            self.draft.get("training.batch_size", 1),
        )

    def model_resolution(self) -> int:
        """The resolution the model trains at unless Parameters says otherwise: its family's."""
        from engine.checks.costs import FAMILY_COSTS

        family = FAMILY_COSTS.get(self.draft.model_family or "sd1", FAMILY_COSTS["sd1"])
        return family.resolution

    def action_check(self) -> None:
        self.check.now(again=True)

    def show_checking(self, key: tuple) -> None:
        if key[0]:
            self.query_one("#check-status", Static).update(t("dataset.checking"))

    def show_report(self, key: tuple, report) -> None:
        self.report = report
        status = self.query_one("#check-status", Static)
        concepts = self.query_one("#concepts", Vertical)
        problems = self.query_one("#problems", Vertical)
        concepts.remove_children()
        problems.remove_children()
        self.query_one(CaptionsSection).show_summary(report)
        if report is None:
            status.update(t("dataset.no_root"))
            return
        status.update(t("dataset.check_summary", errors=counted("errors", len(report.errors)), warnings=counted("warnings", len(report.warnings)), steps=counted("steps", report.steps_per_epoch)))
        concepts.mount_all([Static(self.concept_line(c), classes="concept", markup=False) for c in report.concepts])
        groups = grouped_problems(report.problems)
        shown = groups[:MAX_PROBLEMS_SHOWN]
        rows = [self.problem_row(group) for group in shown]
        if len(groups) > len(shown):
            rows.append(Static(t("dataset.more_problems", count=sum(len(g) for g in groups[len(shown):])), classes="help", markup=False))
        problems.mount_all(rows)
        train_images = sum(c.images for c in report.train_concepts)
        self.query_one("#reg-generate-help", Static).update(t("dataset.reg_generate_later", count=REG_IMAGES_PER_TRAINING_IMAGE * train_images))
        self.suggest_name(report)

    def problem_row(self, group: list) -> StatusRow:
        """One problem, or one line for the same problem in several files (the first one named)."""
        first = group[0]
        where = shown_path(first.path)
        if len(group) > 1:
            where = t("dataset.and_more_files", path=where, count=len(group) - 1)
        return StatusRow(first.severity, where, engine_text(first.message), engine_text(first.fix))

    def concept_line(self, concept) -> str:
        kind = t("dataset.kind.reg") if concept.is_reg else t("dataset.kind.train")
        line = t("dataset.concept", kind=kind, folder=concept.folder.name, images=counted("images", concept.images), repeats=concept.repeats, items=concept.items_per_epoch, captions=counted("captions", concept.captions))
        if not concept.is_reg and concept.instance_token:
            line += "\n    " + t("dataset.token_class", token=concept.instance_token, class_word=concept.class_word or "-")
        return line

    def suggest_name(self, report) -> None:
        """The LoRA's default name: the first concept's prompt, `usu bear` -> `usu_bear`."""
        train = report.train_concepts
        if train:
            name = "_".join(train[0].prompt.split())
            if self.draft.set_default("output.name", name):
                self.changed()

    # ----------------------------------------------------------------------------- leaving

    async def settle_checks(self) -> None:
        if self.draft.get("dataset.train_dir") and not self.check.is_current:
            self.show_screen_error(t("dataset.wait_for_check"))
            await self.check.settled()
            self.show_screen_error(None)

    def ready_to_leave(self) -> bool:
        if not self.draft.get("dataset.train_dir"):
            self.query_one("#mode-existing", RadioButton).value = True
            self.query_one("#row-train-dir", FormRow).show_error(t("dataset.train_dir_required"))
            return False
        if self.report is None:
            self.show_screen_error(t("dataset.wait_for_check"))
            return False
        if self.report.errors:
            self.show_screen_error(t("dataset.has_errors", count=len(self.report.errors)))
            return False
        return True

    # ----------------------------------------------------------------------------- picking

    def action_browse(self) -> None:
        focused = self.focused.id if self.focused else None
        target = {"images-dir": "#images-dir", "reg-dir": "#reg-dir", "browse-images": "#images-dir", "browse-reg": "#reg-dir"}.get(focused or "", "#train-dir")
        self.browse(target)

    def browse(self, target: str) -> None:
        field = self.query_one(target, Input)

        def chosen(path: Path | None) -> None:
            if path is not None:
                field.value = str(path)

        self.app.push_screen(PathPicker(t("dataset.pick_title"), starting_folder(field.value), folders_only=True), chosen)
