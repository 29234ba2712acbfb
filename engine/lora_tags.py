"""LoRAs named in a prompt as AUTOMATIC1111 does (`<lora:name:0.8>`), and the files those names
point to in a folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.errors import UserError

LORA_TAG_START = re.compile(r"<lora:", re.IGNORECASE)
LORA_TAG = re.compile(r"<lora:(?P<name>[^:<>]+)(?::(?P<weight>[^:<>]*))?>", re.IGNORECASE)
LORA_TAG_EXAMPLE = "<lora:usu_bear:0.8>"


def parse_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """AUTOMATIC1111's `<lora:name:weight>` tags: (the prompt without them, [(name, weight), ...]).

    The weight is optional (default 1); it scales the LoRA in the UNet and the text encoder alike.
    A malformed tag or a LoRA named twice is a UserError.
    """
    tags: list[tuple[str, float]] = []
    pieces, position = [], 0
    for start in LORA_TAG_START.finditer(prompt):
        match = LORA_TAG.match(prompt, start.start())
        tag_text = match.group(0) if match else prompt[start.start() :].split(">")[0][:60]
        if not match:
            raise UserError(f"malformed LoRA tag `{tag_text}`", fix=f"write `<lora:NAME>` or `<lora:NAME:WEIGHT>`, e.g. `{LORA_TAG_EXAMPLE}`")
        name = match.group("name").strip()
        weight = _tag_weight(tag_text, match.group("weight"))
        if name in (n for n, _ in tags):
            raise UserError(f"LoRA `{name}` is named twice in the prompt", fix="keep one tag per LoRA")
        tags.append((name, weight))
        pieces.append(prompt[position : start.start()])
        position = match.end()
    pieces.append(prompt[position:])
    clean = re.sub(r"\s+", " ", "".join(pieces)).strip()
    return clean, tags


def _tag_weight(tag_text: str, weight: str | None) -> float:
    if weight is None:
        return 1.0
    try:
        return float(weight)
    except ValueError:
        raise UserError(f"malformed LoRA tag `{tag_text}`: the weight `{weight}` is not a number", fix=f"e.g. `{LORA_TAG_EXAMPLE}`") from None


def find_lora_files(lora_dir: Path) -> dict[str, list[Path]]:
    """LoRA name (file stem) -> the .safetensors files of that name under `lora_dir` (subfolders too)."""
    found: dict[str, list[Path]] = {}
    if Path(lora_dir).is_dir():
        for path in sorted(Path(lora_dir).rglob("*.safetensors")):
            found.setdefault(path.stem, []).append(path)
    return found


def resolve_lora_files(names: list[str], lora_dir: Path) -> dict[str, Path]:
    """The file of each LoRA name, or a UserError that lists the LoRAs found in `lora_dir`."""
    if not names:
        return {}
    lora_dir = Path(lora_dir)
    found = find_lora_files(lora_dir)
    files = {}
    for name in names:
        matches = found.get(name) or found.get(name.removesuffix(".safetensors"), [])
        if len(matches) > 1:
            raise UserError(f"several LoRA files are named `{name}`: {', '.join(map(str, matches))}", where=lora_dir, fix="rename one of them")
        if not matches:
            raise UserError(f"no LoRA named `{name}` ({_listing(found)})", where=lora_dir, fix=_missing_lora_fix(found))
        files[name] = matches[0]
    return files


def _listing(found: dict[str, list[Path]], shown: int = 20) -> str:
    if not found:
        return "this folder holds no .safetensors files"
    names = sorted(found)
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return f"LoRAs found here: {', '.join(names[:shown])}{more}"


def _missing_lora_fix(found: dict[str, list[Path]]) -> str:
    if not found:
        return "give the folder that holds your LoRA files with --lora-dir"
    return "use one of the names above (the file name without .safetensors), or another --lora-dir"
