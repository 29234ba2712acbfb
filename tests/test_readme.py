"""The README's setup: a venv at the repository root, the tested versions from constraints.txt,
the torch CI installs, and only PyTorch's documented index form for the CUDA build."""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def setup_section() -> str:
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    return readme[readme.index("## Setup") : readme.index("## Use")]


def test_setup_makes_a_venv_and_installs_the_tested_versions():
    setup = setup_section()
    assert "python -m venv .venv" in setup and "repository root" in setup
    assert "pip install -c constraints.txt -e ." in setup
    assert (REPOSITORY / "constraints.txt").is_file()


def test_setup_installs_the_torch_ci_tests_with():
    ci = (REPOSITORY / ".ci" / "run").read_text(encoding="utf-8")
    pinned = re.search(r"torch==([\d.]+)", ci).group(1)
    assert f"pip install torch=={pinned}\n" in setup_section()


def test_the_cuda_build_comes_from_pytorchs_documented_index_form():
    setup = setup_section()
    urls = re.findall(r"https?://\S+", setup)
    assert urls, "the README says where the CUDA build comes from"
    assert all(re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", url) for url in urls), urls
    assert "--index-url https://download.pytorch.org/whl/cu" in setup


def test_the_several_machines_path_is_not_called_untested():
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    several = readme[readme.index("Several machines") :]
    assert "untested" not in several[: several.index("\n\n")]
    assert "two nodes" in several
