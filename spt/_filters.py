"""Compiled image filter for detection: the band-pass signal-to-noise map in one pass per frame.

Same result as ``scipy.ndimage.gaussian_filter`` then ``uniform_filter`` (mode "reflect"), fused
so each frame is read once and no full-size temporaries are made.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _reflect(i: int, n: int) -> int:
    # scipy.ndimage "reflect": d c b a | a b c d | d c b a
    if i < 0:
        return -i - 1
    if i >= n:
        return 2 * n - i - 1
    return i


@njit(cache=True, nogil=True, fastmath=True)
def _bandpass_kernel(eff, kern, box, read_var, snr, scale):
    n_t, ny, nx = eff.shape
    r = kern.shape[0] // 2
    h = box // 2
    tmp = np.empty((ny, nx), np.float32)
    smooth = np.empty((ny, nx), np.float32)
    rows = np.empty((ny, nx), np.float64)
    col = np.empty(nx, np.float64)
    inv = 1.0 / (box * box)
    for t in range(n_t):
        for y in range(ny):  # Gaussian along x (no index reflection inside the frame)
            for x in range(nx):
                tmp[y, x] = 0.0
            for k in range(-r, r + 1):
                w = kern[k + r]
                lo = max(0, -k)
                hi = min(nx, nx - k)
                for x in range(lo, hi):
                    tmp[y, x] += w * eff[t, y, x + k]
                for x in range(0, lo):
                    tmp[y, x] += w * eff[t, y, _reflect(x + k, nx)]
                for x in range(hi, nx):
                    tmp[y, x] += w * eff[t, y, _reflect(x + k, nx)]
        for y in range(ny):  # Gaussian along y
            for x in range(nx):
                smooth[y, x] = 0.0
            for k in range(-r, r + 1):
                w = kern[k + r]
                yy = _reflect(y + k, ny)
                for x in range(nx):
                    smooth[y, x] += w * tmp[yy, x]
        for y in range(ny):  # running box sum along x
            acc = 0.0
            for k in range(-h, h + 1):
                acc += smooth[y, _reflect(k, nx)]
            rows[y, 0] = acc
            for x in range(1, nx):
                acc += smooth[y, _reflect(x + h, nx)] - smooth[y, _reflect(x - h - 1, nx)]
                rows[y, x] = acc
        for x in range(nx):  # running box sum along y, then the SNR
            col[x] = 0.0
        for k in range(-h, h + 1):
            yy = _reflect(k, ny)
            for x in range(nx):
                col[x] += rows[yy, x]
        for y in range(ny):
            if y > 0:
                add = _reflect(y + h, ny)
                sub = _reflect(y - h - 1, ny)
                for x in range(nx):
                    col[x] += rows[add, x] - rows[sub, x]
            for x in range(nx):
                bg = col[x] * inv
                s = math.sqrt(max(bg, 0.0) + read_var + 1e-6)
                scale[t, y, x] = s
                snr[t, y, x] = (smooth[y, x] - bg) / s


def bandpass_snr(
    eff: np.ndarray, sigma: float, box: int, read_var: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smoothed image minus its ``box`` x ``box`` local mean, over the shot-noise s.d.

    Parameters
    ----------
    eff : ndarray, shape (T, Y, X)
        Frames in effective photons.
    sigma : float
        s.d. of the Gaussian (px), truncated at 3 sigma like ``gaussian_filter(truncate=3)``.
    box : int
        Odd side of the local-mean window (px).
    read_var : float
        Read-noise variance added to the local mean under the square root.

    Returns
    -------
    snr, scale : ndarray of float32, shape (T, Y, X)
        ``(smooth - mean) / scale`` and ``scale = sqrt(max(mean, 0) + read_var)``.
    """
    radius = int(3.0 * sigma + 0.5)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    kern = np.exp(-0.5 * (k / sigma) ** 2)
    kern /= kern.sum()
    eff = np.ascontiguousarray(eff, dtype=np.float32)
    snr = np.empty(eff.shape, np.float32)
    scale = np.empty(eff.shape, np.float32)
    _bandpass_kernel(eff, kern, int(box), float(read_var), snr, scale)
    return snr, scale
