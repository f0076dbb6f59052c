"""Figures of the Results widget, drawn on plain matplotlib Figures (no pyplot, no Qt).

The widget shows them on Qt canvases; export saves the same Figures to files.
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spt.msd import msd_curve
from spt.napari._layers import STATE_COLORS, UNASSIGNED_COLOR
from spt.plot import STAGE_COLORS
from spt.schema import STAGES
from spt.summary import step_speeds

#: Longest MSD lag shown, as a fraction of the track's span (longer lags average few steps).
MSD_MAX_LAG_FRACTION = 0.25


def draw_speed_distribution(
    fig: Figure, tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> None:
    """Box plot of frame-to-frame step speeds per delivery stage (log axis).

    Boxes span the quartiles, whiskers the 5th-95th percentiles; stages in delivery order.

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
    steps = steps[steps["speed_um_s"] > 0]  # a log axis; zero steps are exact repeats
    present = [s for s in STAGES if (steps["stage"] == s).any()]
    if present:
        data = [steps.loc[steps["stage"] == s, "speed_um_s"].to_numpy() for s in present]
        # matplotlib >= 3.10 says orientation=, older ones vert=
        horizontal = (
            {"orientation": "horizontal"}
            if "orientation" in inspect.signature(ax.boxplot).parameters
            else {"vert": False}
        )
        boxes = ax.boxplot(
            data,
            **horizontal,
            whis=(5, 95),
            showfliers=False,
            patch_artist=True,
            widths=0.6,
            medianprops={"color": "k"},
        )
        for box, stage in zip(boxes["boxes"], present, strict=True):
            box.set_facecolor(STAGE_COLORS[stage])
        ax.set_yticks(
            range(1, len(present) + 1),
            [f"{s} ({len(d)})" for s, d in zip(present, data, strict=True)],
            fontsize=7,
        )
        ax.invert_yaxis()
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step speed (µm/s)")
    ax.set_title("Step speed by delivery stage (n steps)", fontsize=9)
    fig.tight_layout()


def draw_track(
    fig: Figure,
    track: pd.DataFrame,
    segments: pd.DataFrame,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
) -> None:
    """One track: MSD of the track and of each segment, and step speeds over time.

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
    MSDs are time-averaged and gap-aware (:func:`spt.msd.msd_curve`), up to a quarter of the
    span; each segment's MSD is drawn in the colour of its motion state with its fitted
    ``4 D t^alpha`` dashed (Michalet 2010). A stop-and-go track shows why one power law over the
    whole track cannot describe it. The step-speed panel is shaded by the segments' stages.
    """
    fig.clear()
    ax_msd, ax_speed = fig.subplots(2, 1)
    track = track.sort_values("frame")
    if track.empty:
        fig.tight_layout()
        return
    particle = int(track["particle"].iloc[0])

    def msd_of(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        frames = points["frame"].to_numpy()
        max_lag = max(1, int((frames[-1] - frames[0]) * MSD_MAX_LAG_FRACTION))
        lags, msd, _ = msd_curve(frames, points["x"].to_numpy(), points["y"].to_numpy(), max_lag)
        return lags * frame_interval_s, msd * pixel_size_um**2

    t, msd = msd_of(track)
    shown = [msd[msd > 0]]
    ax_msd.loglog(t, msd, "o-", ms=3, lw=1, color="k", label="whole track")
    labelled: set[str] = set()
    for seg in segments.itertuples(index=False):
        points = track[track["frame"].between(seg.start_frame, seg.end_frame)]
        if len(points) < 3:
            continue
        ts, ms = msd_of(points)
        color = STATE_COLORS.get(seg.state, UNASSIGNED_COLOR)
        label = None if seg.state in labelled else seg.state
        labelled.add(seg.state)
        ax_msd.loglog(ts, ms, "o", ms=2.5, color=color, label=label)
        shown.append(ms[ms > 0])
        if np.isfinite(seg.D_um2_s) and seg.D_um2_s > 0 and len(ts):
            ax_msd.loglog(ts, 4 * seg.D_um2_s * ts**seg.alpha, "--", lw=1, color=color)
    values = np.concatenate(shown)
    if values.size:
        ax_msd.set_ylim(values.min() / 3, values.max() * 3)
    ax_msd.set_xlabel("lag (s)")
    ax_msd.set_ylabel("MSD (µm²)")
    ax_msd.set_title(f"particle {particle}: MSD (segments by state, fits dashed)", fontsize=9)
    ax_msd.legend(fontsize=6, frameon=False)

    t_track = track if "stage" in track else track.assign(stage="")
    steps = step_speeds(t_track, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s)
    stages_shown: set[str] = set()
    for seg in segments.itertuples(index=False):
        label = None if seg.stage in stages_shown else seg.stage
        stages_shown.add(seg.stage)
        ax_speed.axvspan(
            seg.start_frame * frame_interval_s,
            (seg.end_frame + 1) * frame_interval_s,
            color=STAGE_COLORS.get(seg.stage, UNASSIGNED_COLOR),
            alpha=0.3,
            lw=0,
            label=label,
        )
    ax_speed.plot(steps["frame"] * frame_interval_s, steps["speed_um_s"], "-", color="k", lw=1)
    ax_speed.set_xlabel("time (s)")
    ax_speed.set_ylabel("step speed (µm/s)")
    ax_speed.set_title("step speeds, shaded by delivery stage", fontsize=9)
    if stages_shown:
        ax_speed.legend(fontsize=6, frameon=False, loc="upper right")
    fig.tight_layout()
