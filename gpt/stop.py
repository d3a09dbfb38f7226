"""Stopping a run on purpose: SIGTERM/SIGINT from a scheduler or a user, and a wall-clock limit.

The first SIGTERM or SIGINT only raises a flag: the trainer finishes its step, saves
and exits 0. A second SIGINT is the user insisting: it interrupts at once. The
time limit stops the run early enough to save before the deadline.
"""
from __future__ import annotations

import signal
import time
from typing import Any, Optional


class StopRequest:
    """Signal handlers for the lifetime of a run, plus the deadline arithmetic."""

    def __init__(self, time_limit_s: Optional[float]):
        self.reason: Optional[str] = None
        self.deadline = time.monotonic() + time_limit_s if time_limit_s else None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner's worker): no handlers
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        # let a second Ctrl-C through at once
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def out_of_time(self, step_s: float, save_s: float) -> bool:
        """True when one more step and a save might not fit before the deadline."""
        if self.deadline is None:
            return False
        if time.monotonic() + 2.0 * step_s + 1.5 * save_s + 5.0 >= self.deadline:
            self.reason = self.reason or "time_limit"
            return True
        return False
