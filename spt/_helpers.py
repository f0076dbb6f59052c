"""Helper processes of a movie processed in this process, started before they are needed.

``spt run`` on one movie detects it here while helper processes wait to segment its tracks and
draw its figures. They come from a forkserver that :func:`start_helper_server` launches as the
command starts: it imports spt and matplotlib and loads numba's compiled segmentation
(:mod:`spt._helper_warmup`) on the core that this process's own start-up leaves idle, so the
helpers it forks later are ready at once. This module imports nothing heavy.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import BaseContext

__all__ = ["THREAD_VARIABLES", "start_helper_server"]

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
