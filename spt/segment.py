"""Motion-state segmentation: each track point gets a state, each run of one state a segment.

Rolling-window features (net speed and radius of gyration) classify points; runs shorter than
``min_segment_frames`` are merged into their neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spt.msd import fit_anomalous, track_msd
from spt.schema import SEGMENT_COLUMNS, STATES, empty_table


@dataclass(frozen=True)
class SegmentConfig:
    """Segmentation parameters.

    Attributes
    ----------
    window_frames : int
        Width of the rolling window of per-point features, frames (odd).
    min_segment_frames : int
        Shortest segment kept, frames.
    directed_speed_um_s : float
        Net speed over the window above which motion is directed, um/s.
    immobile_radius_um : float
        Radius of gyration over the window below which a particle is immobile, um.
    confined_radius_um : float
        Radius of gyration below which (and above immobile) motion is confined, um.
    """

    window_frames: int = 11
    min_segment_frames: int = 5
    directed_speed_um_s: float = 0.15
    immobile_radius_um: float = 0.03
    confined_radius_um: float = 0.12


def _point_states(
    x: np.ndarray, y: np.ndarray, frames: np.ndarray, cfg: SegmentConfig, px: float, dt: float
) -> np.ndarray:
    half = cfg.window_frames // 2
    n = len(x)
    states = np.empty(n, dtype=object)
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        wx, wy, wf = x[lo:hi], y[lo:hi], frames[lo:hi]
        span = (wf[-1] - wf[0]) * dt
        net = np.hypot(wx[-1] - wx[0], wy[-1] - wy[0]) * px
        rg = np.sqrt(np.var(wx) + np.var(wy)) * px
        path = np.hypot(np.diff(wx), np.diff(wy)).sum() * px
        straight = net / path if path > 0 else 0.0
        if span > 0 and net / span > cfg.directed_speed_um_s and straight > 0.5:
            states[i] = "directed"
        elif rg < cfg.immobile_radius_um:
            states[i] = "immobile"
        elif rg < cfg.confined_radius_um:
            states[i] = "confined"
        else:
            states[i] = "free"
    return states


def _merge_short(states: np.ndarray, min_len: int) -> np.ndarray:
    states = states.copy()
    while True:
        bounds = np.flatnonzero(states[1:] != states[:-1]) + 1
        starts = np.r_[0, bounds]
        ends = np.r_[bounds, len(states)]
        lengths = ends - starts
        if len(starts) == 1 or lengths.min() >= min_len:
            return states
        k = int(np.argmin(lengths))
        neighbour = starts[k] - 1 if k > 0 else ends[k]
        if 0 < k < len(starts) - 1 and lengths[k + 1] > lengths[k - 1]:
            neighbour = ends[k]
        states[starts[k] : ends[k]] = states[neighbour]


def segment_tracks(
    tracks: pd.DataFrame,
    config: SegmentConfig = SegmentConfig(),
    *,
    pixel_size_um: float,
    frame_interval_s: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give each track point a motion state and cut tracks into single-state segments.

    Parameters
    ----------
    tracks : DataFrame
        ``frame, x, y`` (px) and ``particle``; gaps in frames are allowed.
    config : SegmentConfig
        Segmentation parameters.
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.

    Returns
    -------
    tracks : DataFrame
        Input plus ``segment`` (int, per particle) and ``state``.
    segments : DataFrame
        One row per segment: ``particle, segment, start_frame, end_frame, n_points, state,
        D_um2_s`` (from an MSD fit), ``alpha``, ``speed_um_s`` (net displacement / duration).
    """
    out = tracks.sort_values(["particle", "frame"], ignore_index=True)
    seg_cols = [c for c in SEGMENT_COLUMNS if c != "stage"]
    if out.empty:
        out = out.assign(segment=pd.Series(dtype="int64"), state=pd.Series(dtype=object))
        return out, empty_table(seg_cols)
    px, dt = pixel_size_um, frame_interval_s
    states = np.empty(len(out), dtype=object)
    segment_ids = np.zeros(len(out), dtype=np.int64)
    rows = []
    for particle, idx in out.groupby("particle", sort=False).indices.items():
        x = out["x"].to_numpy()[idx]
        y = out["y"].to_numpy()[idx]
        f = out["frame"].to_numpy()[idx]
        st = _merge_short(_point_states(x, y, f, config, px, dt), config.min_segment_frames)
        states[idx] = st
        bounds = np.r_[0, np.flatnonzero(st[1:] != st[:-1]) + 1, len(st)]
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            segment_ids[idx[a:b]] = k
            lags, msd, counts = track_msd(f[a:b], x[a:b], y[a:b], max(2, (b - a) // 4))
            D, alpha = fit_anomalous(lags * dt, msd * px**2, counts)
            duration = (f[b - 1] - f[a]) * dt
            net = np.hypot(x[b - 1] - x[a], y[b - 1] - y[a]) * px
            rows.append(
                (
                    particle,
                    k,
                    f[a],
                    f[b - 1],
                    b - a,
                    st[a],
                    D,
                    alpha,
                    net / duration if duration > 0 else 0.0,
                )
            )
    out["segment"] = segment_ids
    out["state"] = pd.Categorical(states, categories=STATES).astype(object)
    segments = pd.DataFrame(rows, columns=seg_cols).astype({c: "int64" for c in seg_cols[:5]})
    return out, segments
