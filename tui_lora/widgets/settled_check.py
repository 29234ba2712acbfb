"""Check what the user types once the typing settles, in a thread, and keep only the answer
for what the field holds now.

    check = SettledCheck(screen, "model", key=lambda: draft.get("model.path"), run=read_model, show=show_info)
    check.soon()               # on every keystroke: runs SETTLE seconds after the last one
    result = await check.settled()   # Next: the answer for the value typed now, waiting if needed

`run(key)` runs in a thread worker and must return its verdict as a value (a problem is a
result, not an exception). `show(key, result)` runs on the screen's thread, and only while `key`
is still what the field holds: an answer for an older value is dropped, a newer check follows.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from functools import partial
from typing import Any, Generic, TypeVar

from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerCancelled, WorkerFailed

Key = TypeVar("Key", bound=Hashable)


class SettledCheck(Generic[Key]):
    def __init__(
        self,
        screen: Screen,
        name: str,
        *,
        key: Callable[[], Key],
        run: Callable[[Key], Any],
        show: Callable[[Key, Any], None],
        started: Callable[[Key], None] | None = None,
        delay: float = 0.3,
    ) -> None:
        self.screen = screen
        self.name = name
        self.key = key
        self.run = run
        self.show = show
        self.started = started  # told when a check starts (the screen says it is checking)
        self.delay = delay
        self.result: Any = None
        self.result_for: Key | None = None  # the key `result` answers
        self._checked_any = False
        self._timer: Timer | None = None
        self._worker: Worker | None = None
        self._worker_for: Key | None = None

    @property
    def is_current(self) -> bool:
        """Whether the shown result answers the value typed now."""
        return self._checked_any and self.result_for == self.key()

    def soon(self) -> None:
        """Check `delay` seconds after the last call (the typing has settled)."""
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.screen.set_timer(self.delay, self.now)

    def now(self, *, again: bool = False) -> None:
        """Check the value typed now, unless that check is already running or answered
        (`again`: answered or not, as when the files behind the same value changed)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        key = self.key()
        if again:
            self._checked_any = False
        elif self.is_current or (self._worker is not None and self._worker_for == key and not self._worker.is_finished):
            return
        if self.started is not None:
            self.started(key)
        self._worker_for = key
        self._worker = self.screen.run_worker(
            partial(self._run, key), thread=True, exclusive=True, group=f"check-{self.name}", exit_on_error=False
        )

    async def settled(self) -> Any:
        """The result for the value typed now: at once when it is known, else after its check.
        A check that fails (a bug, not a user mistake) leaves the result None."""
        while not self.is_current:
            if not self.screen.is_attached:
                return None
            self.now()
            try:
                await self._worker.wait()
            except WorkerCancelled:
                continue  # a newer value superseded it: check that one
            except WorkerFailed:
                return None
        return self.result

    def _run(self, key: Key) -> None:
        result = self.run(key)
        self.screen.app.call_from_thread(self._arrived, key, result)

    def _arrived(self, key: Key, result: Any) -> None:
        if key != self.key():
            return  # typed on meanwhile: a newer check follows
        self.result, self.result_for, self._checked_any = result, key, True
        self.show(key, result)
