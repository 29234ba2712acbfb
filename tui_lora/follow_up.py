"""What the app leaves for: the `lora-wizard` commands the user asked to run once it has left the
terminal (resuming a run), and the exit status when there are none. The app and the commands that
open it hand this back; the command line runs it (tui_lora/cli.py), so the app never calls back
into the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FollowUp = list[list[str]]  # `lora-wizard` argument lists to run after the app


@dataclass(frozen=True)
class AppExit:
    """How a command that opened the app ends: `follow_up` runs next when there is any (its first
    failure is the exit status), else `status` is the exit status."""

    status: int = 0
    follow_up: FollowUp = field(default_factory=list)
