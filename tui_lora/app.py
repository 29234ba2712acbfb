"""The wizard app: wires the screens to the draft, the settings, the themes and the language.

    Home -> Environment -> Base model -> Dataset -> Parameters -> Review -> (Start) -> Dashboard
    Home (attach) -> Dashboard -> Finished | Failed;  `lora-wizard attach RUN` opens the Dashboard

Each step is a fresh screen built from the draft (tui_lora/draft.py), so Esc / Next, reopening
the app and switching language all come down to "show this step". What a step does lives in its
module under screens/; what the engine does stays in engine/.

`run_app()` runs the app and returns what the user asked to leave for (resuming a run): the
command line runs it as `lora-wizard` subcommands in this terminal (tui_lora/follow_up.py);
`run_dashboard()` is `attach` on a terminal.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.await_complete import AwaitComplete
from textual.binding import Binding
from textual.command import CommandPalette
from textual.screen import Screen

from tui_lora import draft as drafts
from tui_lora.draft import HOME, STEPS, Draft
from tui_lora.follow_up import FollowUp
from tui_lora.i18n import LANGUAGES, choose_language, current_language, set_language, t
from tui_lora.screens.dashboard import DashboardScreen
from tui_lora.screens.dataset import DatasetScreen
from tui_lora.screens.environment import EnvironmentScreen
from tui_lora.screens.home import HomeScreen
from tui_lora.screens.model import ModelScreen
from tui_lora.screens.parameters import ParametersScreen
from tui_lora.screens.review import ReviewScreen
from tui_lora.screens.run_end import FailureScreen, FinishScreen, run_summary
from tui_lora.settings import Settings, load_settings, save_settings
from tui_lora.themes import DEFAULT_THEME, load_themes, short_name, stylesheets
from tui_lora.widgets.bindings import translate_bindings

SCREENS: dict[str, type[Screen]] = {
    HOME: HomeScreen,
    "environment": EnvironmentScreen,
    "model": ModelScreen,
    "dataset": DatasetScreen,
    "parameters": ParametersScreen,
    "review": ReviewScreen,
}
# Keystrokes are kept on disk this long after the last one (an fsync each would slow typing).
DRAFT_SAVE_DELAY = 0.3


def spawn_engine(folder: Path) -> int:
    """The engine on a run folder, detached: one process per `[training] processes`."""
    from engine.launch import spawn_detached
    from engine.run_folder import load_run_answers

    return spawn_detached(folder, processes=load_run_answers(folder).training.processes)


def gather_machine_facts(output_dir: Path):
    from engine.checks.environment import gather_facts

    return gather_facts(output_dir)


class WizardApp(App[FollowUp | None]):
    TITLE = "lora-wizard"
    CSS_PATH = stylesheets()
    BINDINGS = [
        Binding("ctrl+t", "next_theme", "key.theme"),
        Binding("ctrl+q", "quit", "key.quit", priority=True),
        Binding("ctrl+p", "command_palette", "key.palette", show=False, priority=True),
    ]

    def __init__(
        self,
        *,
        answers=None,
        data_folder: Path | None = None,
        facts_source: Callable[[Path], Any] | None = None,
        launch: Callable[[Path], Any] | None = None,
        attach: Path | None = None,
        dashboard_options: dict[str, Any] | None = None,
    ) -> None:
        """`answers` (engine Answers) start a new draft from them, at the first step; else the
        saved draft is reopened. `facts_source` reads the machine (tests give simulated facts);
        `launch` starts the engine on a run folder (default: a detached process). `attach` opens
        that run's dashboard instead (leaving it quits the app); `dashboard_options` go to every
        DashboardScreen (tests give a clock and a system monitor)."""
        super().__init__()
        self.attached_run = Path(attach) if attach is not None else None
        self.dashboard_options = dashboard_options or {}
        self.farewell: str | None = None  # printed after the app has left the terminal
        self.data_folder = Path(data_folder) if data_folder else drafts.data_dir()
        self.settings: Settings = load_settings(self.data_folder)
        set_language(choose_language(self.settings.language))
        translate_bindings(self)
        if answers is not None:
            self.draft = Draft.from_answers(answers)
            self.remember_output_dir(answers.output.dir)
        else:
            self.draft = drafts.load_draft(self.data_folder) or Draft()
        self.facts_source = facts_source or gather_machine_facts
        self.launch = launch or spawn_engine
        self.facts = None
        self.recommendations = None
        self._facts_lock = threading.Lock()
        self._draft_timer = None
        self.themes = load_themes()
        for theme in self.themes.values():
            self.register_theme(theme)
        self.theme = self.settings.theme if self.settings.theme in self.themes else DEFAULT_THEME

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        if self.attached_run is not None:
            self.push_screen(DashboardScreen(self.attached_run, **self.dashboard_options))
        else:
            self.push_screen(self.make_screen(self.draft.step))

    # ----------------------------------------------------------------------------- steps

    def make_screen(self, step: str) -> Screen:
        return SCREENS.get(step, HomeScreen)()

    def go_to(self, step: str) -> AwaitComplete:
        self.draft.step = step
        if step in STEPS:
            self.draft.last_step = step
        self.flush_draft()
        return self.show(self.make_screen(step))

    def go_next(self, current: str) -> AwaitComplete:
        index = STEPS.index(current)
        return self.go_to(STEPS[index + 1]) if index + 1 < len(STEPS) else AwaitComplete.nothing()

    def go_back(self, current: str) -> AwaitComplete:
        index = STEPS.index(current) if current in STEPS else 0
        return self.go_to(STEPS[index - 1] if index > 0 else HOME)

    def show(self, screen: Screen) -> AwaitComplete:
        """Make `screen` the one shown; awaited, until it is built and has the focus.

        A key's action that awaits this holds the app's keys meanwhile: each key a fast typist
        sends goes to the screen it was meant for, in order, and none to the screen being left."""
        switched = self.switch_screen(screen)

        async def shown() -> None:
            await switched
            drawn = asyncio.Event()
            screen.call_after_refresh(drawn.set)  # after its mount, resume and auto focus
            await drawn.wait()

        return AwaitComplete(shown())

    def has_draft_in_progress(self) -> bool:
        return self.draft.last_step is not None

    def new_lora(self) -> AwaitComplete:
        self.draft = Draft()
        return self.go_to(STEPS[0])

    def open_run_answers(self, run_folder: Path) -> None:
        """A new LoRA starting from a run's answers (its name must change, or overwrite be set)."""
        from engine.errors import UserError
        from engine.run_folder import load_run_answers

        try:
            answers = load_run_answers(run_folder)
        except UserError as exc:
            self.notify(exc.render(), severity="error", markup=False)
            return
        self.draft = Draft.from_answers(answers)
        self.go_to(STEPS[0])

    def run_started(self, run_folder: Path) -> None:
        saved_to = self.draft.choices.get("saved_to")
        self.remember_output_dir(run_folder.parent)
        self.draft = Draft()  # this LoRA is done: reopening shows Home, with the run listed
        self.flush_draft()
        self.open_dashboard(run_folder)
        if saved_to:
            self.notify(t("dashboard.headless", path=saved_to), timeout=8)

    # ----------------------------------------------------------------------------- runs

    def open_dashboard(self, run_folder: Path) -> AwaitComplete:
        return self.show(DashboardScreen(run_folder, **self.dashboard_options))

    def leave_dashboard(self, run_folder: Path, *, still_running: bool) -> None:
        """Leaving never stops training: it says so, and how to come back."""
        message = t("dashboard.farewell", run=str(run_folder)) if still_running else None
        if self.attached_run is not None:
            self.farewell = message  # printed once the app has left the terminal
            self.exit([])
            return
        self.go_to(HOME)
        if message:
            self.notify(message, timeout=8)

    def show_run_ending(self, run_folder: Path, view) -> None:
        from tui_lora.finish import finished_lora

        if view.lora_file is not None:
            self.switch_screen(FinishScreen(run_folder, finished_lora(run_folder, view.lora_file), run_summary(view)))
        else:
            self.switch_screen(FailureScreen(run_folder, view))

    def leave_for(self, commands: FollowUp) -> None:
        """Quit the app, then run these `lora-wizard` commands in this terminal."""
        self.flush_draft()
        self.exit(commands)

    async def action_quit(self) -> None:
        self.flush_draft()
        if isinstance(self.screen, DashboardScreen) and self.screen.view.running:
            self.farewell = t("dashboard.farewell", run=str(self.screen.run_folder))
        await super().action_quit()

    # ----------------------------------------------------------------------------- the draft

    def save_draft(self) -> None:
        """Keep the draft on disk shortly (the last of a burst of keystrokes wins)."""
        if self._draft_timer is not None:
            self._draft_timer.stop()
        self._draft_timer = self.set_timer(DRAFT_SAVE_DELAY, self.flush_draft)

    def flush_draft(self) -> None:
        if self._draft_timer is not None:
            self._draft_timer.stop()
            self._draft_timer = None
        drafts.save_draft(self.draft, self.data_folder)

    # ----------------------------------------------------------------------------- the machine

    def machine_facts(self):
        """The machine's facts, read once (call from a worker thread: it may import torch)."""
        with self._facts_lock:
            if self.facts is None:
                output = Path(self.draft.get("output.dir") or ".").expanduser()
                self.facts = self.facts_source(output if output.is_absolute() else Path.cwd() / output)
            return self.facts

    def apply_recommendations(self, recommendations) -> list[str]:
        """The environment check's settings as defaults where the user has not chosen; returns
        the keys set. Precision stays `auto`: the engine picks it on the machine that trains."""
        self.recommendations = recommendations
        changed = [
            f"training.{key}"
            for key, value in recommendations.training_defaults().items()
            if key != "mixed_precision" and self.draft.set_default(f"training.{key}", value)
        ]
        if changed:
            self.save_draft()
        return changed

    # ----------------------------------------------------------------------------- settings

    def remember_output_dir(self, folder: Path) -> None:
        folder = Path(folder).expanduser()
        if self.settings.remember_output_dir(folder if folder.is_absolute() else Path.cwd() / folder):
            save_settings(self.settings, self.data_folder)

    def remember_webui_dir(self, folder: Path) -> None:
        self.settings.webui_dir = str(Path(folder).expanduser().resolve())
        save_settings(self.settings, self.data_folder)

    def _remember_theme(self, theme) -> None:
        if theme.name in self.themes and self.settings.theme != theme.name:
            self.settings.theme = theme.name
            save_settings(self.settings, self.data_folder)

    def action_next_theme(self) -> None:
        names = list(self.themes)
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]

    def switch_language(self, language: str) -> None:
        set_language(language)
        self.settings.language = language
        save_settings(self.settings, self.data_folder)
        translate_bindings(self)
        step = self.screen.name
        if step in SCREENS:  # rebuild the step in the new language, from the draft
            self.go_to(step)

    # ----------------------------------------------------------------------------- command palette

    def action_command_palette(self) -> None:
        if not CommandPalette.is_open(self):
            self.push_screen(CommandPalette(placeholder=t("palette.placeholder"), id="--command-palette"))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for name in self.themes:
            label = t("theme." + short_name(name))
            yield SystemCommand(t("command.theme", name=label), t("command.theme_help"), partial(setattr, self, "theme", name))
        for code, own_name in LANGUAGES.items():
            if code != current_language():
                yield SystemCommand(t("command.language", name=own_name), t("command.language_help"), partial(self.switch_language, code))
        if screen.name != HOME:
            yield SystemCommand(t("command.home"), t("command.home_help"), partial(self.go_to, HOME))
        yield SystemCommand(t("command.keys"), t("command.keys_help"), self.action_show_help_panel)
        yield SystemCommand(t("command.quit"), t("command.quit_help"), self.action_quit)


def run_app(answers_file: Path | None = None) -> FollowUp:
    """Run the wizard (on an answers file's answers, when given); what it left for comes back."""
    from engine.config import load_answers

    answers = load_answers(answers_file) if answers_file is not None else None
    return _run(WizardApp(answers=answers))


def run_dashboard(run_folder: Path) -> FollowUp:
    """`lora-wizard attach RUN` on a terminal: the run's dashboard; what it left for (a resume)
    comes back."""
    return _run(WizardApp(attach=run_folder))


def _run(app: WizardApp) -> FollowUp:
    follow_up = app.run() or []
    if app.farewell:
        print(app.farewell)
    return follow_up
