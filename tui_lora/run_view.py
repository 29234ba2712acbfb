"""What the dashboard shows of a run, folded from its event stream (docs/events.md).

`RunView.apply(event)` takes the events in order, as `follow_events` yields them; everything the
panels show is read off the view: progress, speed and ETA, the loss curve with its smoothed twin,
the checkpoints, the latest samples, a log tail and, at the end, how the run ended. No Textual
here, no torch: the view is plain data, so a recorded event stream tests every number.

Speed is a moving average over the last few reports: the engine writes its step events in
batches (every `log_every_steps`, when it reads the loss back from the GPU), so the batches'
times, not the single steps', are what can be averaged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.events import (
    Checkpointed,
    CheckpointSkipped,
    EpochEnded,
    Event,
    Failed,
    Finished,
    Ready,
    Resumed,
    Sampled,
    Saved,
    Started,
    Step,
    StoppedOnRequest,
    parse_event,
)
from engine.run_folder import RunState

# Reports kept for the moving average (each is a batch of step events written at one time).
SPEED_WINDOW = 10
# TensorBoard's default smoothing weight.
SMOOTHING = 0.6
LOG_LINES = 200

# The engine's precision values as a person reads them ("no" mixed precision is fp32).
PRECISION_NAMES = {"no": "fp32", "fp16": "fp16 mixed precision", "bf16": "bf16 mixed precision"}


@dataclass(frozen=True)
class SamplesShown:
    step: int
    images: list[tuple[Path, str]]  # (image, its prompt)


@dataclass
class Attempt:
    """One start or resume of the engine: its events' times, for the elapsed training time."""

    started: float
    last: float


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first values are
    not pulled towards zero."""
    smoothed, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = average * weight + (1 - weight) * value
        smoothed.append(average / (1 - weight**count))
    return smoothed


@dataclass
class RunView:
    run_folder: Path
    state: RunState = RunState.STARTING  # starting, loading, training; then how it ended
    total_steps: int = 0
    epochs: int = 0
    steps_per_epoch: int = 0
    step: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    device: str = ""
    precision: str = ""
    pid: int | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)
    samples: SamplesShown | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    final: Finished | Failed | StoppedOnRequest | None = None  # how the run ended
    attempts: list[Attempt] = field(default_factory=list)
    # (time, step) of the last reports of this attempt, for the moving average.
    reports: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=SPEED_WINDOW + 1))
    events_seen: int = 0
    show_path: Callable[[str], str] = str  # how the log shows a path (the dashboard: relative)

    # ------------------------------------------------------------------------------ folding

    def apply(self, data: dict[str, Any]) -> None:
        """Fold in one event, given as its JSON object (a kind this version does not know counts as
        seen and changes nothing)."""
        self.events_seen += 1
        event = parse_event(data)
        if event is None:
            return
        if isinstance(event, Started):
            self.attempts.append(Attempt(event.time, event.time))
            self.state, self.final = RunState.LOADING, None
            self.total_steps = event.total_steps or self.total_steps
            self.epochs = event.epochs or self.epochs
            self.steps_per_epoch = event.steps_per_epoch or self.steps_per_epoch
            self.pid = event.pid
            self.reports.clear()
        elif self.attempts:
            self.attempts[-1].last = event.time
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)
        text = describe(event, self.show_path)
        if text:
            self.log.extend(text.splitlines())

    def _on_ready(self, event: Ready) -> None:
        self.state = RunState.TRAINING
        self.device, self.precision = event.device, event.precision
        self.total_steps = event.total_steps or self.total_steps
        self.reports.append((event.time, self.step))  # the clock starts when the model is ready

    def _on_step(self, event: Step) -> None:
        self.state = RunState.TRAINING
        self.step, self.epoch = event.step, event.epoch or self.epoch
        self.total_steps = event.total_steps or self.total_steps
        self.loss, self.lr = event.loss, event.lr
        if self.loss is not None:
            self.losses.append((self.step, float(self.loss)))
        if self.reports and self.reports[-1][0] == event.time:
            self.reports[-1] = (event.time, self.step)  # the same batch of reports
        else:
            self.reports.append((event.time, self.step))

    def _on_epoch(self, event: EpochEnded) -> None:
        self.epoch = event.epoch or self.epoch

    def _on_resumed(self, event: Resumed) -> None:
        # Steps after a resume replace those written after the checkpoint it resumed from.
        self.step = event.step
        self.losses = [(step, loss) for step, loss in self.losses if step <= self.step]
        self.reports.clear()

    def _on_checkpoint(self, event: Checkpointed) -> None:
        self.checkpoints.append((event.step, Path(event.path)))

    def _on_saved(self, event: Saved) -> None:
        self.saved.append(Path(event.path))

    def _on_sample(self, event: Sampled) -> None:
        paths = [Path(p) for p in event.paths]
        prompts = list(event.prompts) + [""] * (len(paths) - len(event.prompts))
        self.samples = SamplesShown(event.step, list(zip(paths, prompts, strict=False)))

    def _on_finished(self, event: Finished) -> None:
        self.state, self.final = RunState.FINISHED, event
        self.step = event.steps or self.step

    def _on_failed(self, event: Failed) -> None:
        self.state, self.final = RunState.FAILED, event

    def _on_interrupted(self, event: StoppedOnRequest) -> None:
        self.state, self.final = RunState.INTERRUPTED, event

    def stopped_unexpectedly(self) -> None:
        """The engine is gone without a last word (SIGKILL, power cut): the run can be resumed."""
        if self.state.live:
            self.state = RunState.STOPPED_UNEXPECTEDLY

    # ------------------------------------------------------------------------------ reading

    @property
    def running(self) -> bool:
        return self.state.live

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    def steps_per_second(self) -> float | None:
        """Steps a second over the last reports (None until two reports are apart in time)."""
        if len(self.reports) < 2:
            return None
        (first_time, first_step), (last_time, last_step) = self.reports[0], self.reports[-1]
        if last_time <= first_time or last_step <= first_step:
            return None
        return (last_step - first_step) / (last_time - first_time)

    def eta_seconds(self, now: float) -> float | None:
        """Seconds left: the remaining steps at the moving average's speed, counted down from the
        last report (so it moves between reports too, and never goes below zero)."""
        speed = self.steps_per_second()
        if speed is None or not self.running:
            return None
        remaining = max(0, self.total_steps - self.step) / speed
        return max(0.0, remaining - max(0.0, now - self.reports[-1][0]))

    def elapsed_seconds(self, now: float) -> float:
        """Time the engine has spent on this run, over every attempt; the current one counts up
        to `now` while it runs."""
        total = 0.0
        for index, attempt in enumerate(self.attempts):
            current = index == len(self.attempts) - 1 and self.running
            total += (max(now, attempt.last) if current else attempt.last) - attempt.started
        return total

    def smoothed_losses(self, weight: float = SMOOTHING) -> list[float]:
        return smooth([loss for _, loss in self.losses], weight)

    @property
    def lora_file(self) -> Path | None:
        if isinstance(self.final, Finished):
            return Path(self.final.lora)
        return None


def describe(event: Event | dict[str, Any] | None, show_path: Callable[[str], str] = str) -> str | None:
    """One plain line for an event (`attach` prints these; the dashboard's log shows them)."""
    if isinstance(event, dict):
        event = parse_event(event)
    if isinstance(event, Started):
        return f"started: {event.total_steps} steps, {event.epochs} epochs"
    if isinstance(event, Ready):
        notes = [f"note: {note}" for note in event.notes]
        precision = PRECISION_NAMES.get(event.precision, event.precision)
        return "\n".join([f"training on {event.device} in {precision}", *notes])
    if isinstance(event, Step):
        return f"step {event.step}/{event.total_steps}  epoch {event.epoch}  loss {event.loss or 0:.4f}  lr {event.lr or 0:.2e}"
    if isinstance(event, EpochEnded):
        return f"epoch {event.epoch}/{event.epochs} done"
    if isinstance(event, Checkpointed | Saved):
        return f"{event.kind}: {show_path(event.path)}"
    if isinstance(event, CheckpointSkipped):
        return f"checkpoint skipped: {show_path(event.path)} ({event.reason})"
    if isinstance(event, Sampled):
        return f"samples at step {event.step}: {len(event.paths)} images"
    if isinstance(event, Resumed):
        return f"resumed from step {event.step}"
    if isinstance(event, Finished):
        return f"finished: {show_path(event.lora)}"
    if isinstance(event, Failed):
        return f"failed: {event.message}\n  remedy: {event.remedy}"
    if isinstance(event, StoppedOnRequest):
        return f"interrupted at step {event.step} ({event.reason})"
    return None


def format_duration(seconds: float | None) -> str:
    """`1:02:03`, `4:05`; `-` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
