"""Run folders: where a training run keeps its frozen answers, its event log and its outputs.

    <output dir>/<name>.run/
      answers.toml    the answers as trained, every path absolute
      events.jsonl    the event stream (docs/events.md)
"""

from __future__ import annotations

import shutil
import traceback
from pathlib import Path

from engine.config import Answers, save_answers
from engine.errors import UserError
from engine.events import EventLog, Listener
from engine.plan import TrainingPlan

OOM_REMEDY = (
    "out of memory: use batch size 1, turn on gradient checkpointing, keep latent caching on, "
    "use fp16/bf16 mixed precision, or lower the resolution"
)


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
                fix="choose another `[output] name`, or set `[output] overwrite = true` to start over",
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_answers(answers, folder / "answers.toml")
    return folder


def execute_run(plan: TrainingPlan, folder: Path, listeners: list[Listener] | None = None) -> int:
    """Train in `folder`, recording the outcome as the last event. Returns the exit status."""
    from engine.train import TrainingFailed, train

    with EventLog(folder / "events.jsonl", listeners) as events:
        events.emit(
            "started",
            run_dir=str(folder),
            total_steps=plan.total_steps,
            epochs=plan.epochs,
            steps_per_epoch=plan.steps_per_epoch,
            breakdown=plan.breakdown(),
            settings=plan.settings(),
        )
        try:
            result = train(plan, events)
        except TrainingFailed as exc:
            events.emit("failed", message=str(exc), remedy=exc.remedy)
            return 1
        except UserError as exc:
            events.emit("failed", message=exc.render(), remedy=exc.fix or "")
            raise
        except Exception as exc:
            remedy = OOM_REMEDY if "out of memory" in str(exc).lower() else "see the traceback in the run's log"
            events.emit("failed", message=f"{type(exc).__name__}: {exc}", remedy=remedy)
            (folder / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            raise
        events.emit("finished", lora=str(result.lora_path), steps=result.steps, epochs=result.epochs)
    return 0
