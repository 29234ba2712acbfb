"""The draft: the wizard's answers as far as the user has got, kept on disk as they go.

Quitting and reopening `lora-wizard` returns to the same screen with the same answers. The draft
holds the answers file's data (nested like the file, JSON values; only values the schema
accepted), the wizard's own choices that are not answers (how the dataset is given, where to
save) and which answers the user set, so that machine-recommended defaults never replace them.

Files live in the user data folder (platformdirs), or in `$LORA_WIZARD_DATA_DIR` when set (tests).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.config import PATH_KEYS, Answers, answers_from_dict
from engine.files import atomic_write_text

DATA_DIR_VARIABLE = "LORA_WIZARD_DATA_DIR"
DRAFT_FILE = "draft.json"
DRAFT_FORMAT = 1

HOME = "home"
MODEL_FAMILY = "model_family"  # the choices key the Model step keeps the model's family in
STEPS = ("environment", "model", "dataset", "parameters", "review")


def data_dir() -> Path:
    """Where the draft and the settings are kept."""
    import os

    override = os.environ.get(DATA_DIR_VARIABLE)
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir("lora-wizard", appauthor=False))


def default_answers() -> dict[str, Any]:
    """A new LoRA's answers: the schema's defaults; the model, dataset and name still to choose."""
    from engine.config import (
        CheckpointSection,
        NetworkSection,
        OutputSection,
        SamplesSection,
        TrainingSection,
    )

    return {
        "version": Answers.model_fields["version"].default,
        "model": {},
        "dataset": {},
        "network": NetworkSection().model_dump(mode="json", exclude_none=True),
        "training": TrainingSection().model_dump(mode="json", exclude_none=True),
        "samples": SamplesSection().model_dump(mode="json", exclude_none=True),
        "checkpoints": CheckpointSection().model_dump(mode="json", exclude_none=True),
        "output": {"dir": str(OutputSection.model_fields["dir"].default)},
    }


@dataclass
class Draft:
    step: str = HOME  # the screen to reopen
    last_step: str | None = None  # the last wizard step shown (None: the wizard was not started)
    answers: dict[str, Any] = field(default_factory=default_answers)
    choices: dict[str, Any] = field(default_factory=dict)  # wizard-only: dataset_mode, images_dir, save_path...
    edited: list[str] = field(default_factory=list)  # "section.key" the user set (or a loaded file did)

    @classmethod
    def from_answers(cls, answers: Answers, *, step: str = STEPS[0]) -> Draft:
        """A draft starting from existing answers: every key counts as the user's choice."""
        data = answers.model_dump(mode="json", exclude_none=True)
        edited = [f"{section}.{key}" for section, values in data.items() if isinstance(values, dict) for key in values]
        return cls(step=step, last_step=step if step in STEPS else None, answers=data, edited=edited)

    def get(self, key: str, default: Any = None) -> Any:
        section, name = key.split(".")
        return self.answers.get(section, {}).get(name, default)

    def set(self, key: str, value: Any, *, by_user: bool = True) -> None:
        """Set `section.key`; None removes it (the schema's default applies)."""
        section, name = key.split(".")
        values = self.answers.setdefault(section, {})
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
        if by_user and key not in self.edited:
            self.edited.append(key)

    def set_default(self, key: str, value: Any) -> bool:
        """Set a machine-recommended default unless the user chose this key; True when set."""
        if key in self.edited:
            return False
        self.set(key, value, by_user=False)
        return True

    def apply_defaults(self, defaults: dict[str, Any]) -> list[str]:
        """`set_default` for each `section.key` (None: the schema's default); returns the keys
        whose value changed. Keys the user chose keep their values."""
        changed = []
        for key, value in defaults.items():
            before = self.get(key)
            if self.set_default(key, value) and self.get(key) != before:
                changed.append(key)
        return changed

    @property
    def model_family(self) -> str | None:
        """The base model's family as the Model step read it ("sd1", "sd2", "sdxl"), if it did."""
        return self.choices.get(MODEL_FAMILY)

    @model_family.setter
    def model_family(self, family: str | None) -> None:
        if family is None:
            self.choices.pop(MODEL_FAMILY, None)
        else:
            self.choices[MODEL_FAMILY] = family

    def build_answers(self, cwd: Path | None = None) -> Answers:
        """The answers, validated by the engine's schema (raises `AnswersError` listing every
        problem). Relative paths typed in the wizard mean relative to where it runs, so they are
        made absolute: the saved file then works from any folder."""
        cwd = Path.cwd() if cwd is None else cwd
        data = json.loads(json.dumps(self.answers))  # a deep copy
        for section, key in PATH_KEYS:
            value = data.get(section, {}).get(key)
            if isinstance(value, str) and value.strip():
                path = Path(value.strip()).expanduser()
                data[section][key] = str(path if path.is_absolute() else (cwd / path).resolve())
        return answers_from_dict(data, source="the wizard")


def answers_for_file(answers: Answers, answers_file: Path) -> Answers:
    """The answers as written into `answers_file`: paths inside its folder relative to it (as the
    engine reads them back: relative to the file's folder), so a folder holding the file, the
    model and the dataset can be moved; other paths stay absolute."""
    folder = Path(answers_file).resolve().parent
    data = answers.model_dump()
    for section, key in PATH_KEYS:
        value = data[section][key]
        if value is not None and Path(value).is_absolute() and Path(value).is_relative_to(folder):
            data[section][key] = Path(value).relative_to(folder).as_posix() or "."
    return Answers.model_validate(data)


def draft_path(folder: Path | None = None) -> Path:
    return (folder or data_dir()) / DRAFT_FILE


def load_draft(folder: Path | None = None) -> Draft | None:
    """The saved draft, or None when there is none (or it cannot be read: a new one starts)."""
    path = draft_path(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != DRAFT_FORMAT:
        return None
    step, last_step = data.get("step"), data.get("last_step")
    return Draft(
        step=step if step in (HOME, *STEPS) else HOME,
        last_step=last_step if last_step in STEPS else None,
        answers=data.get("answers") or default_answers(),
        choices=data.get("choices") or {},
        edited=list(data.get("edited") or []),
    )


def save_draft(draft: Draft, folder: Path | None = None) -> Path:
    path = draft_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"format": DRAFT_FORMAT, **asdict(draft)}, indent=1, ensure_ascii=False))
    return path


def clear_draft(folder: Path | None = None) -> None:
    draft_path(folder).unlink(missing_ok=True)
