"""Imported by the forkserver of :mod:`spt._helpers` (which only imports): readies its helpers.

Importing this module does :func:`spt._helpers.warm_up`: the segmentation, the figures and
matplotlib imported (not detection, which helpers do not do), numba's compiled segmentation
loaded and a first figure drawn, once, before any helper is forked from it.
"""

import atexit
import contextlib
import os
import sys
import threading

from spt._helpers import warm_up

#: How much lower the warm-up's priority is than spt's: it runs on the core that spt's start-up
#: leaves idle, and should leave the cores to spt's detection threads once they start.
WARM_UP_NICENESS = 10


def _warm_up_yielding() -> None:
    if sys.platform.startswith("linux"):  # a Linux thread has its own niceness
        with contextlib.suppress(OSError):
            own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            os.setpriority(
                os.PRIO_PROCESS, threading.get_native_id(), min(own + WARM_UP_NICENESS, 19)
            )
    warm_up(draw=True)


# In a thread of its own, so that the server's main thread, which forks the helpers, keeps spt's
# priority (the helpers work while spt waits for them).
_thread = threading.Thread(target=_warm_up_yielding, name="spt-helper-warm-up")
_thread.start()
_thread.join()

# The server exits when spt does: skip tearing down numpy, numba, matplotlib... (~0.5 s during
# which whoever reads spt's output would wait for the end of the streams the server inherited).
atexit.register(os._exit, 0)
