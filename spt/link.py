"""Linking spots into trajectories (trackpy's linker with gap closing for blinking)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import trackpy

from spt.schema import SPOT_COLUMNS, empty_table

trackpy.quiet()


@dataclass(frozen=True)
class LinkConfig:
    """Linking parameters.

    Attributes
    ----------
    max_step_um : float
        Largest displacement between consecutive frames, um.
    max_gap_frames : int
        Longest blink (frames a particle may be missing) bridged within one track.
    """

    max_step_um: float = 1.2
    max_gap_frames: int = 5


def link(
    spots: pd.DataFrame,
    config: LinkConfig = LinkConfig(),
    *,
    pixel_size_um: float,
    frame_interval_s: float,
) -> pd.DataFrame:
    """Link spots into tracks.

    Parameters
    ----------
    spots : DataFrame
        Spots table (``frame, x, y`` in px).
    config : LinkConfig
        Linking parameters.
    pixel_size_um, frame_interval_s : float
        Movie calibration, um/px and s.

    Returns
    -------
    DataFrame
        ``spots`` plus an int ``particle`` column, sorted by particle and frame.
    """
    if spots.empty:
        return empty_table((*SPOT_COLUMNS, "particle"))
    search = config.max_step_um / pixel_size_um
    tracks = trackpy.link(
        spots,
        search_range=search,
        memory=config.max_gap_frames,
        adaptive_stop=0.5,
        adaptive_step=0.8,
    )
    tracks["particle"] = tracks["particle"].astype("int64")
    return tracks.sort_values(["particle", "frame"], ignore_index=True)
