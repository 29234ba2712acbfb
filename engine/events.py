"""The run's event stream: append-only JSON lines, the only contract between engine and dashboard.

Every event is one JSON object on one line with `v` (schema version), `time` (Unix seconds) and
`kind`. docs/events.md documents each kind and its fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EVENT_SCHEMA_VERSION = 1
EVENT_KINDS = frozenset(
    {"started", "ready", "step", "epoch", "sample", "checkpoint", "checkpoint_skipped", "saved", "resumed", "interrupted", "finished", "failed"}
)

Listener = Callable[[dict[str, Any]], None]


def make_event(kind: str, **fields: Any) -> dict[str, Any]:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return {"v": EVENT_SCHEMA_VERSION, "time": round(time.time(), 3), "kind": kind, **fields}


class EventLog:
    """Appends events to `events.jsonl` and hands each to the listeners (e.g. a progress display)."""

    def __init__(self, path: Path | None, listeners: list[Listener] | None = None):
        self.path = path
        self.listeners = list(listeners or [])
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = make_event(kind, **fields)
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


FINAL_KINDS = frozenset({"finished", "failed", "interrupted"})


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
