"""Compiled image filters for detection: the band-pass signal-to-noise map, its temporal
support and local maxima, each in one pass over the frames without full-size temporaries.

The band-pass gives the same result as ``scipy.ndimage.gaussian_filter`` then
``uniform_filter`` (mode "reflect").
"""

from __future__ import annotations

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
    # Inner loops run over whole rows (slices indexed from 0), so that LLVM vectorises them:
    # an index such as x - k would need numba's negative-index check, which blocks that.
    n_t, ny, nx = eff.shape
    r = kern.shape[0] // 2
    h = box // 2
    line = np.empty(nx + 2 * r, np.float32)
    tmp = np.empty((ny, nx), np.float32)
    smooth = np.empty((ny, nx), np.float32)
    rows = np.empty((ny, nx), np.float32)
    col = np.empty(nx, np.float64)
    w = kern.astype(np.float32)
    inv = 1.0 / (box * box)
    floor = np.float32(read_var + 1e-6)
    for t in range(n_t):
        for y in range(ny):  # Gaussian along x, on a mirrored copy of the row
            src = eff[t, y]
            for x in range(nx):
                line[r + x] = src[x]
            for x in range(r):
                line[r - 1 - x] = src[x]
                line[r + nx + x] = src[nx - 1 - x]
            out = tmp[y]
            mid = line[r : r + nx]
            for x in range(nx):
                out[x] = w[r] * mid[x]
            for k in range(1, r + 1):
                wk = w[r + k]
                lo = line[r - k : r - k + nx]
                hi = line[r + k : r + k + nx]
                for x in range(nx):
                    out[x] += wk * (lo[x] + hi[x])
        for y in range(ny):  # Gaussian along y
            out = smooth[y]
            mid = tmp[y]
            for x in range(nx):
                out[x] = w[r] * mid[x]
            for k in range(1, r + 1):
                wk = w[r + k]
                lo = tmp[_reflect(y - k, ny)]
                hi = tmp[_reflect(y + k, ny)]
                for x in range(nx):
                    out[x] += wk * (lo[x] + hi[x])
        for y in range(ny):  # running box sum along x (reflected indices only at the ends)
            acc = 0.0
            for k in range(-h, h + 1):
                acc += smooth[y, _reflect(k, nx)]
            rows[y, 0] = acc
            for x in range(1, h + 1):
                acc += smooth[y, x + h] - smooth[y, _reflect(x - h - 1, nx)]
                rows[y, x] = acc
            for x in range(h + 1, nx - h):
                acc += smooth[y, x + h] - smooth[y, x - h - 1]
                rows[y, x] = acc
            for x in range(max(nx - h, h + 1), nx):
                acc += smooth[y, _reflect(x + h, nx)] - smooth[y, x - h - 1]
                rows[y, x] = acc
        for x in range(nx):  # running box sum along y, then the SNR
            col[x] = 0.0
        for k in range(-h, h + 1):
            src = rows[_reflect(k, ny)]
            for x in range(nx):
                col[x] += src[x]
        for y in range(ny):
            if y > 0:
                add = rows[_reflect(y + h, ny)]
                sub = rows[_reflect(y - h - 1, ny)]
                for x in range(nx):
                    col[x] += add[x] - sub[x]
            sm = smooth[y]
            sc = scale[t, y]
            out = snr[t, y]
            for x in range(nx):
                # the sums are exact in float64; the rest in float32 (8 pixels per instruction)
                bg = np.float32(col[x] * inv)
                s = np.sqrt(max(bg, np.float32(0.0)) + floor)
                sc[x] = s
                out[x] = (sm[x] - bg) / s


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
    eff = np.ascontiguousarray(eff, dtype=np.float32)
    # Frames smaller than the filters (a few-pixel crop) are mirrored out to the filter size.
    need = max(2 * radius + 1, int(box))
    pad_y, pad_x = max(0, need - eff.shape[1]), max(0, need - eff.shape[2])
    if pad_y or pad_x:
        h, w = eff.shape[1:]
        padded = np.pad(eff, ((0, 0), (pad_y, pad_y), (pad_x, pad_x)), mode="symmetric")
        snr, scale = bandpass_snr(padded, sigma, box, read_var)
        return (
            np.ascontiguousarray(snr[:, pad_y : pad_y + h, pad_x : pad_x + w]),
            np.ascontiguousarray(scale[:, pad_y : pad_y + h, pad_x : pad_x + w]),
        )
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    kern = np.exp(-0.5 * (k / sigma) ** 2)
    kern /= kern.sum()
    snr = np.empty(eff.shape, np.float32)
    scale = np.empty(eff.shape, np.float32)
    _bandpass_kernel(eff, kern, int(box), float(read_var), snr, scale)
    return snr, scale


@njit(cache=True, nogil=True, fastmath=True)
def _support_kernel(snr, lo, hi, weak, out):
    n_t, ny, nx = snr.shape
    for t in range(n_t):
        first, last = max(0, t + lo), min(n_t - 1, t + hi)
        norm = np.float32(1.0) / np.sqrt(np.float32(last - first + 1))
        for y in range(ny):
            own = snr[t, y]
            acc = out[t, y]
            for x in range(nx):
                acc[x] = own[x]
            for f in range(first, last + 1):
                if f != t:
                    other = snr[f, y]
                    for x in range(nx):
                        acc[x] += other[x]
            for x in range(nx):
                v = acc[x] * norm - np.float32(1.0)
                s = own[x]
                acc[x] = s if s < weak or s > v else v


def temporal_support(snr: np.ndarray, frames: int, weak: float) -> np.ndarray:
    """Signal-to-noise map with temporal support, for candidates of spots that stay put.

    The sum of the (unit-noise) maps of ``frames`` consecutive frames centred on each frame
    (fewer at the ends of the stack), divided by the square root of their number, has unit noise
    again but ``sqrt(frames)`` times the SNR of a spot that stays in place. One noise unit is
    subtracted (the sum has more independent looks at the noise), and the frame's own value is
    kept where it is larger or below ``weak`` (the frame itself must show something: not the
    trail of a moving spot).

    Parameters
    ----------
    snr : ndarray of float32, shape (T, Y, X)
        Unit-noise signal-to-noise maps of consecutive frames.
    frames : int
        Frames summed (>= 1).
    weak : float
        Below this single-frame SNR a pixel keeps its own value.

    Returns
    -------
    ndarray of float32, shape (T, Y, X)
    """
    snr = np.ascontiguousarray(snr, np.float32)
    k = max(1, min(int(frames), snr.shape[0]))
    out = np.empty_like(snr)
    _support_kernel(snr, -((k - 1) // 2), k // 2, np.float32(weak), out)
    return out


@njit(cache=True, nogil=True)
def _maxima_kernel(img, radius, threshold, out):
    n_t, ny, nx = img.shape
    n = 0
    for t in range(n_t):
        for y in range(ny):
            for x in range(nx):
                v = img[t, y, x]
                if not v > threshold:
                    continue
                is_max = True
                for dy in range(-radius, radius + 1):
                    yy = y + dy
                    if yy < 0 or yy >= ny:
                        continue
                    for dx in range(-radius, radius + 1):
                        xx = x + dx
                        if xx < 0 or xx >= nx or (dy == 0 and dx == 0):
                            continue
                        u = img[t, yy, xx]
                        # ties: the first pixel in raster order wins
                        if u > v or (u == v and (dy < 0 or (dy == 0 and dx < 0))):
                            is_max = False
                            break
                    if not is_max:
                        break
                if is_max:
                    if n < out.shape[0]:
                        out[n, 0] = t
                        out[n, 1] = y
                        out[n, 2] = x
                    n += 1
    return n


def local_maxima(
    image: np.ndarray, radius: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima above ``threshold`` in a ``(2 radius + 1)^2`` window of each frame.

    Parameters
    ----------
    image : ndarray, shape (T, Y, X)
        Frames (e.g. a signal-to-noise map).
    radius : int
        Half-width of the neighbourhood (px); neighbours outside the frame are ignored.
    threshold : float
        A maximum must exceed this value.

    Returns
    -------
    t, y, x : ndarray of int64
        Frame, row and column of each maximum, in raster order.
    """
    img = np.ascontiguousarray(image)
    out = np.empty((max(1024, img.size // 64), 3), np.int64)
    n = _maxima_kernel(img, int(radius), float(threshold), out)
    if n > len(out):  # more maxima than the buffer: run again with room for all
        out = np.empty((n, 3), np.int64)
        _maxima_kernel(img, int(radius), float(threshold), out)
    return out[:n, 0].copy(), out[:n, 1].copy(), out[:n, 2].copy()
