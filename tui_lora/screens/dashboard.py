"""The training dashboard: a run followed live from its event stream.

The engine runs as its own process (engine/launch.py); this screen only reads. A thread worker
follows `events.jsonl` into a queue; a timer folds what has arrived into the `RunView` and
redraws the panels a few times a second, so a flood of events (attaching to a long run) costs
one redraw. Another worker reads the GPUs and the CPU (the app reads them itself, so attaching
from another terminal shows them too). Leaving the dashboard never stops training; `c` and `s`
write the engine's request files, as `lora-wizard checkpoint` and `lora-wizard stop` do.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from tui_lora.host import WizardNode
from tui_lora.i18n import t
from tui_lora.run_view import RunView
from tui_lora.widgets.bindings import translate_bindings
from tui_lora.widgets.confirm import ConfirmScreen
from tui_lora.widgets.gpu_panel import GpuPanel
from tui_lora.widgets.log_panel import LogPanel
from tui_lora.widgets.loss_chart import LossChart
from tui_lora.widgets.progress_panel import ProgressPanel
from tui_lora.widgets.sample_panel import SamplePanel
from tui_lora.widgets.status_rows import shown_path

REDRAW_SECONDS = 0.5
STATS_SECONDS = 2.0
END_OF_STREAM = None  # put on the queue when the engine is gone and every event is read


class DashboardScreen(WizardNode, Screen):
    BINDINGS = [
        Binding("c", "checkpoint", "key.dashboard.checkpoint"),
        Binding("s", "stop", "key.dashboard.stop"),
        Binding("q,escape", "leave", "key.dashboard.leave"),
    ]

    def __init__(self, run_folder: Path, *, clock: Callable[[], float] = time.time, monitor=None) -> None:
        """`clock` and `monitor` (a SystemMonitor) are the machine's unless a test gives its own."""
        super().__init__(name="dashboard")
        translate_bindings(self)
        self.run_folder = Path(run_folder)
        self.view = RunView(self.run_folder, show_path=lambda path: Path(path).name)  # the panel is narrow
        self.clock = clock
        self.monitor = monitor
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.shown_samples = None
        self.ended = False

    def compose(self) -> ComposeResult:
        yield Static(self.title_text(), id="step-bar")
        with Vertical(id="dashboard"):
            yield ProgressPanel(id="progress")
            with Grid(id="panels"):
                yield LossChart(id="loss")
                yield GpuPanel(id="gpu")
                yield SamplePanel(id="samples")
                yield LogPanel(id="log")
        yield Footer()

    def title_text(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {t('app.name')} ", style="bold reverse")
        text.append(f"  {t('dashboard.title', name=self.run_folder.name.removesuffix('.run'))}", style="bold")
        text.append(f"  {shown_path(self.run_folder)}", style="dim")
        return text

    def on_mount(self) -> None:
        for panel_id, title in (("loss", "dashboard.panel.loss"), ("gpu", "dashboard.panel.gpu"),
                                ("samples", "dashboard.panel.samples"), ("log", "dashboard.panel.log")):
            self.query_one(f"#{panel_id}").border_title = t(title)
        self.follow_run()
        self.read_machine()
        self.set_interval(REDRAW_SECONDS, self.redraw)
        self.redraw()

    # ------------------------------------------------------------------------------ workers

    @work(thread=True, exclusive=True, group="follow", exit_on_error=False)
    def follow_run(self) -> None:
        """Every event of the run, then new ones while the engine holds the run's lock."""
        from engine.events import follow_events
        from engine.run_folder import engine_running

        worker = get_current_worker()
        path = self.run_folder / "events.jsonl"
        for event in follow_events(path, keep_going=lambda: not worker.is_cancelled and engine_running(self.run_folder)):
            if worker.is_cancelled:
                return
            self.events.put(event)
        if not worker.is_cancelled:
            self.events.put(END_OF_STREAM)

    @work(thread=True, exclusive=True, group="machine", exit_on_error=False)
    def read_machine(self) -> None:
        from tui_lora.system_stats import SystemMonitor

        worker = get_current_worker()
        monitor = self.monitor or SystemMonitor()
        try:
            while not worker.is_cancelled:
                stats = monitor.read()
                self.app.call_from_thread(self.show_machine, stats)
                deadline = time.monotonic() + STATS_SECONDS
                while time.monotonic() < deadline and not worker.is_cancelled:
                    time.sleep(0.1)
        finally:
            if self.monitor is None:
                monitor.close()

    # ------------------------------------------------------------------------------ drawing

    def show_machine(self, stats) -> None:
        self.query_one(GpuPanel).show(stats)

    def redraw(self) -> None:
        """Fold the events that arrived into the view and redraw; at the end of the stream,
        show how the run ended."""
        arrived = False
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if event is END_OF_STREAM:
                self.ended = True
                self.view.stopped_unexpectedly()
                break
            self.view.apply(event)
            arrived = True
        now = self.clock()
        self.query_one(ProgressPanel).show(self.view, now)
        if arrived:
            self.query_one(LossChart).show(self.view)
            self.query_one(LogPanel).show(self.view)
            if self.view.samples is not self.shown_samples:
                self.shown_samples = self.view.samples
                samples = self.view.samples
                self.query_one(SamplePanel).show(samples.step if samples else 0, samples.images if samples else [])
        if self.ended:
            self.ended = False  # show the ending once
            while self.app.screen is not self:  # a question still open (stop?) has lost its point
                self.app.pop_screen()
            self.wizard.show_run_ending(self.run_folder, self.view)

    def on_resize(self) -> None:
        self.query_one(LogPanel).show(self.view)

    # ------------------------------------------------------------------------------ keys

    def action_checkpoint(self) -> None:
        if self._engine_is_running():
            from engine.run_folder import request

            request(self.run_folder, "checkpoint")
            self.notify(t("dashboard.checkpoint_requested"))

    def action_stop(self) -> None:
        if not self._engine_is_running():
            return

        def answered(stop: bool | None) -> None:
            if stop:
                from engine.run_folder import request

                request(self.run_folder, "stop")
                self.notify(t("dashboard.stop_requested"))

        self.app.push_screen(ConfirmScreen(t("dashboard.stop_question")), answered)

    def action_leave(self) -> None:
        self.wizard.leave_dashboard(self.run_folder, still_running=self.view.running)

    def _engine_is_running(self) -> bool:
        from engine.run_folder import engine_running

        if self.view.running and engine_running(self.run_folder):
            return True
        self.notify(t("dashboard.not_running"), severity="warning")
        return False
