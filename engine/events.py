"""The run's event stream: append-only JSON lines, the only contract between engine and dashboard.

Every event is one JSON object on one line with `v` (schema version), `time` (Unix seconds) and
`kind`. docs/events.md documents each kind and its fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

EVENT_SCHEMA_VERSION = 1

Listener = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class Event:
    """One event; each kind below is its own class, with the fields docs/events.md lists. On the
    wire (events.jsonl, the listeners, `train`'s JSON lines) an event is its JSON object:
    `as_json()` writes it, `parse_event()` reads it back, tolerant of old logs (a missing field
    takes its default) and of newer ones (an unknown field is ignored)."""

    KIND: ClassVar[str] = ""
    time: float = 0.0

    @property
    def kind(self) -> str:
        return self.KIND

    def as_json(self) -> dict[str, Any]:
        # A field with no value (None) is left out, as the engine always has: e.g. `resume` of a
        # run that cannot be resumed.
        fields_ = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "time" and getattr(self, f.name) is not None}
        return {"v": EVENT_SCHEMA_VERSION, "time": self.time, "kind": self.KIND, **fields_}


@dataclass(frozen=True, kw_only=True)
class Started(Event):
    KIND = "started"
    run_dir: str = ""
    pid: int | None = None  # the engine's main process
    total_steps: int = 0
    epochs: int = 0
    steps_per_epoch: int = 0
    breakdown: list[str] = field(default_factory=list)  # the step arithmetic, line by line
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Ready(Event):
    KIND = "ready"
    device: str = ""
    precision: str = ""
    total_steps: int = 0
    notes: list[str] = field(default_factory=list)
    cpu_threads: int | None = None  # torch's CPU threads, when the engine chose them


@dataclass(frozen=True, kw_only=True)
class Step(Event):
    KIND = "step"
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None


@dataclass(frozen=True, kw_only=True)
class EpochEnded(Event):
    KIND = "epoch"
    epoch: int = 0
    epochs: int = 0
    step: int = 0


@dataclass(frozen=True, kw_only=True)
class Sampled(Event):
    KIND = "sample"
    step: int = 0
    epoch: int = 0
    paths: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Checkpointed(Event):
    KIND = "checkpoint"
    path: str = ""
    step: int = 0
    epoch: int = 0  # the next epoch to run, 0-based


@dataclass(frozen=True, kw_only=True)
class CheckpointSkipped(Event):
    KIND = "checkpoint_skipped"
    path: str = ""
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Resumed(Event):
    KIND = "resumed"
    step: int = 0
    epoch: int = 0
    checkpoint: str = ""


@dataclass(frozen=True, kw_only=True)
class Saved(Event):
    KIND = "saved"
    path: str = ""
    step: int = 0
    epoch: int = 0


@dataclass(frozen=True, kw_only=True)
class StoppedOnRequest(Event):
    KIND = "interrupted"
    step: int = 0
    reason: str = ""  # SIGINT, SIGTERM, stop requested
    resume: str = ""  # the command that continues the run


@dataclass(frozen=True, kw_only=True)
class Finished(Event):
    KIND = "finished"
    lora: str = ""
    steps: int = 0
    epochs: int = 0


@dataclass(frozen=True, kw_only=True)
class Failed(Event):
    KIND = "failed"
    message: str = ""
    remedy: str = ""
    resume: str | None = None  # the command that continues the run; none after a bad input


EVENT_TYPES: dict[str, type[Event]] = {
    cls.KIND: cls
    for cls in (Started, Ready, Step, EpochEnded, Sampled, Checkpointed, CheckpointSkipped, Resumed, Saved, StoppedOnRequest, Finished, Failed)
}
EVENT_KINDS = frozenset(EVENT_TYPES)
FINAL_KINDS = frozenset({Finished.KIND, Failed.KIND, StoppedOnRequest.KIND})  # the last event of an attempt


def parse_event(data: dict[str, Any]) -> Event | None:
    """The typed event of a JSON object; None for a kind this version does not know."""
    cls = EVENT_TYPES.get(data.get("kind", ""))
    if cls is None:
        return None
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def typed_event(kind: str, **fields_: Any) -> Event:
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event kind {kind!r}")
    return EVENT_TYPES[kind](**fields_)


class EventLog:
    """Appends events to `events.jsonl` and hands each to the listeners (e.g. a progress display)."""

    def __init__(self, path: Path | None, listeners: list[Listener] | None = None):
        self.path = path
        self.listeners = list(listeners or [])
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def emit(self, event: Event | str, **fields_: Any) -> dict[str, Any]:
        """Write an event (or a kind and its fields: an unknown one raises), stamped now; the JSON
        object written, which the listeners get too."""
        if isinstance(event, str):
            event = typed_event(event, **fields_)
        event = replace(event, time=round(time.time(), 3)).as_json()
        if self._file is not None:
            # One write per line so a reader never sees half an event from this writer.
            self._file.write(json.dumps(event, ensure_ascii=False) + "\n")
            self._file.flush()
        for listener in self.listeners:
            listener(event)
        return event

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """The complete events in a log; a torn last line (a writer killed mid-write) is skipped."""
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except ValueError:
                continue


def follow_events(path: Path, *, poll_seconds: float = 0.2, keep_going=lambda: True) -> Iterator[dict[str, Any]]:
    """Every event of a log, then new ones as they are appended; when nothing new has come,
    `keep_going()` decides whether to wait for more."""
    offset = 0
    buffer = ""
    last_look = False
    while True:
        try:
            with path.open("r", encoding="utf-8") as handle:
                handle.seek(offset)
                chunk = handle.read()
                offset = handle.tell()
        except FileNotFoundError:
            chunk = ""
        buffer += chunk
        *lines, buffer = buffer.split("\n")
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:
                continue
        if not lines:
            if last_look:
                return
            if not keep_going():
                # One more read: the writer may have appended its last event just before it let go.
                last_look = True
                continue
            time.sleep(poll_seconds)
        else:
            last_look = False
