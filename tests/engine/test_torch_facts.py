"""torch's build read from its files, so `lora-wizard check --json` answers without importing
torch where importing it could add nothing (a CPU build, or no NVIDIA driver)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from engine.checks.environment import NvidiaDriverFacts, TorchFacts, torch_facts_from_files

REPOSITORY = Path(__file__).resolve().parents[2]
NO_DRIVER, DRIVER = NvidiaDriverFacts("not_found"), NvidiaDriverFacts("ok", "550.54", "12.4")


def torch_folder(tmp_path: Path, version: str, cuda: str | None, hip: str | None = None) -> Path:
    """A torch install's `version.py` as torch writes it (annotated assignments included)."""
    folder = tmp_path / "torch"
    folder.mkdir(parents=True)
    (folder / "version.py").write_text(
        "from typing import Optional\n\n"
        f"__version__ = {version!r}\ndebug = False\ncuda: Optional[str] = {cuda!r}\n"
        f"git_version = 'cf30153c'\nhip: Optional[str] = {hip!r}\n",
        encoding="utf-8",
    )
    return folder


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS builds may have MPS: torch is imported there")
def test_a_cpu_build_or_a_machine_without_driver_is_read_from_the_files(tmp_path):
    cpu = torch_folder(tmp_path / "a", "2.13.0+cpu", None)
    assert torch_facts_from_files(DRIVER, cpu) == TorchFacts(version="2.13.0+cpu", build="cpu")
    cuda = torch_folder(tmp_path / "b", "2.13.0", "12.4")
    assert torch_facts_from_files(NO_DRIVER, cuda) == TorchFacts(version="2.13.0", build="cuda", cuda_version="12.4", cuda_available=False)


def test_torch_is_imported_where_only_it_can_tell_whether_cuda_works(tmp_path):
    cuda = torch_folder(tmp_path / "a", "2.13.0", "12.4")
    assert torch_facts_from_files(DRIVER, cuda) is None  # a driver: does this build work with it?
    assert torch_facts_from_files(None, cuda) is None
    rocm = torch_folder(tmp_path / "b", "2.13.0+rocm6.2", None, hip="6.2.41133")
    assert torch_facts_from_files(NO_DRIVER, rocm) is None  # AMD GPUs: NVML knows nothing of them
    (tmp_path / "c").mkdir()
    assert torch_facts_from_files(NO_DRIVER, tmp_path / "c") is None  # unreadable: import to know


@pytest.mark.skipif(not metadata.version("torch").endswith("+cpu") or sys.platform == "darwin", reason="needs a CPU build of torch")
def test_check_json_imports_neither_torch_nor_diffusers():
    script = (
        "import contextlib, io, sys\n"
        "from tui_lora.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['check', '--json'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', 'peft', 'accelerate'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPOSITORY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
