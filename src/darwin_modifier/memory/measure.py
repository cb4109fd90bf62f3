"""Measured peak host memory, to hold the plan to account on CPU (tests, benchmark).

Resident set size sampled every few milliseconds on a thread: torch has no CPU
allocator statistics, and ``ru_maxrss`` cannot be reset between phases.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class PeakRSS:
    """``peak``: the largest RSS seen inside the ``with`` block, in bytes."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self.peak = 0

    def now(self) -> int:
        return self._process.memory_info().rss

    @contextmanager
    def watch(self):
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                self.peak = max(self.peak, self.now())
                stop.wait(self._interval)

        thread = threading.Thread(target=sample, daemon=True)
        self.peak = self.now()
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak = max(self.peak, self.now())
