"""Figures of the Results widget, drawn on plain matplotlib Figures (no pyplot, no Qt).

The widget shows them on Qt canvases; export saves the same Figures to files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spt.msd import track_msd
from spt.napari._layers import STATE_COLORS, UNASSIGNED_COLOR
from spt.plot import STAGE_COLORS
from spt.schema import STAGES
from spt.summary import step_speeds

#: Longest MSD lag shown, as a fraction of the track's span (longer lags average few steps).
MSD_MAX_LAG_FRACTION = 0.25


def draw_speed_distribution(
    fig: Figure, tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> None:
    """Histogram of frame-to-frame step speeds per delivery stage (log-spaced bins).

    Parameters
    ----------
    fig : Figure
        Cleared and drawn on.
    tracks : DataFrame
        ``particle, frame, x, y`` (px) and ``stage``.
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.
    """
    fig.clear()
    ax = fig.add_subplot(1, 1, 1)
    steps = (
        step_speeds(tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s)
        if len(tracks)
        else pd.DataFrame({"stage": [], "speed_um_s": []})
    )
    speeds = steps["speed_um_s"].to_numpy()
    positive = speeds[speeds > 0]
    if positive.size:
        lo, hi = np.log10(positive.min()), np.log10(positive.max())
        bins = np.logspace(lo - 0.05, hi + 0.05, 40)
        for stage in STAGES:
            s = steps.loc[steps["stage"] == stage, "speed_um_s"].to_numpy()
            s = s[s > 0]
            if s.size:
                ax.hist(
                    s,
                    bins=bins,
                    histtype="step",
                    density=True,
                    lw=1.5,
                    color=STAGE_COLORS[stage],
                    label=f"{stage} ({s.size})",
                )
        ax.set_xscale("log")
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step speed (µm/s)")
    ax.set_ylabel("density")
    ax.set_title("Frame-to-frame speed by delivery stage", fontsize=9)
    fig.tight_layout()


def draw_track(
    fig: Figure,
    track: pd.DataFrame,
    segments: pd.DataFrame,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
) -> None:
    """One track: its MSD with each segment's fit, and its step speeds over time by segment.

    Parameters
    ----------
    fig : Figure
        Cleared and drawn on.
    track : DataFrame
        The points of one particle: ``frame, x, y`` (px), ``stage``.
    segments : DataFrame
        Its segments: ``segment, start_frame, end_frame, state, stage, D_um2_s, alpha``.
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.

    Notes
    -----
    The MSD is time-averaged over the whole track and gap-aware (:func:`spt.msd.track_msd`);
    each segment's line is its fitted ``4 D t^alpha`` (Michalet 2010), so a stop-and-go track
    shows why one power law cannot describe it.
    """
    fig.clear()
    ax_msd, ax_speed = fig.subplots(2, 1)
    track = track.sort_values("frame")
    if track.empty:
        fig.tight_layout()
        return
    particle = int(track["particle"].iloc[0])
    frames = track["frame"].to_numpy()
    span = int(frames[-1] - frames[0])
    max_lag = max(1, int(span * MSD_MAX_LAG_FRACTION))
    lags, msd, _ = track_msd(frames, track["x"].to_numpy(), track["y"].to_numpy(), max_lag)
    t = lags * frame_interval_s
    ax_msd.loglog(t, msd * pixel_size_um**2, "o", ms=3, color="k", label="track")
    for seg in segments.itertuples(index=False):
        if not (np.isfinite(seg.D_um2_s) and seg.D_um2_s > 0 and len(t)):
            continue
        color = STATE_COLORS.get(seg.state, UNASSIGNED_COLOR)
        ax_msd.loglog(
            t,
            4 * seg.D_um2_s * t**seg.alpha,
            "--",
            color=color,
            lw=1,
            label=f"seg {seg.segment} {seg.state}: α={seg.alpha:.2f}",
        )
    ax_msd.set_xlabel("lag (s)")
    ax_msd.set_ylabel("MSD (µm²)")
    ax_msd.set_title(f"particle {particle}: MSD", fontsize=9)
    ax_msd.legend(fontsize=6, frameon=False)

    t_track = track.assign(stage=track["stage"] if "stage" in track else "")
    steps = step_speeds(t_track, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s)
    for seg in segments.itertuples(index=False):
        ax_speed.axvspan(
            seg.start_frame * frame_interval_s,
            (seg.end_frame + 1) * frame_interval_s,
            color=STAGE_COLORS.get(seg.stage, UNASSIGNED_COLOR),
            alpha=0.25,
            lw=0,
        )
        ax_speed.text(
            (seg.start_frame + 0.5) * frame_interval_s,
            1.0,
            f"{seg.stage}\n{seg.state}",
            transform=ax_speed.get_xaxis_transform(),
            fontsize=6,
            va="top",
        )
    ax_speed.plot(steps["frame"] * frame_interval_s, steps["speed_um_s"], "-", color="k", lw=1)
    ax_speed.set_xlabel("time (s)")
    ax_speed.set_ylabel("step speed (µm/s)")
    ax_speed.set_title("step speeds, shaded by segment stage", fontsize=9)
    fig.tight_layout()
