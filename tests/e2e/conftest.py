"""End-to-end fixtures: real terminals (a private tmux server, a private sshd) and a guard that
no detached engine outlives its test.

    def test_something(tmux_server):
        pane = tmux_server.new_session("lora-wizard ...", width=120, height=40)
        tmux_server.wait_for_text(pane, "finished")

    def test_over_ssh(sshd_server):
        result = sshd_server.run("echo hello")
"""

from __future__ import annotations

import getpass
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .terminals import SshServer, TmuxServer, process_gone, sshd_path, start_sshd, wait_until


def _require_programs(*programs: str) -> None:
    """Skip the test unless every program (a name on PATH or an absolute path) is installed."""
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} installed (Debian: apt-get install tmux openssh-server openssh-client)")


@pytest.fixture
def tmux_server(tmp_path_factory) -> Iterator[TmuxServer]:
    """A private tmux server (socket `lwz-<random>`, our own config); killed at the end."""
    _require_programs("tmux")
    server = TmuxServer(tmp_path_factory.mktemp("tmux"))
    yield server
    server.kill_server()


@pytest.fixture
def sshd_server(tmp_path_factory) -> Iterator[SshServer]:
    """A private sshd on a free loopback port that lets the current user in with a key made for
    this test (never ~/.ssh); stopped at the end, with any connection it still serves."""
    _require_programs(sshd_path(), "ssh", "ssh-keygen")
    server = start_sshd(tmp_path_factory.mktemp("sshd"), user=getpass.getuser())
    yield server
    server.stop()


class DetachedRuns:
    """Run folders whose detached engine must be gone when the test ends."""

    def __init__(self) -> None:
        self.folders: list[Path] = []

    def track(self, folder: Path) -> Path:
        self.folders.append(folder)
        return folder

    def stop_all(self, timeout: float = 60.0) -> None:
        """Ask every engine still running to stop (as `lora-wizard stop` does), then kill any
        that does not let go of its run lock in time."""
        from engine.run_folder import engine_running, request

        running = [folder for folder in self.folders if engine_running(folder)]
        for folder in running:
            request(folder, "stop")
        for folder in running:
            try:
                wait_until(lambda folder=folder: not engine_running(folder), timeout=timeout, what=f"the engine of {folder} to stop")
            except AssertionError:
                pid = _engine_pid(folder)
                if pid and not process_gone(pid):
                    os.kill(pid, 9)


def _engine_pid(folder: Path) -> int | None:
    """The pid the engine wrote into the run's lock file."""
    text = (folder / "engine.lock").read_text(encoding="utf-8").strip() if (folder / "engine.lock").exists() else ""
    return int(text) if text.isdigit() else None


@pytest.fixture
def detached_runs() -> Iterator[DetachedRuns]:
    """`detached_runs.track(run_dir)`: if the test ends (or fails) with that run's engine still
    running, the engine is stopped, so no training outlives its test."""
    runs = DetachedRuns()
    yield runs
    runs.stop_all()
