"""Starting the engine on a run folder: in this process, as a detached process that outlives the
terminal, or through torchrun (one process per GPU); and the Start sequence the wizard's Review
and `lora-wizard train --detach` share (`start_run`)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path

from engine.config import Answers
from engine.errors import UserError
from engine.events import EventLog, Failed, Finished, Listener, Started, StoppedOnRequest, read_events
from engine.plan import TrainingPlan
from engine.run_folder import RunControls, RunState, create_run_folder, engine_running, run_status

OOM_REMEDY = (
    "out of memory: use batch size 1, turn on gradient checkpointing, keep latent caching on, "
    "use fp16/bf16 mixed precision, or lower the resolution"
)


def prepare_run(answers: Answers) -> tuple[TrainingPlan, Path]:
    """The model files and every image checked (before any GPU time), then a fresh run folder."""
    from engine.plan import prepare_plan

    plan = prepare_plan(answers)
    return plan, create_run_folder(plan.answers)


def start_run(answers: Answers, *, spawn: Callable[[Path], int] | None = None) -> tuple[Path, int]:
    """Start: check, create the run folder, start the engine on it detached (`spawn`, given the
    folder; default one process per `[training] processes`). The folder and the engine's pid."""
    plan, folder = prepare_run(answers)
    processes = plan.answers.training.processes
    pid = (spawn or (lambda f: spawn_detached(f, processes=processes)))(folder)
    return folder, pid


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
        events.emit(Started(
            run_dir=str(folder),
            pid=os.getpid(),
            total_steps=plan.total_steps,
            epochs=plan.epochs,
            steps_per_epoch=plan.steps_per_epoch,
            breakdown=plan.breakdown(),
            settings=plan.settings(),
        ))
        try:
            result = train(plan, events, run_dir=folder, controls=controls, resume=resume)
        except Interrupted as exc:
            events.emit(StoppedOnRequest(step=exc.step, reason=exc.reason, resume=f"lora-wizard resume {folder}"))
            return RunState.INTERRUPTED.exit_code(exc.reason)
        except TrainingFailed as exc:
            events.emit(Failed(message=str(exc), remedy=exc.remedy, resume=f"lora-wizard resume {folder}"))
            return RunState.FAILED.exit_code()
        except UserError as exc:
            events.emit(Failed(message=exc.render(), remedy=exc.fix or ""))
            raise
        except Exception as exc:
            remedy = OOM_REMEDY if "out of memory" in str(exc).lower() else f"see {folder / 'error.log'}"
            (folder / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            events.emit(Failed(message=f"{type(exc).__name__}: {exc}", remedy=remedy, resume=f"lora-wizard resume {folder}"))
            return RunState.FAILED.exit_code()
        events.emit(Finished(lora=str(result.lora_path), steps=result.steps, epochs=result.epochs))
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
    if status.state in (RunState.FINISHED, RunState.INTERRUPTED):
        return status.exit_code
    if status.state != RunState.FAILED:  # a process died without a word: record it, with its last words
        log_tail = (folder / "engine.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        with EventLog(folder / "events.jsonl") as events:
            event = events.emit(Failed(message=f"the engine processes exited with status {child.returncode}: " + " | ".join(log_tail),
                                       remedy=f"see {folder / 'engine.log'}", resume=f"lora-wizard resume {folder}"))
        for listener in listeners:
            listener(event)
    return RunState.FAILED.exit_code()
