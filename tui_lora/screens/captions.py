"""Captions: tag a dataset's images with a WD14 tagger, then review and edit every caption.

Opened from the Dataset step on the training root (or, before it is laid out, the folder of
images); Esc goes back, and the Dataset step checks the edited files again.

    Tagger, thresholds, tags first / dropped, underscores, caption files, existing captions
    [Tag the images]  ▇▇▇▇▇▇▇▇▁▁▁▁  120/300
    images            │ the image, in half blocks    │ tag       images
    001.png usu, bear │ [usu] [bear] [smile] …       │ usu       300
    002.png …         │ add a tag: ____              │ smile     120

The tagger runs in a thread worker (engine.autotag, as `lora-wizard dataset caption`); every edit
is written at once, atomically (engine.caption_files). The caption extension chosen here is the
answers file's `[dataset] caption_extension`, so training reads the files written here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Input,
    OptionList,
    ProgressBar,
    RadioButton,
    RadioSet,
    Static,
)
from textual.widgets.option_list import Option

from tui_lora.host import WizardNode
from tui_lora.i18n import t
from tui_lora.widgets.bindings import translate_bindings
from tui_lora.widgets.caption_editor import ImagePreview, TagChips, TagTable
from tui_lora.widgets.confirm import ConfirmScreen
from tui_lora.widgets.form import FormRow
from tui_lora.widgets.on_off import OnOff

CAPTION_EXTENSIONS = (".txt", ".caption")
EXISTING = ("keep", "replace", "append")
SETTINGS_KEY = "captions"  # the draft's choices: the tagger settings last used


def onnxruntime_installed() -> bool:
    """Without importing it (a few hundred ms): the screen only needs to know."""
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"] is not None
    return importlib.util.find_spec("onnxruntime") is not None


def download_bar(report):
    """A tqdm class for huggingface_hub's download that reports (done, total bytes) instead of
    drawing on the terminal Textual owns."""
    import io

    from huggingface_hub.utils import tqdm as hub_tqdm

    class Bar(hub_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            shown = super().update(n)
            report(self.n, self.total)
            return shown

    return Bar


class CaptionsScreen(WizardNode, Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "key.back"),
        Binding("ctrl+g", "tag", "key.captions.tag"),
    ]
    DEFAULT_CSS = """
    CaptionsScreen #captions-body { height: 1fr; }
    CaptionsScreen #review { height: 85vh; min-height: 12; }
    CaptionsScreen #caption-images { width: 1fr; height: 100%; }
    CaptionsScreen #caption-editor { width: 2fr; height: 100%; }
    CaptionsScreen #caption-frequency { width: 1fr; height: 100%; }
    CaptionsScreen #tag-frequency { height: 1fr; }
    CaptionsScreen #tag-progress { width: 1fr; margin: 0 2; }
    CaptionsScreen #caption-name { height: 1; }
    """

    def __init__(self, folder: Path, *, first_tags: str = "") -> None:
        super().__init__(name="captions")
        translate_bindings(self)
        self.folder = folder
        self.default_first = first_tags
        self.captions = None  # engine CaptionSet, once read
        self._tagger = None  # (spec, Tagger): loaded once per screen

    @property
    def draft(self):
        return self.wizard.draft

    @property
    def settings(self) -> dict:
        return self.draft.choices.setdefault(SETTINGS_KEY, {})

    @property
    def extension(self) -> str:
        return self.draft.get("dataset.caption_extension", ".txt")

    # ----------------------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        from engine.autotag import DEFAULT_CHARACTER_THRESHOLD, DEFAULT_GENERAL_THRESHOLD
        from engine.tagger import DEFAULT_TAGGER

        s = self.settings
        with VerticalScroll(id="captions-body"):
            yield Static(t("captions.title", folder=str(self.folder)), classes="heading", markup=False)
            yield Static(t("captions.intro"), classes="intro", markup=False)
            yield FormRow(t("captions.model"), Input(s.get("model", DEFAULT_TAGGER), compact=True, id="tagger-model"), help=t("captions.model_help"), id="row-tagger-model")
            yield FormRow(t("captions.general"), Input(str(s.get("general", DEFAULT_GENERAL_THRESHOLD)), compact=True, id="general-threshold"), help=t("captions.general_help"), id="row-general-threshold")
            yield FormRow(t("captions.character"), Input(str(s.get("character", DEFAULT_CHARACTER_THRESHOLD)), compact=True, id="character-threshold"), help=t("captions.character_help"), id="row-character-threshold")
            yield FormRow(t("captions.first"), Input(s.get("first", self.default_first), compact=True, id="first-tags", placeholder=t("captions.first_placeholder")), help=t("captions.first_help"))
            yield FormRow(t("captions.drop"), Input(s.get("drop", ""), compact=True, id="drop-tags"), help=t("captions.drop_help"))
            yield OnOff(s.get("underscores", True), t("captions.underscores"), compact=True, id="underscores")
            with RadioSet(id="caption-extension", compact=True):
                for extension in CAPTION_EXTENSIONS:
                    yield RadioButton(t("captions.extension", extension=extension), value=extension == self.extension, compact=True, id=f"ext-{extension[1:]}")
            yield Static(t("captions.extension_help"), classes="help", markup=False)
            with RadioSet(id="existing", compact=True):
                for how in EXISTING:
                    yield RadioButton(t(f"captions.existing.{how}"), value=how == s.get("existing", "keep"), compact=True, id=f"existing-{how}")
            with Horizontal(classes="buttons"):
                yield Button(t("captions.tag_button"), id="tag-button", compact=True, variant="primary")
                yield ProgressBar(id="tag-progress", show_eta=False)
            yield Static("", id="tag-status", classes="help", markup=False)
            yield Static(t("captions.review_heading"), classes="heading", markup=False)
            with Horizontal(id="review"):
                yield OptionList(id="caption-images")
                with Vertical(id="caption-editor"):
                    yield Static("", id="caption-name", markup=False)
                    yield ImagePreview(id="caption-preview")
                    yield TagChips(id="caption-chips")
                    yield Input(compact=True, id="tag-add", placeholder=t("captions.add_placeholder"))
                with Vertical(id="caption-frequency"):
                    yield TagTable(id="tag-frequency")
                    yield Input(compact=True, id="tag-replace", placeholder=t("captions.replace_placeholder"))
            yield Static(t("captions.keys_help"), classes="help", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#tag-progress").display = False  # until tagging starts
        if not onnxruntime_installed():
            from engine.tagger import INSTALL_HINT

            self.query_one("#tag-button", Button).disabled = True
            self.query_one("#tag-status", Static).update(t("captions.needs_onnxruntime", hint=INSTALL_HINT))
        self.load_captions()
        self.query_one("#caption-images" if self.captions and self.captions.tags else "#tagger-model").focus()

    # ----------------------------------------------------------------------------- settings

    @on(Input.Changed, "#tagger-model, #first-tags, #drop-tags")
    def text_setting(self, event: Input.Changed) -> None:
        key = {"tagger-model": "model", "first-tags": "first", "drop-tags": "drop"}[event.input.id or ""]
        self.settings[key] = event.value.strip()
        self.wizard.save_draft()

    @on(Input.Changed, "#general-threshold, #character-threshold")
    def threshold_setting(self, event: Input.Changed) -> None:
        key = "general" if event.input.id == "general-threshold" else "character"
        value = self.threshold(event.input.id or "")
        if value is not None:
            self.settings[key] = value
            self.wizard.save_draft()

    def threshold(self, input_id: str) -> float | None:
        row = self.query_one(f"#row-{input_id}", FormRow)
        try:
            value = float(self.query_one(f"#{input_id}", Input).value)
        except ValueError:
            value = -1.0
        ok = 0.0 <= value <= 1.0
        row.show_error(None if ok else t("captions.threshold_invalid"))
        return value if ok else None

    @on(Checkbox.Changed, "#underscores")
    def underscores_setting(self, event: Checkbox.Changed) -> None:
        self.settings["underscores"] = event.value
        self.wizard.save_draft()

    @on(RadioSet.Changed, "#existing")
    def existing_setting(self, event: RadioSet.Changed) -> None:
        self.settings["existing"] = (event.pressed.id or "existing-keep").removeprefix("existing-")
        self.wizard.save_draft()

    @on(RadioSet.Changed, "#caption-extension")
    def extension_setting(self, event: RadioSet.Changed) -> None:
        """The answers file follows, so training reads the files shown here."""
        self.draft.set("dataset.caption_extension", "." + (event.pressed.id or "ext-txt").removeprefix("ext-"))
        self.wizard.save_draft()
        self.load_captions()

    # ----------------------------------------------------------------------------- tagging

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "tag-button":
            event.stop()
            self.action_tag()

    def action_tag(self) -> None:
        from engine.autotag import TagOptions
        from engine.errors import UserError
        from engine.tagger import DEFAULT_TAGGER

        if self.query_one("#tag-button", Button).disabled:
            return
        general, character = self.threshold("general-threshold"), self.threshold("character-threshold")
        if general is None or character is None:
            return
        s = self.settings
        try:
            options = TagOptions(
                general_threshold=general,
                character_threshold=character,
                first_tags=split_list(s.get("first", self.default_first)),
                drop_tags=split_list(s.get("drop", "")),
                underscores_to_spaces=s.get("underscores", True),
                caption_extension=self.extension,
                existing=s.get("existing", "keep"),
            )
        except UserError as exc:
            self.show_status(exc.render(), failed=True)
            return
        self.query_one("#tag-button", Button).disabled = True
        self.query_one("#tag-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#tag-progress").display = True
        self.show_status(t("captions.loading_model"))
        self.run_tagging(s.get("model") or DEFAULT_TAGGER, options)

    @work(thread=True, exclusive=True, group="tagging", exit_on_error=False)
    def run_tagging(self, spec: str, options) -> None:
        from engine.autotag import tag_folder
        from engine.errors import UserError
        from engine.tagger import Tagger

        call = self.app.call_from_thread
        try:
            if self._tagger is None or self._tagger[0] != spec:
                bar = download_bar(lambda done, total: call(self.show_download, done, total))
                self._tagger = (spec, Tagger.load(spec, progress=bar))
            result = tag_folder(self.folder, self._tagger[1], options, lambda done, total: call(self.show_progress, done, total))
        except UserError as exc:
            call(self.tagging_done, None, exc.render())
        else:
            call(self.tagging_done, result, None)

    def show_download(self, done: int, total: int | None) -> None:
        self.query_one("#tag-progress", ProgressBar).update(total=total, progress=done)
        self.show_status(t("captions.downloading", done=done // 2**20, total=(total or 0) // 2**20))

    def show_progress(self, done: int, total: int) -> None:
        self.query_one("#tag-progress", ProgressBar).update(total=total, progress=done)
        self.show_status(t("captions.tagging", done=done, total=total))

    def tagging_done(self, result, error: str | None) -> None:
        self.query_one("#tag-button", Button).disabled = False
        self.query_one("#tag-progress").display = result is not None
        if result is None:
            self.show_status(error or "", failed=True)
            return
        lines = [t("captions.tagged", written=len(result.written), images=result.images, kept=len(result.kept), extension=self.extension)]
        lines += [t("captions.skipped", error=error.render()) for error in result.failed]
        if result.untagged:
            lines.append(t("captions.untagged", count=len(result.untagged)))
        self.show_status("\n".join(lines), failed=bool(result.failed))
        self.load_captions()
        self.query_one("#caption-images").focus()

    def show_status(self, text: str, *, failed: bool = False) -> None:
        status = self.query_one("#tag-status", Static)
        status.update(text)
        status.set_class(failed, "fail")

    # ----------------------------------------------------------------------------- review

    def load_captions(self) -> None:
        from engine.caption_files import CaptionSet
        from engine.errors import UserError

        try:
            self.captions = CaptionSet.load(self.folder, self.extension)
        except UserError as exc:
            self.captions = None
            self.show_status(exc.render(), failed=True)
            return
        images = self.query_one("#caption-images", OptionList)
        highlighted = images.highlighted or 0
        images.set_options([Option(self.image_line(path), id=str(i)) for i, path in enumerate(self.captions.images)])
        images.highlighted = min(highlighted, len(self.captions.images) - 1)
        self.show_image()
        self.query_one("#tag-frequency", TagTable).show(self.captions.frequency())

    def image_line(self, path: Path) -> Text:
        from engine.caption_files import join_tags

        one_folder = len({image.parent for image in self.captions.images}) == 1
        line = Text(path.name if one_folder else f"{path.parent.name}/{path.name}", style="bold")
        tags = self.captions.tags.get(path)
        line.append("\n  " + (join_tags(tags) if tags else t("captions.no_caption")), style="" if tags else "dim italic")
        return line

    @property
    def current_image(self) -> Path | None:
        index = self.query_one("#caption-images", OptionList).highlighted
        if self.captions is None or index is None or index >= len(self.captions.images):
            return None
        return self.captions.images[index]

    @on(OptionList.OptionHighlighted, "#caption-images")
    def image_highlighted(self) -> None:
        self.show_image()

    def show_image(self) -> None:
        image = self.current_image
        self.query_one("#caption-name", Static).update(str(image.relative_to(self.folder)) if image else "")
        self.query_one("#caption-preview", ImagePreview).show(image)
        self.query_one("#caption-chips", TagChips).set_tags(self.captions.tags_of(image) if image else [], cursor=0)

    def write_current(self, tags: list[str]) -> None:
        image = self.current_image
        if image is None:
            return
        self.captions.set_tags(image, tags)
        self.refresh_after_edit([image])

    def refresh_after_edit(self, images: list[Path]) -> None:
        options = self.query_one("#caption-images", OptionList)
        for image in images:
            options.replace_option_prompt_at_index(self.captions.images.index(image), self.image_line(image))
        chips = self.query_one("#caption-chips", TagChips)
        current = self.current_image
        chips.set_tags(self.captions.tags_of(current) if current else [])
        self.query_one("#tag-frequency", TagTable).show(self.captions.frequency())

    @on(TagChips.Changed)
    def chips_changed(self, event: TagChips.Changed) -> None:
        self.write_current(event.tags)

    @on(Input.Submitted, "#tag-add")
    def add_tags(self, event: Input.Submitted) -> None:
        image = self.current_image
        new = split_list(event.value)
        if image is None or not new:
            return
        self.write_current([*self.captions.tags_of(image), *new])
        event.input.value = ""

    @on(TagTable.RemoveEverywhere)
    def remove_everywhere(self, event: TagTable.RemoveEverywhere) -> None:
        tag = event.tag
        count = dict(self.captions.frequency()).get(tag, 0)

        def answered(yes: bool | None) -> None:
            if yes:
                self.refresh_after_edit(self.captions.remove_everywhere(tag))
                self.show_status(t("captions.removed", tag=tag, count=count))

        self.app.push_screen(ConfirmScreen(t("captions.confirm_remove", tag=tag, count=count)), answered)

    @on(TagTable.ReplaceEverywhere)
    def ask_replacement(self, event: TagTable.ReplaceEverywhere) -> None:
        field = self.query_one("#tag-replace", Input)
        field.value = event.tag
        field.focus()

    @on(Input.Submitted, "#tag-replace")
    def replace_everywhere(self, event: Input.Submitted) -> None:
        old = self.query_one("#tag-frequency", TagTable).current
        new = event.value.strip()
        if old is None or not new or new == old:
            return
        changed = self.captions.replace_everywhere(old, new)
        self.refresh_after_edit(changed)
        self.show_status(t("captions.replaced", old=old, new=new, count=len(changed)))
        self.query_one("#tag-frequency", TagTable).focus()
        event.input.value = ""

    def action_back(self) -> None:
        self.wizard.flush_draft()
        self.dismiss(None)


def split_list(text: str) -> tuple[str, ...]:
    return tuple(tag.strip() for tag in text.split(",") if tag.strip())
