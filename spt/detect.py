"""Spot detection: band-pass candidates with a robust noise threshold, then sub-pixel MLE fits.

Owns :class:`DetectConfig`, :func:`locate` (one frame) and :func:`locate_movie` (a stack),
returning the spots table of :data:`spt.schema.SPOT_COLUMNS`; crowded spots are found again in
the residual, split by model selection and fitted jointly.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from spt._filters import bandpass_snr, local_maxima, temporal_support
from spt.camera import EXCESS_NOISE, Camera, camera_from_parameters, estimate_camera
from spt.errors import SptInputError
from spt.localize import (
    Fit,
    cut_windows,
    fit_groups,
    fit_spots,
    pixel_integrals,
    spot_models,
    subtract_windows,
    window_light,
)
from spt.schema import SPOT_COLUMNS, empty_table

__all__ = [
    "DetectConfig",
    "locate",
    "locate_movie",
    "locate_chunks",
    "estimate_psf_sigma",
    "spots_with_neighbours",
]

_METHODS = ("mle", "centroid")


@dataclass(frozen=True)
class DetectConfig:
    """Parameters of spot detection and localisation.

    Attributes
    ----------
    method : {"mle", "centroid"}
        ``"mle"``: Poisson maximum-likelihood fit of a pixel-integrated Gaussian (Smith et al.
        2010), the accurate default. ``"centroid"``: background-subtracted centre of mass in the
        fitting box, several times faster, for previews.
    psf_sigma_px : float or None
        PSF standard deviation in px. None: estimated from the movie's brightest spots
        (see :func:`estimate_psf_sigma`).
    fit_sigma : bool
        Fit sigma per spot (5-parameter fit) instead of holding it at ``psf_sigma_px``. Holding it
        fixed gives better precision on in-focus spots.
    threshold : float
        Candidate threshold: peak of the band-passed, locally noise-normalised image in units of
        its robust (MAD) noise s.d. The same value works across SNRs, bit depths and cameras.
    min_snr : float
        Keep a fitted spot only if ``signal / signal_err`` (Fisher information) is at least this.
    residual_threshold : float or None
        Threshold (robust noise units) for a second candidate search in the residual image after
        subtracting the fitted spots, which finds spots hidden beside brighter ones; such a spot
        is kept only if at least half as bright as the chunk's typical spot (so the model
        mismatch of a bright or blurred spot is not taken for a neighbour). None: no second
        search. Independently, bright lone spots that one emitter fits badly are tested for two
        unresolved emitters, and spots closer than ``4 sigma + 1`` px are fitted simultaneously
        (both skipped when ``fit_sigma``).
    support_frames : int
        Frames averaged for temporal support: a candidate is also taken where the SNR map
        summed over this many consecutive frames (divided by the square root of their number)
        exceeds ``threshold + 1``, which finds dim spots that stay in place (x sqrt(frames) SNR).
        1 disables.
    min_snr_supported : float
        ``min_snr`` for candidates with temporal support (their detection does not rest on one
        frame's noise).
    box_radius_px : int or None
        Half-width of the square fitting window in px (window side ``2 r + 1``). None:
        ``ceil(3 sigma)``.
    camera : {"emccd", "scmos", "ccd"}
        Camera type: sets the excess-noise factor (2 for EM-CCD, 1 otherwise).
    em_gain : float or None
        EM gain (1 for sCMOS/CCD). None, or ``e_per_adu``/``offset_adu`` None: the camera is
        estimated from the movie's noise statistics (:func:`spt.camera.estimate_camera`) and
        ``signal``/``background`` are then reported in ADU instead of photons.
    e_per_adu : float or None
        Electrons per ADU (conversion factor of the digitiser).
    offset_adu : float or None
        Bias (dark) level in ADU.
    read_noise_e : float
        Read noise s.d. in electrons (used only with a calibrated camera).
    n_iter : int
        Newton (Fisher-scoring) iterations of the MLE fit.
    chunk_frames : int
        Frames processed together in :func:`locate_movie` (memory ~ 30 bytes x chunk x Y x X).
    n_threads : int
        Threads used by :func:`locate_movie`; 0 means one per available core.

    Notes
    -----
    Output units: ``x, y, sigma, x_err, y_err`` in px; ``signal`` is the integrated spot intensity
    and ``background`` the background per pixel, in photons when the camera is given (em_gain,
    e_per_adu, offset_adu all set), otherwise ``signal`` in ADU above background and
    ``background`` in raw ADU per pixel (offset included).
    """

    method: str = "mle"
    psf_sigma_px: float | None = None
    fit_sigma: bool = False
    threshold: float = 4.0
    min_snr: float = 4.0
    residual_threshold: float | None = 5.5
    support_frames: int = 3
    min_snr_supported: float = 2.5
    box_radius_px: int | None = None
    camera: str = "emccd"
    em_gain: float | None = None
    e_per_adu: float | None = None
    offset_adu: float | None = None
    read_noise_e: float = 0.0
    n_iter: int = 10
    chunk_frames: int = 32
    n_threads: int = 0

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        if self.camera not in EXCESS_NOISE:
            raise ValueError(f"camera must be one of {tuple(EXCESS_NOISE)}, got {self.camera!r}")
        if self.psf_sigma_px is not None and not 0.3 <= self.psf_sigma_px <= 20:
            raise ValueError(f"psf_sigma_px must be in [0.3, 20] px, got {self.psf_sigma_px}")
        if self.threshold <= 0 or self.min_snr < 0:
            raise ValueError("threshold must be > 0 and min_snr >= 0")
        if self.box_radius_px is not None and self.box_radius_px < 1:
            raise ValueError(f"box_radius_px must be >= 1, got {self.box_radius_px}")
        for name in ("em_gain", "e_per_adu"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.n_iter < 1 or self.chunk_frames < 1 or self.n_threads < 0:
            raise ValueError("n_iter and chunk_frames must be >= 1, n_threads >= 0")

    def calibrated_camera(self) -> Camera | None:
        """The camera given in the config, or None when it must be estimated."""
        if self.em_gain is None or self.e_per_adu is None or self.offset_adu is None:
            return None
        return camera_from_parameters(
            self.em_gain, self.e_per_adu, self.offset_adu, self.read_noise_e, self.camera
        )


def _check_frames(frames: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 3:
        raise SptInputError(
            source, f"expected a 2-D frame or a (T, Y, X) stack, got shape {arr.shape}"
        )
    if arr.dtype.kind not in "uif":
        raise SptInputError(source, f"pixel values must be numeric, got dtype {arr.dtype}")
    if min(arr.shape[1:]) < 3:
        raise SptInputError(source, f"frames of {arr.shape[1:]} px are too small to detect spots")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise SptInputError(source, "frames contain NaN or infinite pixel values")
    return arr


def _snr_map(eff: np.ndarray, sigma: float, read_var: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise-normalised band-pass image of a (T, Y, X) chunk.

    The band-pass is a Gaussian of the PSF width (the matched filter for a spot) minus a local
    mean over ~``8 sigma``; dividing by the square root of the local background (shot-noise
    s.d.) and then by the robust s.d. (1.4826 MAD, per frame) of the result gives a
    signal-to-noise map whose noise is ~1 everywhere, whatever the local background.

    Returns
    -------
    snr : ndarray, shape (T, Y, X)
        The signal-to-noise map.
    scale : ndarray, shape (T, Y, X)
        What the smoothed image was divided by (to put other smoothed images on the same scale).
    """
    snr, scale = bandpass_snr(eff, sigma, 2 * int(np.ceil(4 * sigma)) + 1, read_var)
    sample = snr[:, ::4, ::4]
    med = np.median(sample, axis=(1, 2), keepdims=True)
    mad = np.median(np.abs(sample - med), axis=(1, 2), keepdims=True) * np.float32(1.4826)
    mad = np.maximum(mad, np.float32(1e-12))
    snr -= med
    snr /= mad
    scale *= mad
    return snr, scale


def _peaks(snr: np.ndarray, radius: int, threshold: float):
    """Local maxima above ``threshold`` within a (2 radius + 1)^2 window: frame, row, column."""
    return local_maxima(snr, radius, threshold)


def _candidates(eff: np.ndarray, sigma: float, radius: int, read_var: float, threshold: float):
    """Candidate spots (frame in chunk, row, column) of a chunk; see :func:`_snr_map`."""
    snr, _ = _snr_map(eff, sigma, read_var)
    return _peaks(snr, radius, threshold)


def _boxes(eff: np.ndarray, t: np.ndarray, y: np.ndarray, x: np.ndarray, half: int):
    """Square windows of side ``2 half + 1`` around (y, x), shifted inward at the image border."""
    _, ny, nx = eff.shape
    side = 2 * half + 1
    oy = np.clip(y - half, 0, ny - side)
    ox = np.clip(x - half, 0, nx - side)
    return cut_windows(eff, t, ox, oy, side), ox, oy


def _refine_start(boxes: np.ndarray, ox: np.ndarray, oy: np.ndarray, x: np.ndarray, y: np.ndarray):
    """3x3 centre of mass around the candidate pixel: a starting point within ~0.3 px."""
    cy = y - oy
    cx = x - ox
    idx = np.arange(len(x))
    acc = np.zeros(len(x))
    sx = np.zeros(len(x))
    sy = np.zeros(len(x))
    low = boxes.reshape(len(x), -1).min(axis=1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy = np.clip(cy + dy, 0, boxes.shape[1] - 1)
            xx = np.clip(cx + dx, 0, boxes.shape[2] - 1)
            w = np.maximum(boxes[idx, yy, xx] - low, 0.0)
            acc += w
            sx += w * (ox + xx)
            sy += w * (oy + yy)
    good = acc > 0
    return np.where(good, sx / np.where(good, acc, 1), x), np.where(
        good, sy / np.where(good, acc, 1), y
    )


def _centroid(boxes, ox, oy, sigma):
    """Background-subtracted centre of mass; errors from the shot-noise formula."""
    m, side, _ = boxes.shape
    edge = np.concatenate(
        [boxes[:, 0, :], boxes[:, -1, :], boxes[:, 1:-1, 0], boxes[:, 1:-1, -1]], axis=1
    )
    b = np.median(edge, axis=1)
    w = np.maximum(boxes - b[:, None, None], 0.0)
    tot = w.sum(axis=(1, 2))
    ar = np.arange(side)
    good = tot > 0
    safe = np.where(good, tot, 1.0)
    x = ox + (w.sum(axis=1) * ar).sum(axis=1) / safe
    y = oy + (w.sum(axis=2) * ar).sum(axis=1) / safe
    n = (boxes - b[:, None, None]).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.sqrt(
            (sigma**2 + 1 / 12)
            / np.maximum(n, 1e-9)
            * (1 + 4 * np.pi * sigma**2 * b / np.maximum(n, 1e-9))
        )
        n_err = np.sqrt(np.maximum(n, 0) + side * side * np.maximum(b, 0))
    return x, y, n, b, err, n_err, good & (n > 0)


def _dedupe(
    frame: np.ndarray, x: np.ndarray, y: np.ndarray, score: np.ndarray, min_dist: float
) -> np.ndarray:
    """Indices to keep so that no two spots of a frame are closer than ``min_dist`` (keep best)."""
    if len(x) < 2:
        return np.arange(len(x))
    # separate frames far apart in a third coordinate so one tree serves the whole chunk
    pts = np.column_stack([x, y, frame.astype(float) * (10 * min_dist + 1e3)])
    pairs = cKDTree(pts).query_pairs(min_dist, output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(len(x))
    drop = np.where(score[pairs[:, 0]] < score[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    keep = np.ones(len(x), bool)
    keep[drop] = False
    return np.flatnonzero(keep)


def spots_with_neighbours(t: np.ndarray, x: np.ndarray, y: np.ndarray, reach: float) -> np.ndarray:
    """Whether each spot has another spot of the same frame within ``reach`` px."""
    if len(t) < 2:
        return np.zeros(len(t), bool)
    pts = np.column_stack([x, y, t.astype(float) * (4 * reach + 1e3)])
    pairs = cKDTree(pts).query_pairs(reach, output_type="ndarray")
    out = np.zeros(len(t), bool)
    out[pairs.ravel()] = True
    return out


def _locate_chunk(
    raw: np.ndarray, config: DetectConfig, camera: Camera, sigma: float, start: int
) -> pd.DataFrame:
    """Spots of a (T, Y, X) chunk; see :func:`locate_movie`."""
    eff = camera.to_effective(raw)
    half = config.box_radius_px or int(np.ceil(3 * sigma))
    half = max(1, min(half, (min(eff.shape[1:]) - 1) // 2))
    side = 2 * half + 1
    radius = max(1, int(round(1.5 * sigma)))
    read_var = camera.read_var_effective
    snr_map, scale = _snr_map(eff, sigma, read_var)
    support = None
    if config.support_frames > 1 and len(eff) > 1:
        support = temporal_support(snr_map, config.support_frames, 0.5 * config.threshold)
    t, y, x = _peaks(snr_map if support is None else support, radius, config.threshold)
    if len(t) == 0:
        return empty_table(SPOT_COLUMNS)
    need = np.full(len(t), config.min_snr)
    if support is not None:
        supported = support[t, y, x] > snr_map[t, y, x]
        need[supported] = min(config.min_snr, config.min_snr_supported)
    boxes, ox, oy = _boxes(eff, t, y, x, half)
    if config.method == "centroid":
        fx, fy, n, b, ex, en, ok = _centroid(boxes, ox, oy, sigma)
        ey, s = ex, np.full(len(fx), sigma)
    else:
        sx, sy = _refine_start(boxes, ox, oy, x, y)
        fit = fit_spots(
            boxes,
            ox,
            oy,
            sx,
            sy,
            sigma,
            fit_sigma=config.fit_sigma,
            read_var=read_var,
            n_iter=config.n_iter,
        )
        t, ox, oy, need, fit = _deflate_and_refit(
            eff, snr_map, scale, fit, t, ox, oy, need, half, sigma, read_var, config
        )
        fx, fy, n, b, s = fit.x, fit.y, fit.photons, fit.background, fit.sigma
        ex, ey, en, ok = fit.x_err, fit.y_err, fit.photons_err, fit.ok
        x, y = ox + half, oy + half
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = n / en
    ok = ok & (snr >= need) & (np.abs(fx - x) <= side) & (np.abs(fy - y) <= side)
    keep = np.flatnonzero(ok)
    keep = keep[_dedupe(t[keep], fx[keep], fy[keep], snr[keep], max(1.0, sigma))]
    # effective photons -> photons (calibrated) or ADU (estimated camera)
    f2 = camera.excess_noise
    if camera.calibrated:
        sig_out, bg_out = n[keep] * f2, b[keep] * f2
    else:
        scale = camera.adu_per_photon * f2
        sig_out, bg_out = n[keep] * scale, b[keep] * scale + camera.offset_adu
    out = pd.DataFrame(
        {
            "frame": (t[keep] + start).astype(np.int64),
            "x": fx[keep],
            "y": fy[keep],
            "signal": sig_out,
            "background": bg_out,
            "sigma": np.asarray(s, float)[keep],
            "x_err": ex[keep],
            "y_err": ey[keep],
        },
        columns=list(SPOT_COLUMNS),
    )
    return out.sort_values(["frame", "x"], kind="stable", ignore_index=True)


def _deflate_and_refit(eff, snr_map, scale, fit, t, ox, oy, need, half, sigma, read_var, config):
    """Find spots hidden next to brighter ones, then fit touching spots jointly.

    The model of the accepted spots is subtracted and candidates are searched again in the
    residual (iterative deflation, as in crowded-field photometry). Spots whose windows overlap
    are then refitted with their neighbours' light as a known term of the model, alternating over
    the spots (block-coordinate ascent of the joint likelihood).

    Returns
    -------
    t, ox, oy, need : ndarray
        Frame (in the chunk), window origin and SNR needed for acceptance of every spot.
    Fit
        Final parameters of every spot.
    """
    side = 2 * half + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        good = fit.ok & (fit.photons / fit.photons_err >= need)
    idx = np.flatnonzero(good)
    idx = idx[_dedupe(t[idx], fit.x[idx], fit.y[idx], fit.photons[idx], max(1.0, sigma))]
    t, ox, oy, need = t[idx], ox[idx], oy[idx], need[idx]
    x, y, n, b, s = (a[idx].copy() for a in (fit.x, fit.y, fit.photons, fit.background, fit.sigma))
    errs = np.column_stack([fit.x_err[idx], fit.y_err[idx], fit.photons_err[idx]])
    ok = fit.ok[idx].copy()
    n_first = len(t)
    if config.residual_threshold is not None and n_first:
        # the band-passed residual is the band-passed image minus the smoothed model: render the
        # model with the PSF widened by the smoothing kernel instead of filtering again
        # (snr_map becomes the residual's SNR map in place)
        wide = int(np.ceil(3 * np.sqrt(2) * sigma))
        oxw, oyw = ox + half - wide, oy + half - wide
        smooth = spot_models(oxw, oyw, 2 * wide + 1, x, y, n, np.hypot(s, sigma))
        t64 = t.astype(np.int64)
        subtract_windows(snr_map, scale, t64, oxw.astype(np.int64), oyw.astype(np.int64), smooth)
        # ... minus its local mean (a flat square of the spot's photons over the mean's window)
        box = 2 * int(np.ceil(4 * sigma)) + 1
        flat = np.broadcast_to((-n / box**2).astype(np.float32)[:, None, None], (len(n), box, box))
        hb = box // 2
        cx, cy = np.rint(x).astype(np.int64) - hb, np.rint(y).astype(np.int64) - hb
        subtract_windows(snr_map, scale, t64, cx, cy, np.ascontiguousarray(flat))
        radius = max(1, int(round(1.5 * sigma)))
        t2, y2, x2 = _peaks(snr_map, radius, config.residual_threshold)
        if len(t2):
            boxes2, ox2, oy2 = _boxes(eff, t2, y2, x2, half)
            models = spot_models(ox, oy, side, x, y, n, s)
            boxes2 = boxes2 - window_light(t, ox, oy, models, t2, ox2, oy2, side)
            sx, sy = _refine_start(boxes2, ox2, oy2, x2, y2)
            f2 = fit_spots(boxes2, ox2, oy2, sx, sy, sigma, read_var=read_var, n_iter=config.n_iter)
            # a residual peak beside a bright spot may be that spot's model mismatch (blur, PSF
            # shape), which grows with brightness: keep it only if reasonably bright itself
            with np.errstate(invalid="ignore", divide="ignore"):
                bright = ok & (n / errs[:, 2] >= 2 * config.min_snr)
            typical = np.median(n[bright]) if bright.sum() >= 5 else 0.0
            keep2 = f2.ok & (f2.photons / f2.photons_err >= config.min_snr)
            keep2 &= f2.photons >= 0.5 * typical
            t2, ox2, oy2 = t2[keep2], ox2[keep2], oy2[keep2]
            sx, sy, n2 = f2.x[keep2], f2.y[keep2], f2.photons[keep2]
        if len(t2):
            t, ox, oy = (
                np.concatenate([t, t2]),
                np.concatenate([ox, ox2]),
                np.concatenate([oy, oy2]),
            )
            need = np.concatenate([need, np.full(len(t2), config.min_snr)])
            x, y, n = np.concatenate([x, sx]), np.concatenate([y, sy]), np.concatenate([n, n2])
            b = np.concatenate([b, np.full(len(t2), np.median(b))])
            s = np.concatenate([s, np.full(len(t2), sigma)])
            errs = np.vstack([errs, np.full((len(t2), 3), np.nan)])
            ok = np.concatenate([ok, np.zeros(len(t2), bool)])
    crowd = spots_with_neighbours(t, x, y, side + 1.0)
    # spots found in the residual always need a fit; lone first-pass spots keep theirs
    todo = np.flatnonzero(crowd | (np.arange(len(t)) >= n_first))
    if len(todo):
        boxes, _, _ = _boxes(eff, t[todo], oy[todo] + half, ox[todo] + half, half)
        for _ in range(2):
            # light of the other spots in each window
            models = spot_models(ox, oy, side, x, y, n, s)
            extra = window_light(
                t, ox, oy, models, t[todo], ox[todo], oy[todo], side, exclude=todo[:, None]
            )
            f = fit_spots(
                boxes,
                ox[todo],
                oy[todo],
                x[todo],
                y[todo],
                s[todo],
                fit_sigma=config.fit_sigma,
                read_var=read_var,
                n_iter=config.n_iter,
                extra=extra,
                photons0=n[todo],
                background0=b[todo],
            )
            x[todo], y[todo], n[todo], b[todo], s[todo] = f.x, f.y, f.photons, f.background, f.sigma
            errs[todo] = np.column_stack([f.x_err, f.y_err, f.photons_err])
            ok[todo] = f.ok
            if not crowd.any():
                break
    extra = None
    if not config.fit_sigma and len(t):
        extra = _split_merged(
            eff, t, ox, oy, x, y, n, b, s, errs, ok, half, sigma, read_var, config
        )
    if extra is not None:
        old = (t, ox, oy, x, y, n, b, s, errs, ok)
        t, ox, oy, x, y, n, b, s, errs, ok = (
            np.concatenate([a, e]) for a, e in zip(old, extra, strict=True)
        )
        need = np.concatenate([need, np.full(len(extra[0]), config.min_snr)])
    if not config.fit_sigma and len(t):
        _fit_close_groups(eff, t, ox, oy, x, y, n, b, s, errs, ok, half, sigma, read_var)
    return t, ox, oy, need, Fit(x, y, n, b, s, errs[:, 0], errs[:, 1], errs[:, 2], ok)


def _split_merged(eff, t, ox, oy, x, y, n, b, s, errs, ok, half, sigma, read_var, config):
    """Split spots that are two unresolved emitters (model selection, 1 vs 2 spots).

    Each bright lone spot that one emitter fits worse than typical (Poisson deviance above the
    number of pixels, its expectation) is refitted as two emitters in its window (started along
    the spot's long axis). The split is kept when twice the log-likelihood gain
    exceeds 25 (a likelihood-ratio test for 3 extra parameters, p < 1e-5) and both parts are at
    least half as bright as the chunk's typical isolated spot, so a motion-blurred streak (one
    emitter spread out, each half dim) is not split. Updates the kept spot in place; returns
    the arrays of the added spots (or None).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = n / errs[:, 2]
    bright = ok & (snr >= 2 * config.min_snr)
    if bright.sum() < 5:
        return None
    typical = np.median(n[bright])
    # lone spots only: near other spots, unmodelled light and blur make splits unreliable
    cand = np.flatnonzero(bright & ~spots_with_neighbours(t, x, y, 4.0 * sigma + 1.0))
    if len(cand) == 0:
        return None
    _, ny, nx = eff.shape
    # the spot's own window, where its current parameters are the one-emitter MLE
    hw = half
    wx, wy = ox[cand], oy[cand]
    boxes = cut_windows(eff, t[cand], wx, wy, 2 * hw + 1)
    ar = np.arange(2 * hw + 1)
    ex, _, _ = pixel_integrals(wx[:, None] + ar - x[cand, None], s[cand, None])
    ey, _, _ = pixel_integrals(wy[:, None] + ar - y[cand, None], s[cand, None])
    mu = b[cand, None, None] + n[cand, None, None] * ey[:, :, None] * ex[:, None, :] + read_var
    d = boxes.astype(np.float64) + read_var
    ll1 = (d * np.log(np.maximum(mu, 1e-6)) - mu).sum(axis=(1, 2))
    # only windows that one spot fits worse than its expected deviance are tested (saves time)
    sat = np.where(d > 0, d * np.log(np.maximum(d, 1e-12)) - d, 0.0).sum(axis=(1, 2))
    npix = boxes.shape[1] * boxes.shape[2]
    bad = 2 * (sat - ll1) > npix
    if not bad.any():
        return None
    cand, boxes, wx, wy, ll1 = cand[bad], boxes[bad], wx[bad], wy[bad], ll1[bad]
    # long axis of the background-subtracted window
    w = np.maximum(boxes - b[cand, None, None], 0.0)
    ar = np.arange(2 * hw + 1)
    tot = np.maximum(w.sum(axis=(1, 2)), 1e-9)
    dx = ar[None, None, :] + wx[:, None, None] - x[cand, None, None]
    dy = ar[None, :, None] + wy[:, None, None] - y[cand, None, None]
    sxx, syy, sxy = (
        (w * dx * dx).sum((1, 2)) / tot,
        (w * dy * dy).sum((1, 2)) / tot,
        (w * dx * dy).sum((1, 2)) / tot,
    )
    angle = 0.5 * np.arctan2(2 * sxy, sxx - syy)
    u = np.column_stack([np.cos(angle), np.sin(angle)])
    d = 0.75 * sigma
    x0 = x[cand, None] + np.column_stack([d * u[:, 0], -d * u[:, 0]])
    y0 = y[cand, None] + np.column_stack([d * u[:, 1], -d * u[:, 1]])
    two = fit_groups(
        boxes,
        wx,
        wy,
        x0,
        y0,
        np.repeat(n[cand, None] / 2, 2, axis=1),
        b[cand],
        sigma,
        read_var=read_var,
    )
    fx, fy, fn, ferr, fok, ll2 = two
    sep = np.hypot(fx[:, 0] - fx[:, 1], fy[:, 0] - fy[:, 1])
    gain, weakest = 2 * (ll2 - ll1), fn.min(axis=1)
    # a spot about twice as bright as typical is likely two emitters: a weaker test suffices
    # (a blurred streak of one emitter is only about typical in total, its halves ~0.5 each)
    double = n[cand] >= 1.4 * typical
    split = (gain > 25) & (weakest >= 0.7 * typical) | double & (gain > 12) & (
        weakest >= 0.5 * typical
    )
    split &= fok & (sep >= 1.0)
    split &= (np.abs(fx - x[cand, None]) <= hw).all(axis=1) & (
        np.abs(fy - y[cand, None]) <= hw
    ).all(axis=1)
    if not split.any():
        return None
    idx, k = cand[split], np.flatnonzero(split)
    x[idx], y[idx], n[idx] = fx[k, 0], fy[k, 0], fn[k, 0]
    errs[idx] = ferr[k, 0]
    m = len(idx)
    new_ox = np.clip(np.rint(fx[k, 1]).astype(int) - half, 0, nx - (2 * half + 1))
    new_oy = np.clip(np.rint(fy[k, 1]).astype(int) - half, 0, ny - (2 * half + 1))
    return (
        t[idx],
        new_ox,
        new_oy,
        fx[k, 1],
        fy[k, 1],
        fn[k, 1],
        b[idx],
        s[idx],
        ferr[k, 1],
        np.ones(m, bool),
    )


def _fit_close_groups(eff, t, ox, oy, x, y, n, b, s, errs, ok, half, sigma, read_var):
    """Refit spots closer than ``4 sigma + 1`` px to each other simultaneously, 2 to 4 at a time.

    Fitting touching spots one at a time (even with the neighbours' light as a known term)
    converges slowly and lets them drift together; the simultaneous multi-emitter fit
    (:func:`spt.localize.fit_groups`) does not. Light of spots outside the group is a known
    term. Arrays are updated in place where the group fit succeeds.
    """
    reach = 4.0 * sigma + 1.0
    pts = np.column_stack([x, y, t.astype(float) * (4 * reach + 1e3)])
    pairs = cKDTree(pts).query_pairs(reach, output_type="ndarray")
    if len(pairs) == 0:
        return
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(t),) * 2)
    _, label = connected_components(graph, directed=False)
    sizes = np.bincount(label)
    side = 2 * half + 1
    models = spot_models(ox, oy, side, x, y, n, s)
    _, ny, nx = eff.shape
    for k in (2, 3, 4):
        groups = np.flatnonzero(sizes == k)
        if len(groups) == 0:
            continue
        order = np.argsort(label, kind="stable")
        members = order[np.isin(label[order], groups)].reshape(-1, k)
        gx, gy = x[members], y[members]
        cx, cy = gx.mean(axis=1), gy.mean(axis=1)
        extent = np.hypot(gx - cx[:, None], gy - cy[:, None]).max()
        hw = min(half + int(np.ceil(extent)), (min(ny, nx) - 1) // 2)
        gt = t[members[:, 0]]
        boxes, wx, wy = _boxes(eff, gt, np.rint(cy).astype(int), np.rint(cx).astype(int), hw)
        # light of the spots outside the group, within the window
        boxes = boxes - window_light(t, ox, oy, models, gt, wx, wy, 2 * hw + 1, exclude=members)
        fx, fy, fn, ferr, fok, _ = fit_groups(
            boxes,
            wx,
            wy,
            gx,
            gy,
            n[members],
            np.median(b[members], axis=1),
            sigma,
            read_var=read_var,
        )
        # keep the group fit only where every spot stays in the window
        fok &= (np.abs(fx - cx[:, None]) <= hw).all(axis=1) & (np.abs(fy - cy[:, None]) <= hw).all(
            axis=1
        )
        sel = members[fok]
        x[sel], y[sel], n[sel] = fx[fok], fy[fok], fn[fok]
        errs[sel] = ferr[fok]
        ok[sel] = True


def estimate_psf_sigma(
    frames: np.ndarray, camera: Camera, *, guess: float = 1.3, threshold: float = 6.0
) -> float:
    """Estimate the PSF s.d. (px) from free-sigma MLE fits of isolated bright spots.

    Uses at most 40 frames and the spots of SNR above ``threshold`` (robust noise units) with no
    neighbour within ``4 sigma + 2`` px; returns the SNR^2-weighted median width. Two rounds so
    the candidate filter and window match the estimate. Returns ``guess`` if too few spots.

    Parameters
    ----------
    frames : ndarray, shape (T, Y, X)
        Raw movie (ADU).
    camera : Camera
        Conversion to effective photons.
    guess : float
        Starting value in px.
    threshold : float
        Candidate threshold for the bright spots used.
    """
    eff = camera.to_effective(np.asarray(frames[:40]))
    sigma = guess
    for _ in range(2):
        half = max(2, min(int(np.ceil(3 * sigma)) + 1, (min(eff.shape[1:]) - 1) // 2))
        t, y, x = _candidates(
            eff, sigma, max(1, round(1.5 * sigma)), camera.read_var_effective, threshold
        )
        if len(t) < 3:
            return float(sigma)
        boxes, ox, oy = _boxes(eff, t, y, x, half)
        sx, sy = _refine_start(boxes, ox, oy, x, y)
        fit = fit_spots(
            boxes,
            ox,
            oy,
            sx,
            sy,
            sigma,
            fit_sigma=True,
            read_var=camera.read_var_effective,
            n_iter=12,
        )
        # isolated spots only: touching spots and motion blur widen the fit
        good = fit.ok & (fit.photons / fit.photons_err > threshold)
        good &= ~spots_with_neighbours(t, fit.x, fit.y, 4 * sigma + 2)
        if good.sum() < 3:
            return float(sigma)
        # median weighted by SNR^2 (the inverse variance of each width estimate, roughly)
        order = np.argsort(fit.sigma[good])
        w = np.cumsum((fit.photons[good] / fit.photons_err[good])[order] ** 2)
        median = fit.sigma[good][order][np.searchsorted(w, 0.5 * w[-1])]
        sigma = float(np.clip(median, 0.5, 10.0))
    return sigma


#: Largest number of pixels (frames x Y x X) detection works on at once.
_CHUNK_PIXELS = 32 * 256 * 256

#: Frames smaller than this (px, either side) give no spots: there is no room for a spot and
#: the background around it.
MIN_DETECT_FRAME_PX = 16


def resolve_camera_and_psf(frames: np.ndarray, config: DetectConfig) -> tuple[Camera, float]:
    """The camera model and PSF s.d. (px) detection will use: from ``config``, else estimated.

    :func:`locate_movie` estimates them from its first ``config.chunk_frames`` frames; pass the
    result as ``resolved=`` to detect parts of one movie separately (e.g. in parallel) with
    exactly the parameters of a single pass.
    """
    frames = _check_frames(frames, "frames")
    camera = config.calibrated_camera() or estimate_camera(frames, config.camera)
    sigma = config.psf_sigma_px or estimate_psf_sigma(frames, camera)
    return camera, sigma


def locate(
    image: np.ndarray, config: DetectConfig = DetectConfig(), *, frame: int = 0
) -> pd.DataFrame:
    """Detect and localise the spots of one 2-D frame.

    Parameters
    ----------
    image : ndarray, shape (Y, X)
        Raw frame in ADU (any numeric dtype).
    config : DetectConfig
        Detection parameters; see its notes for the units of ``signal`` and ``background``.
    frame : int
        Frame number written in the ``frame`` column.

    Returns
    -------
    DataFrame
        Columns :data:`spt.schema.SPOT_COLUMNS`: ``frame, x, y`` (px; x = column, origin at the
        centre of the top-left pixel), ``signal``, ``background``, ``sigma`` (px), ``x_err``,
        ``y_err`` (px, Cramer-Rao bound at the estimate).
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise SptInputError("image", f"locate expects one 2-D frame, got shape {arr.shape}")
    return locate_movie(arr[None], config, start_frame=frame)


def _iter_chunks(frames, chunk: int):
    if (
        isinstance(frames, np.ndarray)
        or hasattr(frames, "shape")
        and len(getattr(frames, "shape", ())) == 3
    ):
        n = len(frames)
        for i in range(0, n, chunk):
            yield i, np.asarray(frames[i : i + chunk])
        return
    buf: list[np.ndarray] = []
    done = 0
    for f in frames:
        buf.append(np.asarray(f))
        if len(buf) == chunk:
            yield done, np.stack(buf)
            done += len(buf)
            buf = []
    if buf:
        yield done, np.stack(buf)


def locate_movie(
    frames: np.ndarray | Iterable[np.ndarray],
    config: DetectConfig = DetectConfig(),
    *,
    start_frame: int = 0,
    progress: Callable[[int, int | None], None] | None = None,
    resolved: tuple[Camera, float] | None = None,
) -> pd.DataFrame:
    """Detect and localise spots in every frame of a movie.

    Candidates are local maxima of a band-passed, noise-normalised image above
    ``config.threshold`` robust noise units; each is fitted by Poisson MLE of a pixel-integrated
    Gaussian (Smith et al., Nat Methods 2010) on EM-CCD data scaled to effective photons
    (Mortensen et al., Nat Methods 2010), all spots of a chunk of frames at once. The camera and
    PSF width are taken from ``config`` or estimated once from the first frames.

    Parameters
    ----------
    frames : array-like, shape (T, Y, X), or iterable of 2-D frames
        Raw movie in ADU.
    config : DetectConfig
        Detection parameters.
    start_frame : int
        Frame number of the first frame.
    progress : callable(n_done, n_total) or None
        Called after each chunk with the number of frames done and the total (None if unknown).
    resolved : (Camera, float), optional
        Camera and PSF s.d. from :func:`resolve_camera_and_psf`, instead of estimating them here.

    Returns
    -------
    DataFrame
        Spots of all frames (see :func:`locate`), sorted by frame.
    """
    total = len(frames) if hasattr(frames, "__len__") else None
    chunks = _iter_chunks(frames, config.chunk_frames)
    first = next(chunks, None)
    if first is None:
        return empty_table(SPOT_COLUMNS)
    if min(np.shape(first[1])[-2:]) < MIN_DETECT_FRAME_PX:
        # Too small for the band-pass and the camera estimate: a crop this size holds no
        # resolvable spot with its background, so it yields an empty (headed) table.
        return empty_table(SPOT_COLUMNS)
    camera, sigma = resolved or resolve_camera_and_psf(first[1], config)
    threads = config.n_threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )

    def work(item: tuple[int, np.ndarray]) -> tuple[int, pd.DataFrame]:
        i, arr = item
        arr = _check_frames(arr, "frames")
        # Halve the chunk until its full-size work images stay under ~8 MB (float32): bigger
        # arrays are fresh memory maps for the allocator, and touching their pages costs more
        # than the fitting itself at 512 x 512. Halving keeps the caller's chunk boundaries.
        sub = len(arr)
        while sub > 1 and sub * arr.shape[1] * arr.shape[2] > _CHUNK_PIXELS:
            sub = (sub + 1) // 2
        parts = [
            _locate_chunk(arr[j : j + sub], config, camera, sigma, start_frame + i + j)
            for j in range(0, len(arr), sub)
        ]
        parts = [p for p in parts if len(p)]
        return len(arr), pd.concat(parts, ignore_index=True) if parts else empty_table(SPOT_COLUMNS)

    results: list[pd.DataFrame] = []
    done = 0

    def collect(res: tuple[int, pd.DataFrame]) -> None:
        nonlocal done
        n_frames, df = res
        results.append(df)
        done += n_frames
        if progress is not None:
            progress(done, total)

    all_chunks = itertools.chain([first], chunks)
    if threads <= 1:
        for item in all_chunks:
            collect(work(item))
    else:
        # chunks run in parallel threads (numpy and the numba kernels release the GIL);
        # results are collected in order, with at most 2 chunks per thread in memory
        with ThreadPoolExecutor(threads) as pool:
            pending = []
            for item in all_chunks:
                pending.append(pool.submit(work, item))
                if len(pending) >= 2 * threads:
                    collect(pending.pop(0).result())
            for fut in pending:
                collect(fut.result())
    nonempty = [r for r in results if len(r)]
    if not nonempty:
        return empty_table(SPOT_COLUMNS)
    return pd.concat(nonempty, ignore_index=True).sort_values(
        ["frame", "x"], kind="stable", ignore_index=True
    )


def locate_chunks(
    chunks: Iterable[tuple[int, np.ndarray]],
    config: DetectConfig = DetectConfig(),
    *,
    progress: Callable[[int, int | None], None] | None = None,
    resolved: tuple[Camera, float] | None = None,
) -> pd.DataFrame:
    """:func:`locate_movie` over ``(first frame, frames)`` chunks of one movie (e.g.
    :func:`spt.pipeline.array_chunks`), as one movie.

    The camera and PSF width are estimated once and temporal support spans the caller's chunk
    boundaries, so the spots do not depend on how the movie was cut into chunks (calling
    :func:`locate_movie` per chunk would estimate them per chunk).

    Parameters
    ----------
    chunks : iterable of (int, ndarray)
        Consecutive chunks: first frame index and frames (n, Y, X) in ADU.
    config : DetectConfig
        Detection parameters.
    progress : callable(frames_done, None) or None
        Called after each internal chunk with the index one past the last frame done.

    Returns
    -------
    DataFrame
        Spots, as :func:`locate_movie`.
    """
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        return empty_table(SPOT_COLUMNS)
    start = int(first[0])

    def frames():
        expected = start
        for begin, block in itertools.chain([first], it):
            if int(begin) != expected:
                raise SptInputError("chunks", f"chunk starts at frame {begin}, expected {expected}")
            yield from np.asarray(block)
            expected += len(block)

    report = None if progress is None else (lambda done, _total: progress(start + done, None))
    return locate_movie(frames(), config, start_frame=start, progress=report, resolved=resolved)
