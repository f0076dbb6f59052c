"""napari writers: a Tracks layer as spt's tracks or segments table, a Points layer as spots.

Tables carry the DESIGN columns (pixels and frames), exactly as ``spt run`` writes them, so a
file saved from napari can go straight to ``spt classify`` or trackpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spt.errors import SptInputError
from spt.io import write_table
from spt.napari._layers import META_KEY, Run, spots_table, tracks_table
from spt.schema import SEGMENT_COLUMNS

TABLE_SUFFIXES = (".csv", ".parquet")


def _table_path(path: str) -> Path:
    p = Path(path)
    return p if p.suffix.lower() in TABLE_SUFFIXES else p.with_name(p.name + ".csv")


def write_tracks(path: str, data: Any, attributes: dict) -> list[str]:
    """Write the tracks shown by a Tracks layer as an spt track table (DESIGN columns)."""
    out = _table_path(path)
    table = tracks_table(data, attributes.get("features"))
    return [str(write_table(table, out))]


def write_segments(path: str, data: Any, attributes: dict) -> list[str]:
    """Write the motion segments of the tracks shown by a Tracks layer (DESIGN segment columns)."""
    out = _table_path(path)
    run = (attributes.get("metadata") or {}).get(META_KEY)
    if not isinstance(run, Run) or run.result is None:
        raise SptInputError(
            attributes.get("name", "layer"),
            "no motion segments: this Tracks layer was not analysed by spt "
            "(use 'Track particles' or 'Re-classify stages' first)",
        )
    segments = run.result.analysis.segments
    shown = np.unique(np.asarray(data)[:, 0]).astype(np.int64) if len(data) else []
    ordered = [c for c in SEGMENT_COLUMNS if c in segments]
    table = segments.loc[
        segments["particle"].isin(shown), ordered + [c for c in segments if c not in ordered]
    ]
    return [str(write_table(table, out))]


def write_spots(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Points layer of detections as spt's spots table (``frame, x, y, signal, ...``)."""
    out = _table_path(path)
    table = spots_table(data, attributes.get("features"))
    return [str(write_table(table, out))]
