"""Compute the next items of a pure sequence in a background thread, a few ahead of the consumer.

The producer computes `produce(k)` for k = start, start + 1, ...; since each item
is a pure function of k, prefetching changes when a batch is computed, never
what it holds. The consumer's position stays the truth: after a jump (resume),
close this prefetcher and start another at the new position.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_POLL_S = 0.1


class Prefetcher:
    """A daemon thread filling a bounded queue with (k, item) in order of k."""

    def __init__(self, produce: Callable[[int], Any], start: int, depth: int):
        self.next_index = start
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_fill, args=(produce, start, self._queue, self._stop),
                                        name="batch-prefetch", daemon=True)
        self._thread.start()

    def get(self) -> Any:
        """The item at `next_index`; re-raises whatever the producer raised there."""
        index, item, error = self._queue.get()
        assert index == self.next_index, (index, self.next_index)
        if error is not None:
            raise error
        self.next_index += 1
        return item

    def close(self) -> None:
        """Stop the thread, drop what it prepared, and wait for it to finish its current item.

        Waiting matters at exit: a daemon thread still inside torch while the interpreter shuts
        down can abort the process ("terminate called without an active exception").
        """
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)


def _fill(produce: Callable[[int], Any], k: int, out: queue.Queue, stop: threading.Event) -> None:
    # Holds no reference to the consumer, so a dropped loader is collected and its finaliser stops us.
    while not stop.is_set():
        try:
            entry = (k, produce(k), None)
        except BaseException as err:  # handed to the consumer, raised there with its traceback
            entry = (k, None, err)
        while not stop.is_set():
            try:
                out.put(entry, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        if entry[2] is not None:
            return
        k += 1
