"""Helper processes of a movie processed in this process, started before they are needed.

``spt run`` on one movie detects it here while helper processes wait to segment its tracks and
draw its figures. They come from a forkserver that :func:`start_helper_server` launches as the
command starts: it imports what they need (segmentation, figures: not detection) and loads
numba's compiled segmentation and matplotlib's fonts (:mod:`spt._helper_warmup`) on the core
that this process's own start-up leaves idle, so the helpers it forks later are ready at once.
This module imports nothing heavy; its task functions import what they use.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["THREAD_VARIABLES", "segment_part", "start_helper_server", "warm_up"]

#: Environment variables that set the thread count of numerical libraries in helper processes.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def start_helper_server() -> BaseContext | None:
    """Launch a forkserver that warms up (:mod:`spt._helper_warmup`) and return its context.

    Returns None where forkservers do not exist (Windows). The server starts its own
    interpreter and does not block this process; it exits with this process.
    """
    if not sys.platform.startswith("linux") and sys.platform != "darwin":
        return None
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["spt._helper_warmup"])
    saved = dict(os.environ)
    for name in THREAD_VARIABLES:  # inherited by the helpers the server forks
        os.environ.setdefault(name, "1")
    try:
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return ctx


def segment_part(
    tracks: Any, config: Any, *, pixel_size_um: float, frame_interval_s: float
) -> tuple[Any, Any]:
    """:func:`spt.segment.segment_tracks` with single-threaded BLAS (also a helper task: it
    takes the :class:`~spt.segment.SegmentConfig` only, so a helper need not import detection)."""
    from threadpoolctl import threadpool_limits

    from spt.segment import segment_tracks

    with threadpool_limits(limits=1, user_api="blas"):
        return segment_tracks(
            tracks, config, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s
        )


#: What helpers import before their first task (besides :mod:`spt.segment`).
HELPER_MODULES = [
    "spt.report",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "matplotlib.backends.backend_svg",
]


def warm_up(draw: bool = False) -> None:
    """Get a helper or worker ready before its first task: import what the figures need and
    load numba's compiled segmentation (~0.25 s per process at its first track) on a short
    synthetic track; with ``draw``, also draw a small figure as PNG and SVG (the first figure
    of a process loads fonts and the SVG backend, ~0.2 s)."""
    import importlib
    import io

    import numpy as np
    import pandas as pd

    from spt.segment import SegmentConfig

    for name in HELPER_MODULES:
        importlib.import_module(name)
    rng = np.random.default_rng(0)
    steps = rng.normal(0.0, 0.3, (120, 2))
    steps[40:80] += 1.0  # a run between two stops
    xy = 50.0 + np.cumsum(steps, axis=0)
    track = pd.DataFrame({"frame": np.arange(120), "x": xy[:, 0], "y": xy[:, 1], "particle": 0})
    segment_part(track, SegmentConfig(), pixel_size_um=0.1, frame_interval_s=0.033)
    if draw:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2, 2))
        ax = fig.add_subplot()
        ax.plot([1, 10], [1, 10], label="warm-up")
        ax.set_xscale("log")
        ax.set_title("warm-up")
        ax.legend()
        for fmt in ("png", "svg"):
            fig.savefig(io.BytesIO(), format=fmt, dpi=120)
