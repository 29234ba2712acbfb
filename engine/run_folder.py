"""Run folders: a training run as a durable thing on disk, and its state.

    <output dir>/<name>.run/
      answers.toml    the answers as trained, every path absolute
      events.jsonl    the event stream (docs/events.md)
      engine.lock     held by the one engine working on this run; holds its pid
      control/        request files: `stop`, `checkpoint` (read by the engine between steps)
      checkpoints/    resumable state (engine/checkpoint.py)
      error.log       the traceback of an unexpected failure

Everything goes through files in the run folder: no network listener anywhere. Starting the
engine on a folder is engine/launch.py. No torch here: the screens read run folders.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from engine.config import Answers, load_answers, save_answers
from engine.controls import Controls
from engine.errors import UserError
from engine.events import (
    FINAL_KINDS,
    Checkpointed,
    Event,
    Resumed,
    Started,
    Step,
    StoppedOnRequest,
    parse_event,
    read_events,
)

REQUESTS = ("stop", "checkpoint")  # the request files of `control/`
# The exit status of a run stopped on request, by the stop's reason (shells: 128 + the signal).
INTERRUPTED_EXIT = {"SIGINT": 130, "SIGTERM": 143, "stop requested": 130}


class RunState(str, Enum):
    """Where a run stands. `lora-wizard runs` and the home screen read it from the folder (its
    events and its lock); the dashboard folds it from the events as they come (starting, loading,
    training while the engine works)."""

    NOT_STARTED = "not started"
    STARTING = "starting"
    LOADING = "loading"
    TRAINING = "training"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    STOPPED_UNEXPECTEDLY = "stopped unexpectedly"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def key(self) -> str:
        """Its name in translation keys (`state.stopped_unexpectedly`)."""
        return self.value.replace(" ", "_")

    @property
    def live(self) -> bool:
        """An engine works on the run."""
        return self in (RunState.STARTING, RunState.LOADING, RunState.TRAINING, RunState.RUNNING)

    @property
    def resumable(self) -> bool:
        """`lora-wizard resume` continues it (from its newest checkpoint, or from the start)."""
        return self in (RunState.INTERRUPTED, RunState.FAILED, RunState.STOPPED_UNEXPECTEDLY)

    def exit_code(self, reason: str = "") -> int:
        """The exit status of a command that followed the run to this state: 0 finished (or still
        running, for a command that only started it), 130 / 143 stopped on request (`reason`, the
        `interrupted` event's), 1 otherwise."""
        if self is RunState.FINISHED or self.live:
            return 0
        if self is RunState.INTERRUPTED:
            return INTERRUPTED_EXIT.get(reason, 130)
        return 1


def run_folder_for(answers: Answers) -> Path:
    return answers.output.dir / f"{answers.output.name}.run"


def create_run_folder(answers: Answers) -> Path:
    """A fresh run folder with the frozen answers; an existing run is kept unless overwriting was asked."""
    folder = run_folder_for(answers)
    if folder.exists():
        if not answers.output.overwrite:
            raise UserError(
                "this output already has a run",
                where=folder,
                fix=f"resume it with `lora-wizard resume {folder}`, choose another `[output] name`, "
                "or set `[output] overwrite = true` to start over",
            )
        with RunLock(folder):  # never delete a run that an engine is working on
            pass
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_answers(answers, folder / "answers.toml")
    return folder


def load_run_answers(folder: Path) -> Answers:
    answers_file = folder / "answers.toml"
    if not answers_file.is_file():
        raise UserError("this is not a run folder (no answers.toml)", where=folder, fix="give a `<name>.run` folder from the output folder")
    return load_answers(answers_file)


class RunLock:
    """One engine per run folder: an exclusive lock on `engine.lock`, released when the process ends."""

    def __init__(self, folder: Path):
        self.path = folder / "engine.lock"
        self._handle = None

    def __enter__(self) -> RunLock:
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        # `engine_running` probes the lock for an instant: try again for a moment before giving up.
        deadline = time.monotonic() + 2.0
        while not (locked := _try_lock(handle)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not locked:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            raise UserError(
                f"an engine (pid {pid}) is already working on this run",
                where=self.path.parent,
                fix=f"follow it with `lora-wizard attach {self.path.parent}`, or stop it with `lora-wizard stop {self.path.parent}`",
            )
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None


def _try_lock(handle) -> bool:
    try:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def engine_running(folder: Path) -> bool:
    """Whether an engine holds this run's lock right now."""
    path = folder / "engine.lock"
    if not path.exists():
        return False
    with path.open("a+") as handle:
        return not _try_lock(handle)


def request(folder: Path, what: str) -> Path:
    """Ask the engine of a run to `stop` or write a `checkpoint` (it reads the request between steps)."""
    control = folder / "control"
    control.mkdir(exist_ok=True)
    path = control / what
    path.touch()
    return path


class RunControls(Controls):
    """SIGINT / SIGTERM and request files become requests the loop sees between steps."""

    def __init__(self, folder: Path):
        self.control = folder / "control"
        self.signal_name: str | None = None

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def discard_stale_requests(self) -> None:
        """Delete the request files written before this engine took the run's lock (RunLock
        rewrites `engine.lock` then): they were meant for an engine that has ended. One written
        since is kept, as the run shows as running from that moment and may be asked to stop."""
        lock = self.control.parent / "engine.lock"
        taken_at = lock.stat().st_mtime_ns if lock.exists() else math.inf
        for what in REQUESTS:
            path = self.control / what
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime_ns < taken_at:
                    path.unlink()

    def poll(self) -> str | None:
        if self.signal_name:
            self.reason = self.signal_name
            return "stop"
        for what in REQUESTS:
            path = self.control / what
            if path.exists():
                path.unlink(missing_ok=True)
                self.reason = "stop requested" if what == "stop" else ""
                return what
        return None


@dataclass
class RunStatus:
    folder: Path
    state: RunState
    step: int
    total_steps: int
    last_event: Event | None

    @property
    def exit_code(self) -> int:
        return self.state.exit_code(self.last_event.reason if isinstance(self.last_event, StoppedOnRequest) else "")

    @property
    def progress(self) -> str:
        return f"{self.step}/{self.total_steps}" if self.total_steps else "-"


def run_status(folder: Path) -> RunStatus:
    """The state of a run from its events and its lock. A run with no live engine and no final
    event stopped unexpectedly (power cut, SIGKILL, out-of-memory killer)."""
    step = total = 0
    last = None
    for event in filter(None, map(parse_event, read_events(folder / "events.jsonl"))):
        last = event
        if isinstance(event, Started):
            total = event.total_steps or total
        elif isinstance(event, Step | Resumed | Checkpointed):
            step = event.step  # after a resume, step events restart from the checkpoint
    if engine_running(folder):
        state = RunState.RUNNING
    elif last is None:
        state = RunState.NOT_STARTED
    elif last.kind in FINAL_KINDS:
        state = RunState(last.kind)
    else:
        state = RunState.STOPPED_UNEXPECTEDLY
    return RunStatus(folder, state, step, total, last)


def find_runs(root: Path) -> list[Path]:
    """Run folders under `root` (itself, its children and grandchildren)."""
    candidates = [root, *root.glob("*.run"), *root.glob("*/*.run")]
    return sorted({p for p in candidates if p.is_dir() and (p / "answers.toml").is_file() and p.name.endswith(".run")})
