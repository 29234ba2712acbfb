"""What the screens may ask of the wizard app, typed: attributes down, calls up.

Screens and widgets reach the app's own state and steps through `self.wizard` (a `WizardHost`),
and reach `self.app` only for what Textual's App offers (push_screen, notify, call_from_thread).
tui_lora/app.py's WizardApp implements WizardHost; tests/tui/test_wizard_host.py checks both
rules over the source, so a new call shows up here, with its types, instead of on an untyped app.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    from textual.await_complete import AwaitComplete

    from engine.checks.environment import MachineFacts
    from engine.checks.recommend import Recommendations
    from tui_lora.draft import Draft
    from tui_lora.follow_up import FollowUp
    from tui_lora.run_view import RunView
    from tui_lora.settings import Settings


@runtime_checkable
class WizardHost(Protocol):
    # ----- state the screens read (and the draft they write into)
    draft: Draft
    settings: Settings
    facts: MachineFacts | None  # None until machine_facts() has read them
    launch: Callable[[Path], Any]  # starts the engine on a run folder

    # ----- the draft and the machine
    def save_draft(self) -> None: ...
    def flush_draft(self) -> None: ...
    def has_draft_in_progress(self) -> bool: ...
    def machine_facts(self) -> MachineFacts: ...
    def apply_recommendations(self, recommendations: Recommendations) -> list[str]: ...
    def remember_output_dir(self, folder: Path) -> None: ...
    def remember_webui_dir(self, folder: Path) -> None: ...

    # ----- going places (awaitable: done when the screen is shown and focused)
    def go_to(self, step: str) -> AwaitComplete: ...
    def go_next(self, current: str) -> AwaitComplete: ...
    def go_back(self, current: str) -> AwaitComplete: ...
    def new_lora(self) -> AwaitComplete: ...
    def open_run_answers(self, run_folder: Path) -> None: ...
    def open_dashboard(self, run_folder: Path) -> AwaitComplete: ...

    # ----- runs
    def run_started(self, run_folder: Path) -> None: ...
    def leave_dashboard(self, run_folder: Path, *, still_running: bool) -> None: ...
    def show_run_ending(self, run_folder: Path, view: RunView) -> None: ...
    def leave_for(self, commands: FollowUp) -> None: ...


class WizardNode:
    """Mixed into a screen or widget of the wizard: `self.wizard` is its app, typed."""

    @property
    def wizard(self) -> WizardHost:
        return cast("WizardHost", self.app)  # type: ignore[attr-defined]  # a Textual DOMNode's app
