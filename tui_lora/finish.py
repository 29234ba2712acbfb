"""What to do with a finished LoRA: how to call it in a web UI, and copying it into one.

AUTOMATIC1111 (and Forge) load LoRAs from `<webui>/models/Lora` and call them with
`<lora:FILE NAME:WEIGHT>` in the prompt; ComfyUI reads `<ComfyUI>/models/loras`. The trigger is
the instance prompt the LoRA learnt: the name of the kohya folder `N_<token> <class>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError

# A web UI's LoRA folder, relative to the folder the user points to (first match wins).
LORA_FOLDERS = (Path("models/Lora"), Path("models/loras"), Path("Lora"), Path("loras"))


@dataclass(frozen=True)
class FinishedLora:
    lora: Path
    size: int | None  # bytes; None when the file is gone
    instance_prompts: tuple[str, ...]  # "usu bear" from `20_usu bear`
    class_prompts: tuple[str, ...]  # "bear" from the regularisation folder `1_bear`
    answers_file: Path

    @property
    def name(self) -> str:
        return self.lora.stem

    @property
    def prompt(self) -> str:
        """What to type in AUTOMATIC1111: the LoRA tag, then the instance prompt it learnt."""
        trigger = ", ".join(self.instance_prompts)
        return f"<lora:{self.name}:1> {trigger}".rstrip()

    def headless_command(self, show_path=str) -> str:
        return f"lora-wizard train {show_path(self.answers_file)}"


def finished_lora(run_folder: Path, lora: Path) -> FinishedLora:
    """The facts of a finished run's LoRA, from its file and its frozen answers (the base model
    may have moved since, which does not matter here)."""
    from engine.config import load_answers

    answers_file = run_folder / "answers.toml"
    try:
        dataset = load_answers(answers_file, check_paths=False).dataset
    except UserError:
        instance = classes = []
    else:
        instance, classes = _concepts(dataset.train_dir), _concepts(dataset.reg_dir)
    size = lora.stat().st_size if lora.is_file() else None
    return FinishedLora(lora, size, tuple(instance), tuple(classes), answers_file)


def _concepts(folder: Path | None) -> list[str]:
    """The prompts of a kohya dataset's `N_<prompt>` folders."""
    from engine.dataset import parse_concept_name

    if folder is None or not folder.is_dir():
        return []
    names = [parsed[1] for child in sorted(folder.iterdir()) if child.is_dir() and (parsed := parse_concept_name(child.name))]
    return list(dict.fromkeys(names))


def lora_folder_in(webui: Path) -> Path:
    """The LoRA folder of a web UI: `models/Lora` under its root (or ComfyUI's `models/loras`),
    or the folder itself when the user pointed at the LoRA folder already."""
    webui = webui.expanduser()
    if not webui.is_dir():
        raise UserError("this folder does not exist", where=webui, fix="give the web UI's folder or its models/Lora folder")
    for relative in LORA_FOLDERS:
        if (webui / relative).is_dir():
            return webui / relative
    return webui


def copy_lora(lora: Path, webui: Path, *, overwrite: bool = False) -> Path:
    """Copy the LoRA into the web UI's LoRA folder (atomically); an existing file of the same
    name is kept unless `overwrite`. Returns the new file."""
    from engine.files import atomic_copy

    if not lora.is_file():
        raise UserError("the LoRA file is gone", where=lora, fix="train it again, or copy it from where you moved it")
    target = lora_folder_in(webui) / lora.name
    if target.exists() and not overwrite:
        raise FileExistsError(target)
    atomic_copy(lora, target)
    return target


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
