"""Ctrl-C, SIGTERM and SIGHUP during training: stop between two steps, where the run can be
saved and continued, rather than wherever the signal lands (possibly half-way through updating
W1)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

# SIGINT first; SIGHUP (the terminal closed) where the platform has it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
)
# Those a terminal sends the whole process group (Ctrl-C, a closed terminal), workers included.
GROUP_SIGNALS = tuple(n for n in STOP_SIGNALS if n != signal.SIGTERM)


class StopRequests:
    """While active, SIGINT, SIGTERM and SIGHUP set `requested` instead of raising; the trainer
    stops at the next step boundary, saves a checkpoint and raises KeyboardInterrupt itself. A
    second signal raises at once, for a step that never ends.

    Only in the main thread (the only one signals reach), and never for a signal ignored on
    purpose (sweep workers leave Ctrl-C to the sweep that started them).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                previous = signal.getsignal(number)
                if previous is not signal.SIG_IGN:
                    self._previous[number] = previous
                    signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
