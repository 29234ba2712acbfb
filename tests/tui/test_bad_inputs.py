"""`lora-wizard train FILE [--dry-run]` on bad inputs (issue 2, must show 5).

Each bad answers file or bad model file gives one clear message naming the key or path, exit status 2,
no traceback, and writes nothing, with `--dry-run` and without. Every case runs the installed command
as a subprocess in a temp folder that holds everything it could touch: its own copies of the model and
dataset, the output folder, TMPDIR, HOME and the working directory. The folder's listing (names, sizes,
modification times, folders included) is compared before and after, so even a temp file created and
removed again shows up as a changed folder.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.tiny import write_tiny_single_file
from tests.conftest import write_answers

LORA_WIZARD = shutil.which("lora-wizard")
PAYLOAD_MARKER = "PAYLOAD_RAN"
MAX_MESSAGE_LINES = 15


# --------------------------------------------------------------------------------------------------
# The workspace: a temp folder holding every input and every place a run could write to
# --------------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    root: Path
    model: Path  # a copy of the tiny diffusers folder
    train_dir: Path
    reg_dir: Path
    single_files: dict[str, Path]  # the tiny model as one .safetensors / .ckpt, outside `root`

    def answers(self, model: Path | None = None, train_dir: Path | None = None, **sections) -> Path:
        """`root/answers.toml`, valid except for what `sections` change; the output goes to `root/output`."""
        return write_answers(self.root, model or self.model, train_dir or self.train_dir, self.reg_dir, **sections)

    def single_file(self, suffix: str) -> Path:
        """A copy of the tiny single-file model, with its tokenizer beside it as AUTOMATIC1111 users keep it."""
        path = shutil.copyfile(self.single_files[suffix], self.root / f"tiny-sd1{suffix}")
        self.tokenizer_beside_single_files()
        return Path(path)

    def tokenizer_beside_single_files(self) -> None:
        if not (self.root / "tokenizer").exists():
            shutil.copytree(self.model / "tokenizer", self.root / "tokenizer")

    @property
    def env(self) -> dict[str, str]:
        home = self.root / "home"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "XDG_"))}
        env.update(
            HOME=str(home),
            USERPROFILE=str(home),
            TMPDIR=str(self.root / "tmp"),
            TEMP=str(self.root / "tmp"),
            TMP=str(self.root / "tmp"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
            XDG_CONFIG_HOME=str(home / ".config"),
            HF_HOME=str(home / ".cache" / "huggingface"),
            HF_HUB_OFFLINE="1",
            PYTHONPROFILEIMPORTTIME="1",  # CPython lists every import on stderr: shows whether torch was loaded
        )
        return env


@pytest.fixture(scope="module")
def single_files(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("single-file")
    return {suffix: write_tiny_single_file(tiny_model_dir, folder / f"tiny-sd1{suffix}") for suffix in (".safetensors", ".ckpt")}


@pytest.fixture
def workspace(tmp_path, tiny_model_dir, tiny_dataset, single_files) -> Workspace:
    train_dir, reg_dir = tiny_dataset
    dataset = tmp_path / "dataset"
    shutil.copytree(train_dir, dataset / "train")
    shutil.copytree(reg_dir, dataset / "reg")
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "home").mkdir()
    return Workspace(tmp_path, tmp_path / "model", dataset / "train", dataset / "reg", single_files)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`: size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    created = [f"created {name}" for name in sorted(after.keys() - before.keys())]
    removed = [f"removed {name}" for name in sorted(before.keys() - after.keys())]
    changed = [f"changed {name}" for name in sorted(before.keys() & after.keys()) if before[name] != after[name]]
    return created + removed + changed


@dataclass
class Result:
    returncode: int
    stdout: str
    message: list[str]  # stderr without CPython's import log
    imported: set[str]  # every module the command imported
    written: list[str]  # what changed under the workspace


def train(ws: Workspace, answers: Path, *, dry_run: bool) -> Result:
    """`lora-wizard train FILE [--dry-run]`, run as a user runs it, from inside the workspace."""
    assert LORA_WIZARD, "the `lora-wizard` command is not on PATH: install the package with `pip install -e .`"
    before = listing(ws.root)
    command = [LORA_WIZARD, "train", str(answers), *(["--dry-run"] if dry_run else [])]
    done = subprocess.run(command, cwd=ws.root, env=ws.env, capture_output=True, text=True, timeout=300)
    import_log = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    message = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in import_log}
    return Result(done.returncode, done.stdout, message, imported, changes(before, listing(ws.root)))


# --------------------------------------------------------------------------------------------------
# A .ckpt carrying a pickled payload
# --------------------------------------------------------------------------------------------------


class TouchWhenUnpickled:
    """Unpickling this calls pathlib.Path.touch(marker)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class ShellWhenUnpickled:
    """Unpickling this calls os.system(...), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'"{sys.executable}" -c "open(r\'{self.marker}\', \'w\').close()"',))


PAYLOADS = {"path-touch": (TouchWhenUnpickled, "pathlib.Path"), "os-system": (ShellWhenUnpickled, "system")}


def write_ckpt_with_payload(clean_ckpt: Path, out_path: Path, marker: Path, payload: str, *, legacy: bool = False) -> Path:
    """The tiny model's real .ckpt plus a pickled object beside its state dict, where Lightning keeps
    its callbacks. `legacy`: torch's pre-1.6 (non-zip) format."""
    import torch

    checkpoint = torch.load(clean_ckpt, map_location="cpu", weights_only=True)
    payload_class, _ = PAYLOADS[payload]
    checkpoint["callbacks"] = payload_class(marker)
    torch.save(checkpoint, out_path, _use_new_zipfile_serialization=not legacy)
    return out_path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_the_pickled_payload_is_live(tmp_path, single_files, payload, legacy):
    """The crafted .ckpt does run its payload when unpickled unsafely, so the refusal below means something."""
    import torch

    marker = tmp_path / PAYLOAD_MARKER
    ckpt = write_ckpt_with_payload(single_files[".ckpt"], tmp_path / "evil.ckpt", marker, payload, legacy=legacy)
    assert not marker.exists()
    torch.load(ckpt, map_location="cpu", weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------------------------------
# The bad inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    id: str
    make: Callable[[Workspace], tuple[Path, list[str]]]  # -> the answers file, what the message must name
    answers_mistake: bool = False  # reported from the answers file alone: before torch is imported


def unknown_key(ws: Workspace) -> tuple[Path, list[str]]:
    answers = ws.answers(training={"epoch": 5})
    return answers, [str(answers), "training.epoch", "did you mean `epochs`"]


def wrong_type(ws: Workspace) -> tuple[Path, list[str]]:
    answers = ws.answers(network={"dim": "eight"})
    return answers, [str(answers), "network.dim", "'eight'"]


def out_of_range(ws: Workspace) -> tuple[Path, list[str]]:
    answers = ws.answers(training={"batch_size": 0})
    return answers, [str(answers), "training.batch_size"]


def missing_model_file(ws: Workspace) -> tuple[Path, list[str]]:
    nowhere = ws.root / "models" / "sd15.safetensors"
    return ws.answers(model=nowhere), ["model.path", str(nowhere)]


def empty_dataset_folder(ws: Workspace) -> tuple[Path, list[str]]:
    empty = ws.root / "empty-train"
    empty.mkdir()
    return ws.answers(train_dir=empty), [str(empty)]


def not_toml(ws: Workspace) -> tuple[Path, list[str]]:
    answers = ws.answers()
    answers.write_text('{"model": {"path": "model"}, "output": {"name": "tiny"}}\n', encoding="utf-8")  # JSON
    return answers, [str(answers), "TOML"]


def truncated_safetensors(ws: Workspace) -> tuple[Path, list[str]]:
    model = ws.single_file(".safetensors")
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])  # an interrupted download
    return ws.answers(model=model), [str(model)]


def ckpt_with_payload(payload: str, *, legacy: bool = False) -> Callable[[Workspace], tuple[Path, list[str]]]:
    def make(ws: Workspace) -> tuple[Path, list[str]]:
        model = ws.root / "evil.ckpt"
        write_ckpt_with_payload(ws.single_files[".ckpt"], model, ws.root / PAYLOAD_MARKER, payload, legacy=legacy)
        ws.tokenizer_beside_single_files()  # the file is otherwise complete: only the payload is wrong
        _, callable_name = PAYLOADS[payload]
        return ws.answers(model=model), [str(model), "contains code", callable_name]

    return make


def diffusers_folder_without_vae_weights(ws: Workspace) -> tuple[Path, list[str]]:
    (ws.model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    return ws.answers(), [str(ws.model / "vae")]


def diffusers_folder_without_text_encoder(ws: Workspace) -> tuple[Path, list[str]]:
    shutil.rmtree(ws.model / "text_encoder")
    return ws.answers(), [str(ws.model), "text_encoder"]


BAD_INPUTS = [
    BadInput("unknown-key", unknown_key, answers_mistake=True),
    BadInput("wrong-type", wrong_type, answers_mistake=True),
    BadInput("out-of-range", out_of_range, answers_mistake=True),
    BadInput("missing-model-file", missing_model_file, answers_mistake=True),
    BadInput("empty-dataset-folder", empty_dataset_folder, answers_mistake=True),
    BadInput("not-toml", not_toml, answers_mistake=True),
    BadInput("truncated-safetensors", truncated_safetensors),
    BadInput("ckpt-payload-path-touch", ckpt_with_payload("path-touch")),
    BadInput("ckpt-payload-os-system", ckpt_with_payload("os-system")),
    BadInput("legacy-ckpt-payload-os-system", ckpt_with_payload("os-system", legacy=True)),
    BadInput("diffusers-without-vae-weights", diffusers_folder_without_vae_weights),
    BadInput("diffusers-without-text-encoder", diffusers_folder_without_text_encoder),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_bad_input_gives_one_clear_message_exit_2_and_writes_nothing(workspace, case, dry_run):
    answers, must_name = case.make(workspace)
    result = train(workspace, answers, dry_run=dry_run)
    message = "\n".join(result.message)

    assert result.returncode == 2, message
    assert "Traceback" not in message, message
    assert result.message and result.message[0].startswith("error: "), message
    assert sum(line.startswith("error:") for line in result.message) == 1, message
    assert len(result.message) < MAX_MESSAGE_LINES, message
    for name in must_name:
        assert name in message, f"the message does not name {name!r}:\n{message}"
    assert result.stdout == ""
    assert not (workspace.root / PAYLOAD_MARKER).exists(), "the pickled payload ran"
    assert result.written == []
    if case.answers_mistake:
        assert "engine.config" in result.imported, "CPython's import log is missing: cannot tell whether torch loaded"
        assert "torch" not in result.imported, "an answers-file mistake must be reported before torch is imported"


# --------------------------------------------------------------------------------------------------
# The good inputs the bad ones were made from: the dry run passes, prints the plan, writes nothing
# --------------------------------------------------------------------------------------------------


def expected_step_lines(ws: Workspace, *, batch_size: int, accumulation: int, epochs: int) -> list[str]:
    """kohya's arithmetic, worked out here from the dataset on disk."""
    (concept,) = [folder for folder in ws.train_dir.iterdir() if folder.is_dir()]
    repeats = int(concept.name.split("_", 1)[0])
    images = len(list(concept.glob("*.png")))
    reg_images = len(list(ws.reg_dir.glob("*/*.png")))
    items = images * repeats
    batches = math.ceil(2 * items / batch_size)  # as many regularization items as training items
    steps = math.ceil(batches / accumulation)
    return [
        f"{concept.name}: {images} images x {repeats} repeats = {items}",
        f"training items per epoch: {items}",
        f"regularization items per epoch: {items} (from {reg_images} images",
        f"batches per epoch: ceil({2 * items} / batch size {batch_size}) = {batches}",
        f"steps per epoch: ceil({batches} / accumulation {accumulation}) = {steps}",
        f"total steps: {steps} x {epochs} epochs = {steps * epochs}",
    ]


def test_good_answers_dry_run_prints_the_plan_and_writes_nothing(workspace):
    training = {"max_steps": None, "epochs": 3, "batch_size": 2, "gradient_accumulation": 2}
    answers = workspace.answers(training=training)
    result = train(workspace, answers, dry_run=True)

    assert result.returncode == 0, "\n".join(result.message)
    for line in expected_step_lines(workspace, batch_size=2, accumulation=2, epochs=3):
        assert line in result.stdout, f"{line!r} missing from the plan:\n{result.stdout}"
    assert "SD 1.x" in result.stdout
    assert "Dry run: nothing was trained or written." in result.stdout
    assert result.written == []
    assert "engine.config" in result.imported and "torch" not in result.imported, "a dry run on a diffusers folder needs no torch"


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_the_intact_single_file_passes_the_dry_run(workspace, suffix):
    """The file the truncated and the payload cases were made from is good: those fail for their fault."""
    answers = workspace.answers(model=workspace.single_file(suffix))
    result = train(workspace, answers, dry_run=True)

    assert result.returncode == 0, "\n".join(result.message)
    assert "SD 1.x" in result.stdout and "total steps: max_steps = 6" in result.stdout
    assert result.written == []
