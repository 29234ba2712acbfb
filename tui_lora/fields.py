"""The answers the Parameters step edits, and how a typed value is accepted or refused.

Acceptance is the engine's: a value is validated by the answers file's own schema (the section's
pydantic model, with the section's other values as they are), so the wizard accepts exactly what
`lora-wizard train` accepts. The schema's reasons are then said in the catalogue's words.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from engine.config import Answers
from tui_lora.i18n import has_message, t

Kind = Literal["int", "float", "text", "path", "choice", "bool", "first_of_list"]


# When a field is shown only in some cases (tui_lora/screens/parameters.py decides them).
# The network conditions follow engine.network.types: the settings each network type takes.
Condition = Literal["several_gpus", "sdxl", "lora_types", "conv_types", "lokr", "lycoris_types", "flux"]


@dataclass(frozen=True)
class FieldSpec:
    key: str  # "training.batch_size"
    kind: Kind
    optional: bool = False  # an empty entry means the schema's default (None)
    shown_when: Condition | None = None  # None: always shown

    @property
    def section(self) -> str:
        return self.key.split(".")[0]

    @property
    def name(self) -> str:
        return self.key.split(".")[1]

    @property
    def choices(self) -> tuple[str, ...]:
        """The values of a Literal field, as the schema lists them."""
        return typing.get_args(section_model(self.section).model_fields[self.name].annotation)

    @property
    def label(self) -> str:
        return t(f"field.{self.key}.label")

    @property
    def help(self) -> str:
        return t(f"field.{self.key}.help")


# In the order shown, grouped by heading.
PARAMETER_GROUPS: dict[str, tuple[FieldSpec, ...]] = {
    "training": (
        FieldSpec("training.batch_size", "int"),
        # Only on a machine with more than one GPU: one process per GPU.
        FieldSpec("training.processes", "int", shown_when="several_gpus"),
        FieldSpec("training.epochs", "int"),
        FieldSpec("training.max_steps", "int", optional=True),
        FieldSpec("dataset.resolution", "int", optional=True),
    ),
    "network": (
        FieldSpec("network.type", "choice"),
        FieldSpec("network.dora", "bool", shown_when="lora_types"),
        FieldSpec("network.dim", "int"),
        FieldSpec("network.alpha", "float", optional=True),
        FieldSpec("network.conv_dim", "int", optional=True, shown_when="conv_types"),
        FieldSpec("network.conv_alpha", "float", optional=True, shown_when="conv_types"),
        FieldSpec("network.factor", "int", optional=True, shown_when="lokr"),
        FieldSpec("network.full_matrix", "bool", shown_when="lokr"),
        FieldSpec("network.dropout", "float", optional=True, shown_when="lora_types"),
        FieldSpec("network.rank_dropout", "float", optional=True, shown_when="lycoris_types"),
        FieldSpec("network.module_dropout", "float", optional=True, shown_when="lycoris_types"),
        FieldSpec("network.train_text_encoder", "bool"),
    ),
    "optimizer": (
        FieldSpec("training.unet_lr", "float"),
        FieldSpec("training.text_encoder_lr", "float"),
        # SDXL's second text encoder (OpenCLIP bigG) may have its own rate.
        FieldSpec("training.text_encoder_2_lr", "float", optional=True, shown_when="sdxl"),
        FieldSpec("training.lr_scheduler", "choice"),
        FieldSpec("training.warmup_steps", "int"),
        FieldSpec("training.optimizer", "choice"),
    ),
    "memory": (
        FieldSpec("training.mixed_precision", "choice"),
        FieldSpec("training.gradient_checkpointing", "bool"),
        # FLUX.1 only: the transformer's weights in fp8, its blocks in host memory, the noise levels drawn.
        FieldSpec("training.fp8_base", "bool", shown_when="flux"),
        FieldSpec("training.offload_blocks", "bool", shown_when="flux"),
        FieldSpec("training.timestep_sampling", "choice", shown_when="flux"),
    ),
    "output": (
        FieldSpec("output.dir", "path"),
        FieldSpec("output.name", "text"),
        FieldSpec("output.tensorboard", "bool"),
    ),
    "samples": (
        # The first of [samples] prompts (a file may hold more; they are kept as they are).
        FieldSpec("samples.prompts", "first_of_list", optional=True),
        FieldSpec("samples.every_epochs", "int"),
    ),
}
PARAMETER_FIELDS: tuple[FieldSpec, ...] = tuple(spec for group in PARAMETER_GROUPS.values() for spec in group)


def section_model(section: str) -> type[BaseModel]:
    return Answers.model_fields[section].annotation  # type: ignore[return-value]


def shown_value(value: Any) -> str:
    """A draft value as typed in an Input (a list: its first item)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value).removesuffix(".0") if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def accept(spec: FieldSpec, raw: Any, section_values: dict[str, Any]) -> tuple[Any, str | None]:
    """(the value to keep, None) when the schema accepts `raw` for this field, else (None, the
    reason in the current language). For an optional field, an empty entry is accepted as None."""
    if isinstance(raw, str):
        raw = raw.strip()
    if spec.kind == "first_of_list":
        rest = list(section_values.get(spec.name) or [])[1:]
        raw = [raw, *rest] if raw else rest
    others = {k: v for k, v in section_values.items() if k != spec.name}
    data = others if (raw in ("", []) and spec.optional) else {**others, spec.name: raw}
    try:
        model = section_model(spec.section).model_validate(data)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if tuple(e["loc"]) in ((spec.name,), ())]
        if errors:
            return None, describe_error(spec, errors[0])
        # Another key of the section is the problem (a required one not chosen yet): this value is fine.
        return (None if raw in ("", []) else _typed(spec, raw)), None
    return model.model_dump(mode="json").get(spec.name), None


def _typed(spec: FieldSpec, raw: Any) -> Any:
    if spec.kind == "int":
        return int(raw)
    if spec.kind == "float":
        return float(raw)
    return raw


def describe_error(spec: FieldSpec, error: dict[str, Any]) -> str:
    """A pydantic error, in the catalogue's words."""
    kind, ctx = error["type"], error.get("ctx") or {}
    simple = {
        "int_parsing": "invalid.int",
        "int_from_float": "invalid.int",
        "float_parsing": "invalid.number",
        "missing": "invalid.required",
        "string_too_short": "invalid.required",
        "bool_parsing": "invalid.bool",
    }
    if kind in simple:
        return t(simple[kind])
    bounds = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}
    if kind in bounds:
        return t(f"invalid.{bounds[kind]}", limit=ctx.get(bounds[kind]))
    if kind == "literal_error":
        return t("invalid.choice", choices=", ".join(spec.choices))
    specific = f"invalid.value.{spec.key}" if error["loc"] else f"invalid.section.{spec.section}"
    if has_message(specific):
        return t(specific)
    return str(error["msg"]).removeprefix("Value error, ")
