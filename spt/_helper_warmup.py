"""Imported by the forkserver of :mod:`spt._helpers` (which only imports): readies its helpers.

Importing this module does :func:`spt._helpers.warm_up`: the segmentation, the figures and
matplotlib imported (not detection, which helpers do not do), numba's compiled segmentation
loaded and a first figure drawn, once, before any helper is forked from it.
"""

import atexit
import os

from spt._helpers import warm_up

warm_up(draw=True)

# The server exits when spt does: skip tearing down numpy, numba, matplotlib... (~0.5 s during
# which whoever reads spt's output would wait for the end of the streams the server inherited).
atexit.register(os._exit, 0)
