"""A small progress reporter.

A live bar on a terminal, plain lines in log files, silent when quiet.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Report progress of ``total`` units of work.

    Parameters
    ----------
    total : int
        Units of work (e.g. frames).
    desc : str
        Label shown before the bar.
    stream : file-like
        Where to write (standard error by default).
    enabled : bool
        False makes every call a no-op (``--quiet``).
    """

    def __init__(
        self, total: int, desc: str, *, stream: TextIO | None = None, enabled: bool = True
    ):
        self.total = max(int(total), 1)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._next_line = 0.25
        self._start = time.perf_counter()
        self.done = 0

    def __call__(self, done: int, total: int | None = None) -> None:
        """Record that ``done`` units are finished (absolute count)."""
        if total:
            self.total = max(int(total), 1)
        self.done = min(int(done), self.total)
        if not self.enabled:
            return
        frac = self.done / self.total
        if self.tty:
            bar = "#" * int(30 * frac)
            rate = self.done / max(time.perf_counter() - self._start, 1e-9)
            self.stream.write(f"\r{self.desc} [{bar:<30}] {self.done}/{self.total} ({rate:.0f}/s)")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif frac >= self._next_line or self.done >= self.total:
            self.stream.write(f"{self.desc}: {self.done}/{self.total} ({100 * frac:.0f}%)\n")
            self.stream.flush()
            while self._next_line <= frac:
                self._next_line += 0.25
