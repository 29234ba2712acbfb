"""Sample prompts in kohya's syntax (`prompt --n negative --w 512 --h 512 --s 28 --l 7.5 --d 42
--ss euler_a`): one line, a prompt file, or an answers file's `[samples]`. docs/samples.md is the
user's guide. No torch here: the answers file's schema checks every prompt line with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.samplers import DEFAULT_SAMPLER, sampler_key

DEFAULT_STEPS = 28
DEFAULT_CFG = 7.5
MIN_SIDE = 64  # kohya's smallest sample side
SEED_RANGE = 2**32  # seeds people can type into a web UI


@dataclass(frozen=True)
class SamplePrompt:
    """One image request. `seed` None: derived from the run's seed and the prompt's position."""

    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    seed: int | None = None
    sampler: str = DEFAULT_SAMPLER

    def __post_init__(self) -> None:
        # kohya's rule: sides are rounded down to a multiple of 8, at least 64; steps within 1..1000.
        object.__setattr__(self, "width", max(MIN_SIDE, self.width - self.width % 8))
        object.__setattr__(self, "height", max(MIN_SIDE, self.height - self.height % 8))
        object.__setattr__(self, "steps", max(1, min(1000, self.steps)))
        object.__setattr__(self, "sampler", sampler_key(self.sampler))


# kohya's option letters (library/train_util.py line_to_prompt_dict): field name and value type.
PROMPT_OPTIONS: dict[str, tuple[str, type]] = {
    "n": ("negative", str),
    "w": ("width", int),
    "h": ("height", int),
    "s": ("steps", int),
    "l": ("cfg", float),
    "d": ("seed", int),
    "ss": ("sampler", str),
}
PROMPT_EXAMPLE = "a photo of usu bear --n blurry --w 512 --h 512 --s 28 --l 7.5 --d 42 --ss euler_a"


def parse_prompt_line(line: str, defaults: SamplePrompt | None = None, *, where: str | Path | None = None) -> SamplePrompt:
    """One line of a kohya prompt file. Options a line does not set come from `defaults`.

    Unlike kohya, an unknown option or a bad value is an error rather than silently ignored.
    """
    defaults = defaults or SamplePrompt(prompt="")
    prompt, *options = (" " + line.strip()).split(" --")  # the space: a line starting with an option has no prompt
    values: dict[str, Any] = {"prompt": prompt.strip()}
    for option in options:
        letter, _, value = option.strip().partition(" ")
        if letter.lower() not in PROMPT_OPTIONS:
            raise UserError(
                f"unknown prompt option `--{letter}` in: {line.strip()}",
                where=where,
                fix=f"use --n --w --h --s --l --d --ss, e.g. `{PROMPT_EXAMPLE}`",
            )
        name, kind = PROMPT_OPTIONS[letter.lower()]
        values[name] = _option_value(line, letter, value.strip(), kind, where)
    if not values["prompt"]:
        raise UserError(f"a sample line without a prompt: {line.strip()}", where=where, fix=f"start the line with the prompt, e.g. `{PROMPT_EXAMPLE}`")
    try:
        return replace(defaults, **values)
    except UserError as exc:  # an unknown sampler: say which line names it
        raise UserError(f"{exc.message} in: {line.strip()}", where=where, fix=exc.fix) from None


def _option_value(line: str, letter: str, value: str, kind: type, where: str | Path | None) -> Any:
    try:
        if not value:
            raise ValueError
        return kind(value)
    except ValueError:
        raise UserError(
            f"`--{letter}` needs {'a number' if kind is not str else 'a value'} in: {line.strip()}",
            where=where,
            fix=f"write it like `{PROMPT_EXAMPLE}`",
        ) from None


def parse_prompts(text: str, defaults: SamplePrompt | None = None, *, where: str | Path | None = None) -> list[SamplePrompt]:
    """Every prompt of a kohya prompt file's text: one a line; blank lines and `#` comments skipped."""
    lines = [line.strip() for line in text.splitlines()]
    return [parse_prompt_line(line, defaults, where=where) for line in lines if line and not line.startswith("#")]


def read_prompt_file(path: Path, defaults: SamplePrompt | None = None) -> list[SamplePrompt]:
    """A kohya prompt file (.txt, UTF-8)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError("no prompt file here", where=path, fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the prompt file: {exc}", where=path, fix="save it as UTF-8 text, one prompt a line") from None
    prompts = parse_prompts(text, defaults, where=path)
    if not prompts:
        raise UserError("the prompt file holds no prompts", where=path, fix=f"write one prompt a line, e.g. `{PROMPT_EXAMPLE}`")
    return prompts


def prompts_from_answers(samples: Any, resolution: int) -> list[SamplePrompt]:
    """The sample prompts of an answers file's `[samples]` section, its defaults applied."""
    size = samples.size or resolution
    defaults = SamplePrompt("", samples.negative, size, size, samples.steps, samples.cfg, None, samples.sampler)
    prompts = [parse_prompt_line(line, defaults, where="[samples] prompts") for line in samples.prompts]
    if samples.prompt_file is not None:
        prompts += read_prompt_file(samples.prompt_file, defaults)
    return prompts
