"""Mean squared displacement of tracks, gap-aware, and its fit with localisation error.

Lags are counted in frames (not rows), so blinking gaps do not bias the MSD.
"""

from __future__ import annotations

import numpy as np


def track_msd(
    frames: np.ndarray, x: np.ndarray, y: np.ndarray, max_lag: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time-averaged MSD of one track for lags 1..max_lag frames.

    Returns
    -------
    lags : ndarray of int
        Lags with at least one displacement, frames.
    msd : ndarray
        MSD at each lag, px^2.
    counts : ndarray of int
        Number of displacements averaged at each lag.
    """
    frames = np.asarray(frames, dtype=np.int64)
    n_span = int(frames[-1] - frames[0]) + 1 if frames.size else 0
    gx = np.full(n_span, np.nan)
    gy = np.full(n_span, np.nan)
    gx[frames - frames[0]] = x
    gy[frames - frames[0]] = y
    lags, msd, counts = [], [], []
    for lag in range(1, min(max_lag, n_span - 1) + 1):
        d2 = (gx[lag:] - gx[:-lag]) ** 2 + (gy[lag:] - gy[:-lag]) ** 2
        ok = np.isfinite(d2)
        if ok.any():
            lags.append(lag)
            msd.append(d2[ok].mean())
            counts.append(int(ok.sum()))
    return np.array(lags, np.int64), np.array(msd), np.array(counts, np.int64)


def fit_anomalous(
    lags_s: np.ndarray, msd_um2: np.ndarray, counts: np.ndarray | None = None
) -> tuple[float, float]:
    """Fit ``MSD = 4 D t^alpha + offset`` (2-D) by weighted least squares on log-MSD.

    The offset (4 sigma^2, localisation error) is estimated from the first two lags
    (Michalet 2010) and removed before the power-law fit.

    Returns
    -------
    D_um2_s : float
        Generalised diffusion coefficient, um^2/s^alpha.
    alpha : float
        Anomalous exponent, clipped to [0, 2].
    """
    t = np.asarray(lags_s, float)
    m = np.asarray(msd_um2, float)
    if t.size == 0:
        return 0.0, 0.0
    if t.size == 1:
        return float(max(m[0], 0.0) / (4 * t[0])), 1.0
    offset = max(2 * m[0] - m[1], 0.0)
    offset = min(offset, 0.9 * m[0])
    signal = np.clip(m - offset, 1e-12, None)
    w = np.sqrt(counts) if counts is not None else np.ones_like(t)
    alpha, intercept = np.polyfit(np.log(t), np.log(signal), 1, w=w)
    alpha = float(np.clip(alpha, 0.0, 2.0))
    D = float(np.exp(intercept) / 4) if np.isfinite(intercept) else 0.0
    return D, alpha
