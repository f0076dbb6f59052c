"""Spot detection and sub-pixel localisation: frames in, spots table out.

Candidates are local maxima of a band-passed frame above a threshold in units of the frame's
own robust noise; positions are background-subtracted centroids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from spt.schema import SPOT_COLUMNS, empty_table


@dataclass(frozen=True)
class DetectConfig:
    """Detection parameters.

    Attributes
    ----------
    psf_sigma_px : float
        Expected standard deviation of the point-spread function, pixels.
    threshold : float
        Candidate threshold in units of the robust noise (MAD) of the band-passed frame.
    box_radius_px : int
        Half-width of the box used to localise each spot, pixels.
    """

    psf_sigma_px: float = 1.25
    threshold: float = 5.0
    box_radius_px: int = 3


def locate(
    image: np.ndarray, config: DetectConfig = DetectConfig(), *, frame: int = 0
) -> pd.DataFrame:
    """Find and localise spots in one frame.

    Parameters
    ----------
    image : ndarray, shape (Y, X)
        One frame (any real dtype).
    config : DetectConfig
        Detection parameters.
    frame : int
        Frame index written to the ``frame`` column.

    Returns
    -------
    DataFrame
        Columns ``frame, x, y`` (px), ``signal`` (integrated counts above background),
        ``background`` (counts/px), ``sigma`` (px), ``x_err, y_err`` (px).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"locate expects one 2-D frame, got shape {img.shape}")
    r = int(config.box_radius_px)
    h, w = img.shape
    if h <= 2 * r or w <= 2 * r:
        return empty_table(SPOT_COLUMNS)
    s = config.psf_sigma_px
    band = ndimage.gaussian_filter(img, s) - ndimage.uniform_filter(
        img, int(2 * np.ceil(3 * s) + 1)
    )
    noise = 1.4826 * np.median(np.abs(band - np.median(band)))
    if noise <= 0:
        return empty_table(SPOT_COLUMNS)
    peaks = (band == ndimage.maximum_filter(band, size=2 * r + 1)) & (
        band > config.threshold * noise
    )
    peaks[:r], peaks[-r:], peaks[:, :r], peaks[:, -r:] = False, False, False, False
    rows, cols = np.nonzero(peaks)
    if rows.size == 0:
        return empty_table(SPOT_COLUMNS)
    off = np.arange(-r, r + 1)
    boxes = img[rows[:, None, None] + off[None, :, None], cols[:, None, None] + off[None, None, :]]
    edge = np.concatenate(
        [boxes[:, 0, :], boxes[:, -1, :], boxes[:, 1:-1, 0], boxes[:, 1:-1, -1]], 1
    )
    background = np.median(edge, axis=1)
    weights = np.clip(boxes - background[:, None, None], 0, None)
    total = weights.sum(axis=(1, 2))
    total = np.where(total > 0, total, np.nan)
    dy = (weights * off[None, :, None]).sum(axis=(1, 2)) / total
    dx = (weights * off[None, None, :]).sum(axis=(1, 2)) / total
    var = (
        weights
        * (
            (off[None, :, None] - dy[:, None, None]) ** 2
            + (off[None, None, :] - dx[:, None, None]) ** 2
        )
    ).sum(axis=(1, 2)) / (2 * total)
    sigma = np.sqrt(np.clip(var, 0.25, None))
    signal = (boxes - background[:, None, None]).sum(axis=(1, 2))
    err = sigma / np.sqrt(np.clip(signal, 1.0, None))
    spots = pd.DataFrame(
        {
            "frame": np.full(rows.size, frame, np.int64),
            "x": cols + dx,
            "y": rows + dy,
            "signal": signal,
            "background": background,
            "sigma": sigma,
            "x_err": err,
            "y_err": err,
        }
    )
    return spots[np.isfinite(spots[["x", "y"]]).all(axis=1) & (spots["signal"] > 0)].reset_index(
        drop=True
    )


def locate_movie(
    frames: Iterable[np.ndarray],
    config: DetectConfig = DetectConfig(),
    *,
    start_frame: int = 0,
    progress: Callable[[int, int | None], None] | None = None,
) -> pd.DataFrame:
    """Locate spots in every frame of ``frames`` (array (T, Y, X) or iterable of 2-D frames)."""
    total = len(frames) if hasattr(frames, "__len__") else None
    tables = []
    for i, image in enumerate(frames):
        tables.append(locate(image, config, frame=start_frame + i))
        if progress is not None:
            progress(i + 1, total)
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else empty_table(SPOT_COLUMNS)
