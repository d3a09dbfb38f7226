"""A one-line progress report for long preparations: bytes read, tokens written, rate, time left."""
from __future__ import annotations

import sys
import time


class Progress:
    """Redraws one line on a terminal; elsewhere (logs, CI) prints a line every `log_every_s` seconds."""

    def __init__(self, label: str, total_bytes: int, log_every_s: float = 30.0):
        self.label, self.total = label, max(total_bytes, 1)
        self.tty = sys.stderr.isatty()
        self.every = 0.2 if self.tty else log_every_s
        self.start = self.last = time.monotonic()

    def update(self, bytes_read: int, tokens: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        frac = min(bytes_read / self.total, 1.0)
        left = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        line = (f"{self.label}: {100 * frac:5.1f}% of {self.total / 1e6:,.1f} MB, {tokens:,} tokens, "
                f"{bytes_read / 1e6 / elapsed:,.1f} MB/s, {elapsed:,.0f} s elapsed, ~{left:,.0f} s left")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self, bytes_read: int, tokens: int) -> None:
        self.update(bytes_read, tokens, force=True)
        if self.tty:
            print(file=sys.stderr)
