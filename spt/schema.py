"""Names that form spt's interface contract: stages, motion states, mask labels, table columns.

Everything that reads or writes a table takes its column names from here (see DESIGN.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: Delivery stages of a targeted nanoparticle, in delivery order (Tada et al. 2007).
STAGES: tuple[str, ...] = (
    "circulation",
    "extravasation",
    "extracellular",
    "membrane_binding",
    "internalization",
    "perinuclear",
)
#: Motion states (AnDi-2024 vocabulary).
STATES: tuple[str, ...] = ("immobile", "confined", "free", "directed")

#: Label values in a mask image.
MASK_LABELS: dict[str, int] = {"background": 0, "vessel": 1, "cell": 2, "nucleus": 3}

SPOT_COLUMNS: tuple[str, ...] = (
    "frame",
    "x",
    "y",
    "signal",
    "background",
    "sigma",
    "x_err",
    "y_err",
)
TRACK_COLUMNS: tuple[str, ...] = (*SPOT_COLUMNS, "particle", "segment", "state", "stage")
SEGMENT_COLUMNS: tuple[str, ...] = (
    "particle",
    "segment",
    "start_frame",
    "end_frame",
    "n_points",
    "state",
    "stage",
    "D_um2_s",
    "alpha",
    "speed_um_s",
)
STAGE_VELOCITY_COLUMNS: tuple[str, ...] = (
    "stage",
    "n_tracks",
    "n_segments",
    "n_steps",
    "mean_speed_um_s",
    "median_speed_um_s",
    "sd_speed_um_s",
    "D_um2_s",
    "alpha",
)

_DTYPES: dict[str, str] = {
    "frame": "int64",
    "particle": "int64",
    "segment": "int64",
    "start_frame": "int64",
    "end_frame": "int64",
    "n_points": "int64",
    "n_tracks": "int64",
    "n_segments": "int64",
    "n_steps": "int64",
    "state": "object",
    "stage": "object",
}


def empty_table(columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Return an empty DataFrame with ``columns`` and their contract dtypes (float by default)."""
    import pandas as pd  # here, not at the top: ``import spt`` (the CLI's start) stays light

    return pd.DataFrame(
        {c: pd.Series(dtype=_DTYPES.get(c, "float64")) for c in columns}, columns=list(columns)
    )
