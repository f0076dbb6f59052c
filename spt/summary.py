"""Per-stage velocity table: how many particles, and how fast they move, in each delivery stage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spt.schema import STAGE_VELOCITY_COLUMNS, STAGES, empty_table


def step_speeds(
    tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> pd.DataFrame:
    """Frame-to-frame speeds within each track.

    A step spans consecutive detections of one particle; across a blinking gap of ``g`` frames
    the displacement is divided by ``g`` frame intervals. Each step is attributed to the stage of
    its end point.

    Returns
    -------
    DataFrame
        ``particle, frame`` (end frame), ``stage, speed_um_s``.
    """
    t = tracks.sort_values(["particle", "frame"])
    same = t["particle"].to_numpy()[1:] == t["particle"].to_numpy()[:-1]
    dx = np.diff(t["x"].to_numpy())[same]
    dy = np.diff(t["y"].to_numpy())[same]
    df = np.diff(t["frame"].to_numpy())[same]
    end = t.iloc[1:][same]
    return pd.DataFrame(
        {
            "particle": end["particle"].to_numpy(),
            "frame": end["frame"].to_numpy(),
            "stage": end["stage"].to_numpy(),
            "speed_um_s": np.hypot(dx, dy) * pixel_size_um / (df * frame_interval_s),
        }
    )


def stage_velocities(
    tracks: pd.DataFrame, segments: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> pd.DataFrame:
    """One row per delivery stage present: counts and frame-to-frame speed statistics.

    Parameters
    ----------
    tracks : DataFrame
        Tracks with ``particle, frame, x, y`` (px) and ``stage``.
    segments : DataFrame
        Segments with ``particle, stage, D_um2_s, alpha``.
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.

    Returns
    -------
    DataFrame
        Columns of :data:`spt.schema.STAGE_VELOCITY_COLUMNS`: speeds in um/s are frame-to-frame
        step speeds; ``D_um2_s`` and ``alpha`` are medians over the stage's segments.
    """
    if tracks.empty:
        return empty_table(STAGE_VELOCITY_COLUMNS)
    steps = step_speeds(tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s)
    return stage_table(steps, segments)


def stage_table(steps: pd.DataFrame, segments: pd.DataFrame) -> pd.DataFrame:
    """Summarise step speeds (``particle, stage, speed_um_s``) and segments per stage.

    Used directly to pool several movies: concatenate their steps and segments with particle
    ids made unique per movie.
    """
    rows = []
    for stage in STAGES:
        segs = segments[segments["stage"] == stage]
        if segs.empty:
            continue
        speeds = steps.loc[steps["stage"] == stage, "speed_um_s"].to_numpy()
        rows.append(
            {
                "stage": stage,
                "n_tracks": int(segs["particle"].nunique()),
                "n_segments": len(segs),
                "n_steps": speeds.size,
                "mean_speed_um_s": float(speeds.mean()) if speeds.size else np.nan,
                "median_speed_um_s": float(np.median(speeds)) if speeds.size else np.nan,
                "sd_speed_um_s": float(speeds.std(ddof=1)) if speeds.size > 1 else np.nan,
                "D_um2_s": float(segs["D_um2_s"].median()),
                "alpha": float(segs["alpha"].median()),
            }
        )
    if not rows:
        return empty_table(STAGE_VELOCITY_COLUMNS)
    return pd.DataFrame(rows, columns=list(STAGE_VELOCITY_COLUMNS))
