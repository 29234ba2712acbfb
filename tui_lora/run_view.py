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

# Reports kept for the moving average (each is a batch of step events written at one time).
SPEED_WINDOW = 10
# TensorBoard's default smoothing weight.
SMOOTHING = 0.6
LOG_LINES = 200

RUNNING_STATES = ("starting", "loading", "training")
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
    state: str = "starting"  # starting | loading | training | finished | failed | interrupted
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
    final: dict[str, Any] | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # (time, step) of the last reports of this attempt, for the moving average.
    reports: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=SPEED_WINDOW + 1))
    events_seen: int = 0
    show_path: Callable[[str], str] = str  # how the log shows a path (the dashboard: relative)

    # ------------------------------------------------------------------------------ folding

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        when = float(event.get("time", 0.0))
        self.events_seen += 1
        if kind == "started":
            self.attempts.append(Attempt(when, when))
            self.state, self.final = "loading", None
            self.total_steps = event.get("total_steps", self.total_steps)
            self.epochs = event.get("epochs", self.epochs)
            self.steps_per_epoch = event.get("steps_per_epoch", self.steps_per_epoch)
            self.pid = event.get("pid")
            self.reports.clear()
        elif self.attempts:
            self.attempts[-1].last = when
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event, when)
        text = describe(event, self.show_path)
        if text:
            self.log.extend(text.splitlines())

    def _on_ready(self, event: dict, when: float) -> None:
        self.state = "training"
        self.device, self.precision = event.get("device", ""), event.get("precision", "")
        self.total_steps = event.get("total_steps", self.total_steps)
        self.reports.append((when, self.step))  # the clock starts when the model is ready

    def _on_step(self, event: dict, when: float) -> None:
        self.state = "training"
        self.step, self.epoch = event["step"], event.get("epoch", self.epoch)
        self.total_steps = event.get("total_steps", self.total_steps)
        self.loss, self.lr = event.get("loss"), event.get("lr")
        if self.loss is not None:
            self.losses.append((self.step, float(self.loss)))
        if self.reports and self.reports[-1][0] == when:
            self.reports[-1] = (when, self.step)  # the same batch of reports
        else:
            self.reports.append((when, self.step))

    def _on_epoch(self, event: dict, when: float) -> None:
        self.epoch = event.get("epoch", self.epoch)

    def _on_resumed(self, event: dict, when: float) -> None:
        # Steps after a resume replace those written after the checkpoint it resumed from.
        self.step = event["step"]
        self.losses = [(step, loss) for step, loss in self.losses if step <= self.step]
        self.reports.clear()

    def _on_checkpoint(self, event: dict, when: float) -> None:
        self.checkpoints.append((event["step"], Path(event["path"])))

    def _on_saved(self, event: dict, when: float) -> None:
        self.saved.append(Path(event["path"]))

    def _on_sample(self, event: dict, when: float) -> None:
        prompts = list(event.get("prompts") or [])
        paths = [Path(p) for p in event.get("paths") or []]
        prompts += [""] * (len(paths) - len(prompts))
        self.samples = SamplesShown(event.get("step", self.step), list(zip(paths, prompts, strict=False)))

    def _on_finished(self, event: dict, when: float) -> None:
        self.state, self.final = "finished", event
        self.step = event.get("steps", self.step)

    def _on_failed(self, event: dict, when: float) -> None:
        self.state, self.final = "failed", event

    def _on_interrupted(self, event: dict, when: float) -> None:
        self.state, self.final = "interrupted", event

    def stopped_unexpectedly(self) -> None:
        """The engine is gone without a last word (SIGKILL, power cut): the run can be resumed."""
        if self.state in RUNNING_STATES:
            self.state = "stopped unexpectedly"

    # ------------------------------------------------------------------------------ reading

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

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
        if self.final and self.final.get("kind") == "finished":
            return Path(self.final["lora"])
        return None


def describe(event: dict[str, Any], show_path: Callable[[str], str] = str) -> str | None:
    """One plain line for an event (`attach` prints these; the dashboard's log shows them)."""
    kind = event.get("kind")
    if kind == "started":
        return f"started: {event.get('total_steps')} steps, {event.get('epochs')} epochs"
    if kind == "ready":
        notes = [f"note: {note}" for note in event.get("notes") or []]
        precision = PRECISION_NAMES.get(event.get("precision"), event.get("precision"))
        return "\n".join([f"training on {event.get('device')} in {precision}", *notes])
    if kind == "step":
        return f"step {event['step']}/{event.get('total_steps')}  epoch {event.get('epoch')}  loss {event.get('loss', 0):.4f}  lr {event.get('lr', 0):.2e}"
    if kind == "epoch":
        return f"epoch {event.get('epoch')}/{event.get('epochs')} done"
    if kind in ("checkpoint", "saved"):
        return f"{kind}: {show_path(event.get('path', ''))}"
    if kind == "checkpoint_skipped":
        return f"checkpoint skipped: {show_path(event.get('path', ''))} ({event.get('reason')})"
    if kind == "sample":
        return f"samples at step {event.get('step')}: {len(event.get('paths') or [])} images"
    if kind == "resumed":
        return f"resumed from step {event.get('step')}"
    if kind == "finished":
        return f"finished: {show_path(event.get('lora', ''))}"
    if kind == "failed":
        return f"failed: {event.get('message')}\n  remedy: {event.get('remedy', '')}"
    if kind == "interrupted":
        return f"interrupted at step {event.get('step')} ({event.get('reason')})"
    return None


def format_duration(seconds: float | None) -> str:
    """`1:02:03`, `4:05`; `-` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
