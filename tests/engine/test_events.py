"""One dataclass per event kind: the engine writes them, the readers parse them back; the format
stays what docs/events.md documents, and old logs still read."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from engine.events import EVENT_TYPES, EventLog, Failed, Step, StoppedOnRequest, parse_event, read_events
from engine.run_folder import RunState

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "tui" / "data" / "recorded_run" / "events.jsonl"


def documented_fields() -> dict[str, set[str]]:
    """`kind` -> its fields, from the table in docs/events.md."""
    table = {}
    for line in (ROOT / "docs" / "events.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`(\w+)`\s*\|([^|]*)\|", line)
        if match and match.group(1) not in ("v", "time", "kind"):
            cell = re.sub(r"\([^)]*\)", "", match.group(2))  # what is in brackets explains a field
            table[match.group(1)] = set(re.findall(r"`(\w+)`", cell))
    return table


def test_every_documented_kind_has_a_dataclass_with_its_fields():
    documented = documented_fields()
    assert set(documented) == set(EVENT_TYPES)
    for kind, cls in EVENT_TYPES.items():
        fields = {f.name for f in dataclasses.fields(cls)} - {"time"}
        assert fields == documented[kind], kind


def test_the_writer_writes_the_same_json_lines_as_before(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog(path) as events:
        events.emit(Step(step=3, total_steps=10, epoch=1, loss=0.25, lr=1e-4))
        events.emit(Failed(message="bad input", remedy="fix it"))  # no resume: the key is left out
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(line) for line in lines] == [
        ["v", "time", "kind", "step", "total_steps", "epoch", "loss", "lr"],
        ["v", "time", "kind", "message", "remedy"],
    ]
    assert lines[0]["kind"] == "step" and lines[0]["v"] == 1 and lines[0]["time"] > 0


def test_an_unknown_kind_or_field_is_refused_when_written():
    events = EventLog(None)
    with pytest.raises(ValueError, match="unknown event kind"):
        events.emit("stepped", step=1)
    with pytest.raises(TypeError):
        events.emit("step", stp=1)


def test_an_old_recording_reads_into_the_dataclasses():
    raw = list(read_events(RECORDED))
    typed = [parse_event(event) for event in raw]
    assert all(event is not None and event.kind == data["kind"] for event, data in zip(typed, raw, strict=True))
    steps = [event for event in typed if isinstance(event, Step)]
    assert steps and steps[0].step == raw[[e["kind"] for e in raw].index("step")]["step"]


def test_a_missing_field_takes_its_default_and_an_unknown_one_is_ignored():
    event = parse_event({"v": 1, "time": 5.0, "kind": "interrupted", "step": 4, "new_field": "later"})
    assert event == StoppedOnRequest(time=5.0, step=4)
    assert parse_event({"v": 2, "time": 1.0, "kind": "a later kind"}) is None


@pytest.mark.parametrize(
    ("state", "reason", "code", "resumable"),
    [
        (RunState.FINISHED, "", 0, False),
        (RunState.RUNNING, "", 0, False),
        (RunState.FAILED, "", 1, True),
        (RunState.STOPPED_UNEXPECTEDLY, "", 1, True),
        (RunState.INTERRUPTED, "SIGINT", 130, True),
        (RunState.INTERRUPTED, "SIGTERM", 143, True),
        (RunState.INTERRUPTED, "stop requested", 130, True),
        (RunState.NOT_STARTED, "", 1, False),
    ],
)
def test_a_run_state_carries_its_exit_code_and_whether_it_resumes(state, reason, code, resumable):
    assert state.exit_code(reason) == code
    assert state.resumable is resumable
    assert f"{state}" == state.value and state.key == state.value.replace(" ", "_")
