"""Run folders: a training run as a durable thing on disk.

    <output dir>/<name>.run/
      answers.toml    the answers as trained, every path absolute
      events.jsonl    the event stream (docs/events.md)
      engine.lock     held by the one engine working on this run; holds its pid
      control/        request files: `stop`, `checkpoint` (read by the engine between steps)
      checkpoints/    resumable state (engine/checkpoint.py)
      error.log       the traceback of an unexpected failure

Everything goes through files in the run folder: no network listener anywhere.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

from engine.config import Answers, load_answers, save_answers
from engine.controls import Controls
from engine.errors import UserError
from engine.events import FINAL_KINDS, EventLog, Listener, read_events
from engine.plan import TrainingPlan

OOM_REMEDY = (
    "out of memory: use batch size 1, turn on gradient checkpointing, keep latent caching on, "
    "use fp16/bf16 mixed precision, or lower the resolution"
)
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143, "stop requested": 130}
REQUESTS = ("stop", "checkpoint")  # the request files of `control/`


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
    state: str  # running | finished | failed | interrupted | stopped unexpectedly | not started
    step: int
    total_steps: int
    last_event: dict | None

    @property
    def progress(self) -> str:
        return f"{self.step}/{self.total_steps}" if self.total_steps else "-"


def run_status(folder: Path) -> RunStatus:
    """The state of a run from its events and its lock. A run with no live engine and no final
    event stopped unexpectedly (power cut, SIGKILL, out-of-memory killer)."""
    step = total = 0
    last = None
    for event in read_events(folder / "events.jsonl"):
        last = event
        if event["kind"] == "started":
            total = event.get("total_steps", total)
        elif event["kind"] in ("step", "resumed", "checkpoint"):
            step = event.get("step", step)  # after a resume, step events restart from the checkpoint
    if engine_running(folder):
        state = "running"
    elif last is None:
        state = "not started"
    elif last["kind"] in FINAL_KINDS:
        state = last["kind"]
    else:
        state = "stopped unexpectedly"
    return RunStatus(folder, state, step, total, last)


def find_runs(root: Path) -> list[Path]:
    """Run folders under `root` (itself, its children and grandchildren)."""
    candidates = [root, *root.glob("*.run"), *root.glob("*/*.run")]
    return sorted({p for p in candidates if p.is_dir() and (p / "answers.toml").is_file() and p.name.endswith(".run")})


def execute_run(plan: TrainingPlan, folder: Path, listeners: list[Listener] | None = None, *, resume: bool = False) -> int:
    """Train in `folder`, recording the outcome as the last event. Returns the exit status.

    The caller holds the run's `RunLock` (taken as early as possible, so that a detached engine is
    seen as running from its first second)."""
    from engine.controls import Interrupted, TrainingFailed
    from engine.train import train

    with EventLog(folder / "events.jsonl", listeners) as events:
        controls = RunControls(folder)
        # A `stop` that came after the last engine's final check would stop this one at once.
        controls.discard_stale_requests()
        controls.install_signal_handlers()
        events.emit(
            "started",
            run_dir=str(folder),
            pid=os.getpid(),
            total_steps=plan.total_steps,
            epochs=plan.epochs,
            steps_per_epoch=plan.steps_per_epoch,
            breakdown=plan.breakdown(),
            settings=plan.settings(),
        )
        try:
            result = train(plan, events, run_dir=folder, controls=controls, resume=resume)
        except Interrupted as exc:
            events.emit("interrupted", step=exc.step, reason=exc.reason, resume=f"lora-wizard resume {folder}")
            return EXIT_INTERRUPTED.get(exc.reason, 130)
        except TrainingFailed as exc:
            events.emit("failed", message=str(exc), remedy=exc.remedy, resume=f"lora-wizard resume {folder}")
            return 1
        except UserError as exc:
            events.emit("failed", message=exc.render(), remedy=exc.fix or "")
            raise
        except Exception as exc:
            remedy = OOM_REMEDY if "out of memory" in str(exc).lower() else f"see {folder / 'error.log'}"
            (folder / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            events.emit("failed", message=f"{type(exc).__name__}: {exc}", remedy=remedy, resume=f"lora-wizard resume {folder}")
            return 1
        events.emit("finished", lora=str(result.lora_path), steps=result.steps, epochs=result.epochs)
    return 0


def engine_command(folder: Path, *, resume: bool = False, processes: int = 1, launcher_args: list[str] | None = None) -> list[str]:
    """The command that runs the engine on a run folder: one process, or torchrun starting one
    per GPU (`launcher_args` passes torchrun's multi-node options: --nnodes, --node-rank,
    --rdzv-endpoint ...)."""
    import sys

    engine = ["-m", "engine", "run", str(folder)] + (["--resume"] if resume else [])
    if processes == 1 and not launcher_args:
        return [sys.executable, *engine]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
    launcher += launcher_args or ["--standalone"]
    return [*launcher, *engine]


def spawn_detached(folder: Path, *, resume: bool = False, processes: int = 1, launcher_args: list[str] | None = None,
                   wait_seconds: float = 60.0) -> int:
    """Start the engine on `folder` as its own process, outside this terminal's session, so that
    closing the terminal or dropping SSH does not stop it. Returns its pid once it holds the lock."""
    import subprocess
    import sys
    import time

    command = engine_command(folder, resume=resume, processes=processes, launcher_args=launcher_args)
    log = (folder / "engine.log").open("ab")
    options: dict = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT, "close_fds": True}
    if os.name == "nt":  # pragma: no cover - Windows: no console, own process group
        options["creationflags"] = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        options["start_new_session"] = True  # no controlling terminal: no SIGHUP when it closes
    process = subprocess.Popen(command, **options)
    log.close()
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if engine_running(folder):
            return process.pid
        if process.poll() is not None:
            tail = (folder / "engine.log").read_text(encoding="utf-8", errors="replace")[-2000:]
            raise UserError(f"the engine stopped at once:\n{tail}", where=folder)
        time.sleep(0.05)
    print(f"warning: the engine (pid {process.pid}) has not started within {wait_seconds:.0f} s; "
          f"see {folder / 'engine.log'}", file=sys.stderr)
    return process.pid


def run_launched(folder: Path, listeners: list[Listener], *, resume: bool = False, processes: int = 1,
                 launcher_args: list[str] | None = None) -> int:
    """Run the engine as child processes (torchrun) and relay the run's events to `listeners`
    until they end. Returns the exit status the run's last event calls for."""
    import subprocess
    import time

    from engine.events import follow_events

    command = engine_command(folder, resume=resume, processes=processes, launcher_args=launcher_args)
    log = (folder / "engine.log").open("ab")
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    seen = len(list(read_events(folder / "events.jsonl")))  # events of earlier attempts
    try:
        for index, event in enumerate(follow_events(folder / "events.jsonl", keep_going=lambda: child.poll() is None)):
            if index >= seen:
                for listener in listeners:
                    listener(event)
    except KeyboardInterrupt:  # Ctrl-C reached the engine processes too: wait for their checkpoint
        while child.poll() is None:
            time.sleep(0.2)
    child.wait()
    status = run_status(folder)
    if status.state == "finished":
        return 0
    if status.state == "interrupted":
        return EXIT_INTERRUPTED.get((status.last_event or {}).get("reason", ""), 130)
    if status.state != "failed":  # a process died without a word: record it, with its last words
        log_tail = (folder / "engine.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        with EventLog(folder / "events.jsonl") as events:
            event = events.emit("failed", message=f"the engine processes exited with status {child.returncode}: " + " | ".join(log_tail),
                                remedy=f"see {folder / 'engine.log'}", resume=f"lora-wizard resume {folder}")
        for listener in listeners:
            listener(event)
    return 1
