"""Progress of a batch: movies done and frames done per movie.

A live status line on a terminal, plain lines in log files, silent when quiet. Safe to call from
several threads (the local process pool and Dask report from background threads).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

__all__ = ["BatchProgress"]


class BatchProgress:
    """Report a batch of ``n_movies`` movies: a batch count and a frame count per movie.

    Parameters
    ----------
    n_movies : int
        Movies in the batch.
    stream : file-like
        Where to write (standard error by default).
    enabled : bool
        False makes every call a no-op (``--quiet``).

    Notes
    -----
    On a terminal one status line is redrawn in place, e.g.
    ``[2/8 movies] | cell_03 320/600 24 frames/s | cell_04 64/600``, and a permanent line is
    written per finished movie. Otherwise (log files) plain lines are written: one per movie at
    each quarter of its frames, and one per finished movie.
    """

    def __init__(self, n_movies: int, *, stream: TextIO | None = None, enabled: bool = True):
        self.n_movies = int(n_movies)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n_done = 0
        self._active: dict[str, tuple[int, int]] = {}
        self._next_quarter: dict[str, int] = {}
        self._start: dict[str, float] = {}
        self._lock = threading.Lock()
        self._status_width = 0
        self._last_draw = 0.0

    def frames(self, movie: str, done: int, total: int | None) -> None:
        """Record that ``done`` of ``total`` frames of ``movie`` are processed."""
        if not self.enabled:
            return
        total = int(total or 0)
        with self._lock:
            self._start.setdefault(movie, time.perf_counter())
            self._active[movie] = (int(done), total)
            if self.tty:
                now = time.perf_counter()
                if now - self._last_draw > 0.1 or done >= total:
                    self._draw()
                    self._last_draw = now
            elif total > 0:
                quarter = 4 * int(done) // total
                if quarter >= self._next_quarter.get(movie, 1):
                    self._line(f"{movie}: {done}/{total} frames ({100 * int(done) // total}%)")
                    self._next_quarter[movie] = quarter + 1

    def movie_done(self, movie: str, message: str) -> None:
        """Record that ``movie`` is finished (processed, skipped or failed) with a message."""
        with self._lock:
            self.n_done += 1
            self._active.pop(movie, None)
            self._next_quarter.pop(movie, None)
            self._start.pop(movie, None)
            if self.enabled:
                self._line(f"[{self.n_done}/{self.n_movies}] {movie}: {message}")
                if self.tty:
                    self._draw()

    def close(self) -> None:
        """Clear the status line (terminal only)."""
        with self._lock:
            if self.tty and self._status_width:
                self.stream.write("\r" + " " * self._status_width + "\r")
                self.stream.flush()
                self._status_width = 0

    def _line(self, text: str) -> None:
        if self.tty and self._status_width:
            self.stream.write("\r" + " " * self._status_width + "\r")
            self._status_width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self) -> None:
        parts = [f"[{self.n_done}/{self.n_movies} movies]"]
        for movie, (done, total) in list(self._active.items())[:4]:
            elapsed = time.perf_counter() - self._start.get(movie, time.perf_counter())
            if total and done >= total:
                state = " linking + analysis"
            else:
                state = f" {done / elapsed:.0f} frames/s" if elapsed > 0.5 else ""
            parts.append(f"{movie} {done}/{total}{state}")
        if len(self._active) > 4:
            parts.append(f"+{len(self._active) - 4} more")
        text = " | ".join(parts)
        pad = max(self._status_width - len(text), 0)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._status_width = len(text)
