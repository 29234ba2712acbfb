"""The Dataset step's Captions part: the training style, how captions are trained, and the way
into the Captions screen (tagging, review and editing).

    Style   (•) DreamBooth: a token and class, regularization images, captions optional
            ( ) Fine-tune: every image has its own caption; no regularization
    [x] Shuffle tags     Keep first [2]
    [Tag and review captions…]   18 of 24 images have a .txt caption

Both styles train from the same `<repeats>_<name>` folders (kohya's layout): repeats is how often
each image is seen per epoch; an image's caption file replaces the folder's prompt. The style is
the wizard's choice (not an answers key): fine-tune clears the regularization root and turns tag
shuffling on, keeping the first tags (the token and class) in place (keep_tokens).
"""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Checkbox, Input, RadioButton, RadioSet, Static

from tui_lora.host import WizardNode
from tui_lora.i18n import t
from tui_lora.widgets.form import FormRow
from tui_lora.widgets.on_off import OnOff

STYLES = ("dreambooth", "finetune")
STYLE_KEY = "dataset_style"  # in the draft's choices
# keep_tokens when fine-tuning: the token and the class the tagger puts first.
FIRST_TAGS_KEPT = 2


class CaptionsSection(WizardNode, Vertical):
    DEFAULT_CSS = """
    CaptionsSection { height: auto; }
    CaptionsSection #keep-tokens { width: 8; }
    """

    class StyleChanged(Message):
        def __init__(self, style: str) -> None:
            super().__init__()
            self.style = style

    class Edited(Message):
        """The Captions screen was closed: the caption files may have changed."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.report = None  # the Dataset step's last check

    @property
    def draft(self):
        return self.wizard.draft

    @property
    def style(self) -> str:
        return self.draft.choices.get(STYLE_KEY, "dreambooth")

    def compose(self) -> ComposeResult:
        yield Static(t("captions.section_heading"), classes="heading", markup=False)
        with RadioSet(id="dataset-style", compact=True):
            for style in STYLES:
                yield RadioButton(t(f"captions.style.{style}"), value=style == self.style, compact=True, id=f"style-{style}")
        yield Static(t(f"captions.style_help.{self.style}"), id="style-help", classes="help", markup=False)
        yield OnOff(bool(self.draft.get("dataset.shuffle_tags", False)), t("captions.shuffle"), compact=True, id="shuffle-tags")
        yield FormRow(
            t("captions.keep_tokens"),
            Input(str(self.draft.get("dataset.keep_tokens", 0)), compact=True, id="keep-tokens"),
            help=t("captions.keep_tokens_help"),
            id="row-keep-tokens",
        )
        with Horizontal(classes="buttons"):
            yield Button(t("captions.open_button"), id="open-captions", compact=True)
        yield Static("", id="captions-summary", classes="help", markup=False)

    # ----------------------------------------------------------------------------- style

    @on(RadioSet.Changed, "#dataset-style")
    def style_changed(self, event: RadioSet.Changed) -> None:
        event.stop()
        style = (event.pressed.id or "style-dreambooth").removeprefix("style-")
        self.draft.choices[STYLE_KEY] = style
        self.query_one("#style-help", Static).update(t(f"captions.style_help.{style}"))
        if style == "finetune":
            self.draft.set("dataset.reg_dir", None)
            if self.draft.set_default("dataset.shuffle_tags", True):
                self.query_one("#shuffle-tags", Checkbox).value = True
            if self.draft.set_default("dataset.keep_tokens", FIRST_TAGS_KEPT):
                self.query_one("#keep-tokens", Input).value = str(FIRST_TAGS_KEPT)
        self.wizard.save_draft()
        self.show_summary(self.report)
        self.post_message(self.StyleChanged(style))

    @on(Checkbox.Changed, "#shuffle-tags")
    def shuffle_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        if event.value != self.draft.get("dataset.shuffle_tags", False):
            self.draft.set("dataset.shuffle_tags", event.value)
            self.wizard.save_draft()

    @on(Input.Changed, "#keep-tokens")
    def keep_tokens_changed(self, event: Input.Changed) -> None:
        event.stop()
        text = event.value.strip()
        ok = text.isdigit() and int(text) <= 255
        self.query_one("#row-keep-tokens", FormRow).show_error(None if ok else t("captions.keep_tokens_invalid"))
        if ok and int(text) != self.draft.get("dataset.keep_tokens", 0):
            self.draft.set("dataset.keep_tokens", int(text))
            self.wizard.save_draft()

    # ----------------------------------------------------------------------------- captions

    def caption_folder(self) -> Path | None:
        """The training root; before one is laid out, the folder of images being prepared."""
        choices = self.draft.choices
        given = self.draft.get("dataset.train_dir") if choices.get("dataset_mode", "existing") == "existing" else choices.get("images_dir")
        return Path(given).expanduser() if given else None

    def first_tags(self) -> str:
        """In a flat folder there is no concept folder to take the token and class from."""
        choices = self.draft.choices
        if choices.get("dataset_mode") == "prepare":
            return ", ".join(w for w in (choices.get("token", ""), choices.get("class_word", "")) if w)
        return ""

    @on(Button.Pressed, "#open-captions")
    def open_captions(self, event: Button.Pressed) -> None:
        from tui_lora.screens.captions import CaptionsScreen

        event.stop()
        folder = self.caption_folder()
        summary = self.query_one("#captions-summary", Static)
        if folder is None or not folder.is_dir():
            summary.update(t("captions.no_folder"))
            return
        self.app.push_screen(CaptionsScreen(folder, first_tags=self.first_tags()), lambda _: self.post_message(self.Edited()))

    def show_summary(self, report) -> None:
        """From the Dataset step's check: how many training images have a caption."""
        self.report = report
        summary = self.query_one("#captions-summary", Static)
        if report is None or not report.train_concepts:
            summary.update("")
            return
        images = sum(c.images for c in report.train_concepts)
        captions = sum(c.captions for c in report.train_concepts)
        key = "captions.summary_missing" if self.style == "finetune" and captions < images else "captions.summary"
        summary.update(t(key, captions=captions, images=images, extension=report.caption_extension))
