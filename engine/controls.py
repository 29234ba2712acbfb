"""How the training loop is asked to stop or checkpoint from outside, and how it ends: a result,
a stop on request, or a failure with a remedy for the user (engine/launch.py turns each into the
run's last event and its exit status)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class Interrupted(Exception):
    """A stop was requested (SIGINT, SIGTERM or `lora-wizard stop`); a checkpoint was written."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"stopped at step {step} ({reason})")
        self.step = step
        self.reason = reason


class Controls:
    """Requests from outside the loop, polled between steps: None, "checkpoint" or "stop"."""

    reason = ""

    def poll(self) -> str | None:
        return None


class TrainingFailed(Exception):
    """Training cannot go on (NaN loss, out of memory); carries a remedy for the user."""

    def __init__(self, message: str, remedy: str):
        super().__init__(message)
        self.remedy = remedy


@dataclass
class TrainResult:
    lora_path: Path
    steps: int
    epochs: int
