"""Figures of the per-stage results: tracks by stage, speeds, MSD per state, stage transitions.

Each ``figure_*`` function returns a matplotlib Figure (built without pyplot, so no global
backend is touched); :func:`save_figure` writes it as PNG and SVG. Matplotlib is imported when
a figure is drawn, so the colours can be used without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from spt.schema import MASK_LABELS, STAGES, STATES
from spt.summary import by_track

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "STAGE_COLORS",
    "STATE_COLORS",
    "figure_msd_by_state",
    "figure_speed_distributions",
    "figure_stage_transitions",
    "figure_tracks_by_stage",
    "plot_tracks_by_stage",
    "save_figure",
]

#: One colour per delivery stage (colour-blind safe, Okabe-Ito).
STAGE_COLORS: dict[str, str] = dict(
    zip(STAGES, ("#D55E00", "#E69F00", "#009E73", "#56B4E9", "#CC79A7", "#0072B2"), strict=True)
)
#: One colour per motion state.
STATE_COLORS: dict[str, str] = dict(
    zip(STATES, ("#777777", "#0072B2", "#009E73", "#D55E00"), strict=True)
)
_MASK_OUTLINES = (
    (MASK_LABELS["vessel"], "#ff6666"),
    (MASK_LABELS["cell"], "#66ccff"),
    (MASK_LABELS["nucleus"], "#ccccff"),
)


def save_figure(
    fig: Figure, stem: str | os.PathLike, formats=("png", "svg"), *, dpi: int = 120
) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg`` (or the given formats).

    Dense artists (track lines) are marked rasterised by the ``figure_*`` functions, so the SVG
    embeds them as an image at ``dpi`` and stays small and quick to write and to open.
    """
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def _plain_log_ticks(axis) -> None:
    """Label a log axis ``0.1, 1, 10`` in plain text, without minor ticks.

    Mathtext labels (``10^-1``) cost ~25 ms each to lay out and the minor ticks of a log axis
    are dozens of artists per axis; the decades alone read as well.
    """
    from matplotlib.ticker import FuncFormatter, NullLocator

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def _track_polylines(tracks: pd.DataFrame) -> tuple[list[np.ndarray], np.ndarray]:
    """One polyline per run of consecutive steps of a track in one stage, and its stage.

    A step takes the stage of its end point, as in the tables; each polyline starts at the point
    before its first step, so consecutive runs of a track join up.
    """
    t = by_track(tracks, ["x", "y", "stage"])
    particle = t["particle"].to_numpy()
    xy = t[["x", "y"]].to_numpy(float)
    stage = t["stage"].to_numpy(object)
    step = np.flatnonzero(particle[1:] == particle[:-1])  # step i joins points i and i + 1
    if step.size == 0:
        return [], np.zeros(0, object)
    step_stage = stage[step + 1]
    new = np.r_[True, (np.diff(step) != 1) | (step_stage[1:] != step_stage[:-1])]
    first = step[new]
    last = np.r_[step[np.flatnonzero(new)[1:] - 1], step[-1]]
    lines = [xy[a : b + 2] for a, b in zip(first, last, strict=True)]
    return lines, step_stage[new]


def _subsample_tracks(tracks: pd.DataFrame, max_points: int) -> tuple[pd.DataFrame, int]:
    """Whole tracks drawn at random (seeded) up to about ``max_points`` points, for plotting."""
    sizes = tracks.groupby("particle", sort=True).size()
    if sizes.sum() <= max_points:
        return tracks, len(sizes)
    order = np.random.default_rng(0).permutation(len(sizes))
    keep = order[: max(1, int(np.searchsorted(np.cumsum(sizes.to_numpy()[order]), max_points)))]
    chosen = sizes.index.to_numpy()[np.sort(keep)]
    return tracks[tracks["particle"].isin(chosen)], len(sizes)


def figure_tracks_by_stage(
    projection: np.ndarray,
    tracks: pd.DataFrame,
    *,
    pixel_size_um: float,
    masks: np.ndarray | None = None,
    title: str = "",
    max_points: int = 300_000,
) -> Figure:
    """Tracks drawn over ``projection``, each step coloured by its stage.

    Parameters
    ----------
    projection : ndarray, shape (Y, X)
        Background image, e.g. the movie's maximum projection.
    tracks : DataFrame
        ``particle, frame, x, y`` (px) and ``stage``.
    pixel_size_um : float
        Pixel size, um (for the scale bar).
    masks : ndarray, optional
        Label image (Y, X) or (T, Y, X) whose vessel, cell and nucleus outlines are drawn (the
        first plane of per-frame masks).
    title : str
        Figure title.
    max_points : int
        With more track points than this, whole tracks drawn at random (seeded) up to about
        this many points are shown, and the title says how many.
    """
    h, w = projection.shape
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 7 * h / w + 0.6))
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.01 - 0.5 / (7 * h / w + 0.6)))
    lo, hi = np.percentile(projection, [1, 99.8]) if projection.size else (0, 1)
    ax.imshow(projection, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    if masks is not None:
        outline = masks if masks.ndim == 2 else masks[0]
        for label, colour in _MASK_OUTLINES:
            region = outline >= label if label > MASK_LABELS["vessel"] else outline == label
            if region.any() and not region.all():
                ax.contour(region, levels=[0.5], colors=colour, linewidths=0.6, linestyles=":")
    if len(tracks):
        shown, n_tracks = _subsample_tracks(tracks, max_points)
        if len(shown) < len(tracks):
            title = f"{title} ({shown['particle'].nunique()} of {n_tracks} tracks shown)"
        lines, line_stage = _track_polylines(shown)
        for stage in STAGES:
            sel = np.flatnonzero(line_stage == stage)
            if sel.size:
                collection = LineCollection(
                    [lines[i] for i in sel], colors=STAGE_COLORS[stage], linewidths=1.2, label=stage
                )
                collection.set_rasterized(True)
                ax.add_collection(collection)
        if ax.collections:
            ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    bar_um = max(1, round(w * pixel_size_um / 5))
    ax.plot([w * 0.05, w * 0.05 + bar_um / pixel_size_um], [h * 0.95] * 2, color="white", lw=3)
    ax.text(w * 0.05, h * 0.93, f"{bar_um} um", color="white")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def plot_tracks_by_stage(
    projection: np.ndarray,
    tracks: pd.DataFrame,
    path: str | os.PathLike,
    *,
    pixel_size_um: float,
    masks: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Save :func:`figure_tracks_by_stage` to ``path`` (format from the suffix)."""
    fig = figure_tracks_by_stage(
        projection, tracks, pixel_size_um=pixel_size_um, masks=masks, title=title
    )
    fig.savefig(path, dpi=120)


def figure_speed_distributions(steps: pd.DataFrame, velocities: pd.DataFrame) -> Figure:
    """Histogram of frame-to-frame speeds per stage, with the median and the noise floor.

    Parameters
    ----------
    steps : DataFrame
        ``stage, speed_um_s`` (:func:`spt.summary.step_speeds`).
    velocities : DataFrame
        The stage velocity table (``stage, median_speed_um_s, noise_floor_um_s,
        median_run_speed_um_s``).
    """
    height = 1.3 * len(STAGES) + 0.8
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, height))
    # fixed margins: tight_layout would measure every tick label of six axes on each save
    fig.subplots_adjust(left=0.17, right=0.97, top=1 - 0.45 / height, bottom=0.5 / height)
    axes = fig.subplots(len(STAGES), 1, sharex=True)
    speeds = steps["speed_um_s"].to_numpy(float)
    positive = speeds[speeds > 0]
    lo = np.log10(positive.min()) if positive.size else -2
    hi = np.log10(positive.max()) if positive.size else 2
    bins = np.logspace(np.floor(lo), np.ceil(hi) if hi > lo else lo + 1, 60)
    table = velocities.set_index("stage")
    for ax, stage in zip(axes, STAGES, strict=True):
        s = steps.loc[steps["stage"] == stage, "speed_um_s"].to_numpy(float)
        s = s[s > 0]
        colour = STAGE_COLORS[stage]
        if s.size:
            ax.stairs(np.histogram(s, bins=bins)[0], bins, fill=True, color=colour, alpha=0.8)
        else:
            ax.text(0.5, 0.5, "no steps", transform=ax.transAxes, ha="center", va="center")
        row = table.loc[stage] if stage in table.index else None
        if row is not None and np.isfinite(row["median_speed_um_s"]):
            ax.axvline(row["median_speed_um_s"], color="black", lw=1.2, label="median")
        if row is not None and np.isfinite(row["noise_floor_um_s"]):
            ax.axvline(row["noise_floor_um_s"], color="grey", ls="--", lw=1, label="noise floor")
        if row is not None and np.isfinite(row["median_run_speed_um_s"]):
            ax.axvline(row["median_run_speed_um_s"], color=colour, ls=":", lw=1.5, label="run")
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_ylabel(stage.replace("_", "\n"), rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
    if axes[0].get_legend_handles_labels()[0]:  # nothing to label for a movie without tracks
        axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("frame-to-frame speed (um/s)")
    fig.suptitle(
        "Speeds per stage: median (black), localisation-noise floor (dashed), "
        "net run speed (dotted)",
        fontsize=9,
    )
    return fig


def figure_msd_by_state(
    tracks: pd.DataFrame,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    max_lag: int = 30,
    min_segments: int = 5,
    localization_error_um: float | None = None,
) -> Figure:
    """Ensemble MSD of each motion state against lag time (log-log).

    The time-averaged MSD of every segment (gap-aware, as :func:`spt.msd.msd_curve`) is pooled
    per state, weighted by the number of displacements at each lag. Free diffusion has slope 1,
    directed motion tends to 2, confined motion flattens; the offset at short lags is the
    localisation noise ``4 sigma^2`` (Michalet, PRE 82, 041914, 2010).

    Parameters
    ----------
    tracks : DataFrame
        ``particle, segment, frame, x, y`` (px), ``state``.
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.
    max_lag : int
        Longest lag, frames.
    min_segments : int
        A lag is drawn only when at least this many segments of the state reach it.
    localization_error_um : float, optional
        Draws the noise level ``4 sigma^2`` when given.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    fig.subplots_adjust(left=0.14, right=0.97, top=0.92, bottom=0.12)
    ax = fig.add_subplot()
    sums, counts, n_segments = _pooled_msd(tracks, max_lag)
    for k, state in enumerate(STATES):
        ok = n_segments[k] >= min_segments
        if ok.any():
            lag_s = np.flatnonzero(ok) * frame_interval_s
            msd_um2 = sums[k][ok] / counts[k][ok] * pixel_size_um**2
            ax.loglog(lag_s, msd_um2, "o-", ms=3, color=STATE_COLORS[state], label=state)
    if localization_error_um is not None and np.isfinite(localization_error_um):
        ax.axhline(4 * localization_error_um**2, color="grey", ls="--", lw=1, label="4 sigma^2")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.set_xlabel("lag time (s)")
    ax.set_ylabel("MSD (um^2)")
    ax.set_title("Mean squared displacement per motion state", fontsize=10)
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    return fig


def _pooled_msd(tracks: pd.DataFrame, max_lag: int) -> tuple[np.ndarray, ...]:
    """Squared-displacement sums, pair counts and segment counts per (state, lag in frames).

    Gap-aware like :func:`spt.msd.msd_curve`: the lag of a pair is the difference of its frame
    numbers. Segments of fewer than 3 points or without a known state are left out. Each
    returned array has shape ``(len(STATES), max_lag + 1)``.
    """
    shape = (len(STATES), max_lag + 1)
    sums, counts, n_segments = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    if tracks.empty:
        return sums, counts, n_segments
    keys = ["particle", "segment"] if "segment" in tracks else ["particle"]
    t = tracks.sort_values([*keys, "frame"], kind="stable")
    code = t.groupby(keys, sort=False).ngroup().to_numpy()
    frame = t["frame"].to_numpy(np.int64)
    xy = t[["x", "y"]].to_numpy(float)
    first = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    state_of = pd.Index(STATES).get_indexer(t["state"].to_numpy(object)[first])
    size = np.diff(np.r_[first, len(t)])
    usable = (state_of >= 0) & (size >= 3)
    reached = np.zeros((len(first), max_lag + 1), bool)
    # Consecutive frames differ by >= 1, so a pair at most max_lag frames apart is at most
    # max_lag rows apart: one vectorised pass per row offset finds every pair.
    for offset in range(1, min(max_lag, len(t) - 1) + 1):
        a, b = code[:-offset], code[offset:]
        lag = frame[offset:] - frame[:-offset]
        ok = (a == b) & (lag <= max_lag) & usable[a]
        if not ok.any():
            continue
        seg, lag = a[ok], lag[ok]
        d = xy[offset:][ok] - xy[:-offset][ok]
        flat = state_of[seg] * (max_lag + 1) + lag
        sums += np.bincount(flat, weights=np.sum(d * d, axis=1), minlength=sums.size).reshape(shape)
        counts += np.bincount(flat, minlength=counts.size).reshape(shape)
        reached[seg, lag] = True
    for k in range(len(STATES)):
        n_segments[k] = reached[state_of == k].sum(axis=0)
    return sums, counts, n_segments


def figure_stage_transitions(transitions: pd.DataFrame) -> Figure:
    """Matrix of stage-to-stage transition counts (rows: from, columns: to).

    Moves along the delivery order sit above the diagonal; any count below it is a move back.
    """
    matrix = (
        transitions.pivot(index="from_stage", columns="to_stage", values="n_transitions")
        .reindex(index=list(STAGES), columns=list(STAGES))
        .fillna(0)
        .to_numpy()
    )
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5))
    fig.subplots_adjust(left=0.2, right=0.98, top=0.93, bottom=0.2)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(matrix.max(), 1))
    for i in range(len(STAGES)):
        for j in range(len(STAGES)):
            if i != j:
                dark = matrix[i, j] > 0.6 * max(matrix.max(), 1)
                ax.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    labels = [s.replace("_", "\n") for s in STAGES]
    ax.set_xticks(range(len(STAGES)), labels, fontsize=7, rotation=35, ha="right")
    ax.set_yticks(range(len(STAGES)), labels, fontsize=7)
    ax.set_xlabel("to stage")
    ax.set_ylabel("from stage")
    ax.set_title("Stage transitions within tracks (counts)", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig
