"""Real terminals for end-to-end tests: a private tmux server and a private sshd on loopback.

Both are what a user has: tmux is the terminal that can be closed under a running program, and
sshd gives a real SSH connection that can be dropped. Nothing here reads or changes the user's
tmux or SSH setup (~/.tmux.conf, ~/.ssh): keys and configs live in a temp folder, and the tmux
server has a socket name of its own.
The fixtures in conftest.py start and clean these up; the classes are usable on their own too.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

# Generous: these tests share two CPU cores with other work, and a deadline only matters on failure.
DEFAULT_TIMEOUT = 120.0


def wait_until(condition: Callable[[], T], *, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.1, what: str = "") -> T:
    """Poll `condition` until it returns something truthy, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(interval)


def shell_line(*argv: str | os.PathLike, env: Mapping[str, str] | None = None) -> str:
    """One command as a POSIX shell line, e.g. `env HF_HUB_OFFLINE=1 /abs/lora-wizard attach /abs/run`.

    `env` variables are set with env(1), so the line works in any shell and over SSH, whose
    session starts with a minimal environment."""
    words = [str(arg) for arg in argv]
    if env is not None and "PYTHONPATH" in os.environ:
        # A checkout tested through PYTHONPATH (a git worktree) runs its own code over SSH too.
        env = {"PYTHONPATH": os.environ["PYTHONPATH"], **env}
    if env:
        words = ["env", *(f"{name}={value}" for name, value in env.items()), *words]
    return shlex.join(words)


def console_script(name: str) -> Path:
    """The absolute path of a console script of this Python (e.g. `lora-wizard`), so a login
    shell with another PATH still runs the code under test."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return beside_python
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name!r} is neither next to {sys.executable} nor on PATH")
    return Path(found).resolve()


def process_gone(pid: int) -> bool:
    """Whether a process has exited. A zombie counts as gone: it runs no code and holds no files
    (a detached engine is reparented to pid 1, which may be slow to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_process_tree(pid: int, *, timeout: float = 10.0) -> None:
    """SIGTERM a process and everything it started, then SIGKILL what is left after `timeout`."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)


# --------------------------------------------------------------------------------------- tmux

# Read instead of ~/.tmux.conf. remain-on-exit keeps a pane (its text and exit status) after its
# program ends; no status line, so the pane is exactly width x height; no escape delay, so an
# Escape sent to a TUI arrives at once.
TMUX_CONFIG = """\
set -g remain-on-exit on
set -g status off
set -g history-limit 10000
set -g default-terminal "screen-256color"
set -s escape-time 0
"""


class TmuxServer:
    """A tmux server of its own (`tmux -L <socket name>`): sessions are terminals a test can
    type into, read, and close (`kill_server` closes them all, as closing a terminal window does)."""

    def __init__(self, folder: Path, *, socket_name: str | None = None, env: Mapping[str, str] | None = None):
        self.socket_name = socket_name or f"lwz-{secrets.token_hex(4)}"
        self.config_file = folder / "tmux.conf"
        self.folder = folder
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(TMUX_CONFIG, encoding="utf-8")
        # The server inherits this environment when it starts; TMUX would mark us as nested.
        self.env = {name: value for name, value in (env or os.environ).items() if name != "TMUX"}
        self._session_count = 0

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one tmux command against this server."""
        command = ["tmux", "-L", self.socket_name, "-f", str(self.config_file), *args]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def new_session(
        self,
        command: str | Sequence[str],
        *,
        width: int = 100,
        height: int = 30,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> str:
        """Start `command` (a shell line, or argv) in a new detached session of `width` x `height`
        cells; start the server first if needed. Returns the session name, the target for the
        other methods."""
        self._session_count += 1
        name = name or f"s{self._session_count}"
        line = command if isinstance(command, str) else shlex.join(str(word) for word in command)
        # The shell records the program's exit status itself: tmux 3.3 can leave a finished
        # program unreaped (a zombie) with an empty #{pane_dead_status}.
        line = f"{line}; echo $? > {shlex.quote(str(self._status_file(name)))}"
        args = ["new-session", "-d", "-s", name, "-x", str(width), "-y", str(height)]
        if cwd is not None:
            args += ["-c", str(cwd)]
        for variable, value in (env or {}).items():
            args += ["-e", f"{variable}={value}"]
        self.tmux(*args, line)
        return name

    def send_keys(self, target: str, *keys: str, literal: bool = False) -> None:
        """Type into a pane: tmux key names ("Enter", "Escape", "C-c", "Down") or, with
        `literal`, text as is."""
        self.tmux("send-keys", "-t", target, *(["-l"] if literal else []), *keys)

    def capture_pane(self, target: str, *, history: bool = False, escapes: bool = False) -> str:
        """The pane's text, wrapped lines joined; `history` includes lines scrolled out of view,
        `escapes` keeps colours and attributes as escape sequences."""
        args = ["capture-pane", "-p", "-J", "-t", target]
        if history:
            args += ["-S", "-"]
        if escapes:
            args.append("-e")
        return self.tmux(*args).stdout

    def wait_for_text(self, target: str, pattern: str | re.Pattern, *, timeout: float = DEFAULT_TIMEOUT, history: bool = True) -> re.Match:
        """Wait until the pane shows `pattern` (plain text or a regex); returns the match."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        screen = ""

        def search() -> re.Match | None:
            nonlocal screen
            screen = self.capture_pane(target, history=history)
            return regex.search(screen)

        try:
            return wait_until(search, timeout=timeout, interval=0.2, what=f"{regex.pattern!r} in tmux pane {target}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the pane shows:\n{screen}") from None

    def display(self, target: str, tmux_format: str) -> str:
        """A tmux format expanded for the pane, e.g. "#{pane_pid}" or "#{pane_width}x#{pane_height}"."""
        return self.tmux("display-message", "-p", "-t", target, tmux_format).stdout.strip()

    def pane_pid(self, target: str) -> int:
        """The pid of the program the pane started."""
        return int(self.display(target, "#{pane_pid}"))

    def exit_status(self, target: str) -> int | None:
        """The exit status of the pane's program (128 + N if signal N ended it), or None while
        it runs. tmux can show a pane dead a moment before it has reaped the program: that
        also counts as running."""
        recorded = self._status_file(target)
        if recorded.is_file() and recorded.read_text().strip():
            return int(recorded.read_text().strip())
        dead, status, signal_number = self.display(target, "#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}").split("|")
        if dead != "1":
            return None
        if signal_number:
            return 128 + int(signal_number)
        return int(status) if status else None

    def _status_file(self, session: str) -> Path:
        return self.folder / f"{self.socket_name}-{session}.status"

    def wait_for_exit(self, target: str, *, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the pane's program to end; returns its exit status."""

        def status() -> tuple[int] | None:  # a tuple, so that exit status 0 counts as done
            code = self.exit_status(target)
            return None if code is None else (code,)

        return wait_until(status, timeout=timeout, interval=0.2, what=f"the program in tmux pane {target} to exit")[0]

    def is_running(self) -> bool:
        return self.tmux("list-sessions", check=False).returncode == 0

    def kill_server(self) -> None:
        """Close every terminal of this server at once: their programs get SIGHUP, as when a
        terminal window is closed. Does nothing if the server is not running."""
        self.tmux("kill-server", check=False)
        self.socket_path.unlink(missing_ok=True)  # tmux leaves it behind; a new server makes a new one

    @property
    def socket_path(self) -> Path:
        """Where `tmux -L` puts the socket: $TMUX_TMPDIR (or /tmp), then tmux-<uid>/<name>."""
        return Path(self.env.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}" / self.socket_name


# ---------------------------------------------------------------------------------------- sshd

SSHD_CONFIG = """\
# A private sshd for tests: loopback only, this user only, public-key authentication only.
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserRC no
PermitUserEnvironment no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
LogLevel VERBOSE
"""

SSH_CLIENT_OPTIONS = (
    "-F", "/dev/null",  # no ~/.ssh/config
    "-o", "IdentitiesOnly=yes",  # only our key, never an agent's
    "-o", "BatchMode=yes",  # never prompt
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",  # no "Permanently added ... to the list of known hosts"
    "-o", "ConnectTimeout=30",
)  # fmt: skip


def ssh_keygen(path: Path, comment: str) -> Path:
    """A fresh ed25519 key pair without a passphrase at `path` (and `path`.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True, timeout=30)
    return path


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SshServer:
    """A running private sshd; `command` builds the ssh client command that logs into it as
    the current user with the test's own key."""

    def __init__(self, folder: Path, process: subprocess.Popen, port: int, user: str, client_key: Path):
        self.folder = folder
        self.process = process
        self.port = port
        self.user = user
        self.host = "127.0.0.1"
        self.client_key = client_key
        self.log_file = folder / "sshd.log"

    def command(self, remote_command: str, *, tty: bool = False) -> list[str]:
        """`ssh ... user@127.0.0.1 REMOTE_COMMAND`; `tty` forces a terminal on the far end
        (`ssh -tt`), as an interactive login has, so dropping the connection hangs it up."""
        return [
            "ssh", *SSH_CLIENT_OPTIONS, "-i", str(self.client_key), "-p", str(self.port),
            *(["-tt"] if tty else []), f"{self.user}@{self.host}", remote_command,
        ]  # fmt: skip

    def run(self, remote_command: str, *, tty: bool = False, timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess:
        """Run one remote command to its end; its output is text (stderr separate)."""
        return subprocess.run(
            self.command(remote_command, tty=tty), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )

    def popen(self, remote_command: str, *, tty: bool = False, **options) -> subprocess.Popen:
        """Start a connection running `remote_command` and return the ssh client process."""
        return subprocess.Popen(self.command(remote_command, tty=tty), **options)

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        """Stop the sshd and the connections it is still serving (sessions end with them)."""
        stop_process_tree(self.process.pid)
        self.process.wait(timeout=30)


def start_sshd(folder: Path, *, user: str, attempts: int = 3, timeout: float = 30.0) -> SshServer:
    """Start `sshd -D -e` on a free loopback port with a fresh host key, and a client key that
    is the only authorized one. Retries on another port if the chosen one was taken meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key = ssh_keygen(folder / "host_ed25519", "lora-wizard test host")
    client_key = ssh_keygen(folder / "client_ed25519", "lora-wizard test client")
    authorized_keys = folder / "authorized_keys"
    shutil.copyfile(client_key.with_suffix(".pub"), authorized_keys)
    _ensure_privilege_separation_directory()
    for _ in range(attempts):
        port = free_loopback_port()
        config = folder / "sshd_config"
        config.write_text(
            SSHD_CONFIG.format(
                port=port, host_key=host_key, pid_file=folder / "sshd.pid", authorized_keys=authorized_keys, user=user
            ),
            encoding="utf-8",
        )
        with (folder / "sshd.log").open("ab") as log:
            process = subprocess.Popen(
                [sshd_path(), "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        server = SshServer(folder, process, port, user, client_key)
        if _wait_for_banner(server, timeout):
            return server
        server.stop()
    raise RuntimeError(f"sshd did not start after {attempts} attempts; its log:\n{server.log()}")


def sshd_path() -> str:
    """sshd's absolute path (it must be started by one); Debian keeps it off a user's PATH."""
    return shutil.which("sshd") or "/usr/sbin/sshd"


def _ensure_privilege_separation_directory() -> None:
    """sshd run as root needs its privilege separation directory, which a service manager
    normally creates at boot (Debian: /run/sshd); containers often lack it."""
    if os.geteuid() != 0:
        return
    directory = Path("/run/sshd")
    if not directory.is_dir():
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)


def _wait_for_banner(server: SshServer, timeout: float) -> bool:
    """Whether the sshd answers with its SSH banner within `timeout` (False if it exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with socket.create_connection((server.host, server.port), timeout=2) as connection:
                if connection.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False

