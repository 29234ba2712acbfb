"""The line at the top of every wizard screen: the steps, the current one highlighted."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui_lora.draft import STEPS
from tui_lora.i18n import t


def step_bar_text(current: str | None, title: str | None = None) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f" {t('app.name')} ", style="bold reverse")
    if title is not None:
        text.append(f"  {title}", style="bold")
        return text
    for number, step in enumerate(STEPS, start=1):
        text.append(" " if number == 1 else "  ")
        label = f"{number} {t('step.' + step)}"
        text.append(label, style="bold underline" if step == current else "dim")
    return text


class StepBar(Static):
    def __init__(self, current: str | None = None, *, title: str | None = None) -> None:
        super().__init__(step_bar_text(current, title), id="step-bar")
