"""spt: single-particle tracking of fluorescent probes, from TIFF movies to per-stage velocities.

The pipeline is a straight line of pure stages (``io -> detect -> link -> msd/segment -> stages
-> summary``); :mod:`spt.pipeline` strings them together for the CLI, batch runs and napari.
"""

from spt.errors import SptInputError
from spt.schema import MASK_LABELS, STAGES, STATES

__version__ = "0.1.0"

__all__ = ["MASK_LABELS", "STAGES", "STATES", "SptInputError", "__version__"]
