"""A checkbox that says its state in text: `[x] on` / `[ ] off`, or `[x] Shuffle tags` /
`[ ] Shuffle tags` when it has a label of its own.

Textual's Checkbox draws the same X whether it is on or off and tells them apart by colour
alone, which a plain terminal, a colour-blind user or a dark theme's "off" (dark on dark) loses.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox

from tui_lora.i18n import t


class OnOff(Checkbox):
    def __init__(self, value: bool = False, label: str | None = None, **kwargs) -> None:
        self.fixed_label = label  # None: the label is the state, on or off
        super().__init__(label if label is not None else state_word(value), value, **kwargs)

    @property
    def _button(self) -> Content:
        return Content.styled("[x]" if self.value else "[ ]", self.get_visual_style("toggle--button"))

    def watch_value(self) -> None:
        super().watch_value()
        if self.fixed_label is None:
            self.label = state_word(self.value)


def state_word(value: bool) -> str:
    return t("common.on") if value else t("common.off")
