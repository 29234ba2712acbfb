"""One line of the pre-flight check: what was found, how bad it is, and what to do."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail"]
STATUS_ORDER: dict[str, int] = {"ok": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class CheckItem:
    id: str  # stable, e.g. "python", "gpu.0", "package.peft"
    group: str  # "system", "gpu", "packages", "run"
    title: str
    status: Status
    summary: str  # one line: what was found
    remedy: str | None = None  # one line: what to do; None when nothing is to be done
    key: str | None = None  # the answers-file key the remedy is about, for the wizard's own wording


def worst(items: Iterable[CheckItem]) -> Status:
    return max((item.status for item in items), key=STATUS_ORDER.__getitem__, default="ok")
