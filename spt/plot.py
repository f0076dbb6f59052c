"""Figures: tracks over the movie's maximum projection, coloured by delivery stage."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from spt.schema import STAGES

#: One colour per delivery stage (colour-blind safe, Okabe-Ito).
STAGE_COLORS: dict[str, str] = dict(
    zip(STAGES, ("#D55E00", "#E69F00", "#009E73", "#56B4E9", "#CC79A7", "#0072B2"), strict=True)
)


def plot_tracks_by_stage(
    projection: np.ndarray,
    tracks: pd.DataFrame,
    path: str | os.PathLike,
    *,
    pixel_size_um: float,
    masks: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Save a figure of ``tracks`` drawn over ``projection``, each step coloured by its stage.

    Parameters
    ----------
    projection : ndarray, shape (Y, X)
        Background image, e.g. the movie's maximum projection.
    tracks : DataFrame
        ``particle, frame, x, y`` (px) and ``stage``.
    path : path-like
        Output file; the format follows the suffix (``.png``, ``.svg``).
    pixel_size_um : float
        Pixel size, um (for the scale bar).
    masks : ndarray, optional
        Label image (Y, X) whose vessel, cell and nucleus outlines are drawn.
    title : str
        Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    h, w = projection.shape
    fig, ax = plt.subplots(figsize=(7, 7 * h / w + 0.6), dpi=120)
    lo, hi = np.percentile(projection, [1, 99.8])
    ax.imshow(projection, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    if masks is not None:
        outline = masks if masks.ndim == 2 else masks[0]
        for label, colour in ((1, "#ff6666"), (2, "#66ccff"), (3, "#ccccff")):
            if (outline == label).any():
                ax.contour(
                    outline >= label if label > 1 else outline == label,
                    levels=[0.5],
                    colors=colour,
                    linewidths=0.6,
                    linestyles="dotted",
                )
    t = tracks.sort_values(["particle", "frame"])
    same = t["particle"].to_numpy()[1:] == t["particle"].to_numpy()[:-1]
    xy = t[["x", "y"]].to_numpy()
    starts, ends = xy[:-1][same], xy[1:][same]
    stages = t["stage"].to_numpy()[1:][same]
    for stage in STAGES:
        sel = stages == stage
        if sel.any():
            ax.add_collection(
                LineCollection(
                    np.stack([starts[sel], ends[sel]], 1),
                    colors=STAGE_COLORS[stage],
                    linewidths=1.2,
                    label=stage,
                )
            )
    bar_um = max(1, round(w * pixel_size_um / 5))
    ax.plot([w * 0.05, w * 0.05 + bar_um / pixel_size_um], [h * 0.95] * 2, color="white", lw=3)
    ax.text(w * 0.05, h * 0.93, f"{bar_um} um", color="white")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    if len(stages):
        ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
