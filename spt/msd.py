"""Mean squared displacement (MSD): gap-aware time-averaged and ensemble MSD and model fits.

Owns the MSD curves of tracks (lags counted in frames, never in row offsets, so blinking gaps do
not bias them) and the fits of free, anomalous, directed and confined motion with static
localisation error and motion blur, with model choice by BIC (Michalet 2010).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit
from scipy.optimize import least_squares

from spt.errors import SptInputError

__all__ = [
    "MSD_MODELS",
    "MSDFit",
    "emsd",
    "fit_fbm",
    "fit_msd",
    "fit_msd_models",
    "imsd",
    "msd_curve",
    "msd_model",
    "optimal_n_lags",
    "track_msd_fits",
]

#: Models fitted by :func:`fit_msd` and compared by :func:`fit_msd_models`.
MSD_MODELS: tuple[str, ...] = ("immobile", "free", "anomalous", "directed", "confined")

_N_PARAMS = {"immobile": 1, "free": 2, "anomalous": 3, "directed": 3, "confined": 3}
IMSD_COLUMNS = ("particle", "lag", "lag_s", "msd_um2", "n_pairs")
EMSD_COLUMNS = ("lag", "lag_s", "msd_um2", "n_pairs", "n_tracks")
FIT_COLUMNS = (
    "particle",
    "n_points",
    "model",
    "D_um2_s",
    "alpha",
    "speed_um_s",
    "confinement_radius_um",
    "sigma_um",
    "n_lags",
    "bic",
)


def _check_tracks(tracks: pd.DataFrame, name: str = "tracks") -> None:
    if not isinstance(tracks, pd.DataFrame):
        raise SptInputError(name, f"expected a pandas DataFrame, got {type(tracks).__name__}")
    missing = [c for c in ("frame", "x", "y", "particle") if c not in tracks.columns]
    if missing:
        raise SptInputError(name, f"missing column(s) {', '.join(missing)}")


def _check_units(pixel_size_um: float, frame_interval_s: float) -> None:
    for label, value in (("pixel_size_um", pixel_size_um), ("frame_interval_s", frame_interval_s)):
        if not np.isfinite(value) or value <= 0:
            raise SptInputError(label, f"must be a positive number, got {value!r}")


def msd_curve(
    frames: np.ndarray, x: np.ndarray, y: np.ndarray, max_lag: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time-averaged MSD of one 2-D track, gap-aware.

    Positions are placed on a dense frame axis (missing frames left empty), so the lag of a pair
    is the difference of their frame numbers and a blinking gap never turns a long displacement
    into a short lag (the bias of trackpy issue #598).

    Parameters
    ----------
    frames : ndarray of int
        Frame numbers of the localisations (unique, any order).
    x, y : ndarray of float
        Positions (any length unit; the MSD is in that unit squared).
    max_lag : int
        Largest lag, in frames.

    Returns
    -------
    lags : ndarray of int
        Lags in frames with at least one pair, ascending.
    msd : ndarray of float
        Mean of ``dx**2 + dy**2`` over all pairs at that lag.
    n_pairs : ndarray of int
        Number of pairs averaged at each lag.
    """
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size < 2 or max_lag < 1:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    order = np.argsort(frames)
    frames, x, y = frames[order], np.asarray(x, float)[order], np.asarray(y, float)[order]
    span = int(frames[-1] - frames[0]) + 1
    pos = np.full((span, 2), np.nan)
    pos[frames - frames[0]] = np.column_stack([x, y])
    valid = ~np.isnan(pos[:, 0])
    lags, msd, n_pairs = [], [], []
    for lag in range(1, min(max_lag, span - 1) + 1):
        ok = valid[lag:] & valid[:-lag]
        n = int(ok.sum())
        if n == 0:
            continue
        d = pos[lag:][ok] - pos[:-lag][ok]
        lags.append(lag)
        msd.append(float(np.mean(np.sum(d * d, axis=1))))
        n_pairs.append(n)
    return np.asarray(lags, np.int64), np.asarray(msd), np.asarray(n_pairs, np.int64)


def imsd(
    tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float, max_lag: int = 100
) -> pd.DataFrame:
    """Time-averaged MSD of every track, in physical units.

    Parameters
    ----------
    tracks : DataFrame
        Columns ``frame, x, y, particle`` (positions in pixels).
    pixel_size_um : float
        Pixel size in micrometres.
    frame_interval_s : float
        Time between frames in seconds.
    max_lag : int
        Largest lag in frames.

    Returns
    -------
    DataFrame
        Long table ``particle, lag, lag_s, msd_um2, n_pairs``: one row per track and lag.
    """
    _check_tracks(tracks)
    _check_units(pixel_size_um, frame_interval_s)
    parts = []
    for pid, g in tracks.groupby("particle", sort=True):
        lags, msd, n = msd_curve(
            g["frame"].to_numpy(), g["x"].to_numpy(), g["y"].to_numpy(), max_lag
        )
        if lags.size:
            parts.append(
                pd.DataFrame(
                    {
                        "particle": np.int64(pid),
                        "lag": lags,
                        "lag_s": lags * frame_interval_s,
                        "msd_um2": msd * pixel_size_um**2,
                        "n_pairs": n,
                    }
                )
            )
    if not parts:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="int64" if c in ("particle", "lag", "n_pairs") else float)
                for c in IMSD_COLUMNS
            }
        )
    return pd.concat(parts, ignore_index=True)


def emsd(
    tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float, max_lag: int = 100
) -> pd.DataFrame:
    """Ensemble MSD: the pair-weighted mean of the time-averaged MSDs of all tracks.

    Returns
    -------
    DataFrame
        ``lag, lag_s, msd_um2, n_pairs, n_tracks`` (one row per lag in frames).
    """
    per_track = imsd(
        tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s, max_lag=max_lag
    )
    if per_track.empty:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="int64" if c in ("lag", "n_pairs", "n_tracks") else float)
                for c in EMSD_COLUMNS
            }
        )
    per_track = per_track.assign(w=per_track["msd_um2"] * per_track["n_pairs"])
    out = per_track.groupby("lag", sort=True).agg(
        lag_s=("lag_s", "first"),
        w=("w", "sum"),
        n_pairs=("n_pairs", "sum"),
        n_tracks=("particle", "nunique"),
    )
    out["msd_um2"] = out["w"] / out["n_pairs"]
    return out.reset_index()[list(EMSD_COLUMNS)]


def optimal_n_lags(n_points: int, reduced_error: float) -> int:
    """Optimal number of MSD lags for fitting D with an offset (Michalet, PRE 82, 041914, 2010).

    ``p_min ~ 2 + 2.3 x**0.52`` with the reduced localisation error ``x = sigma**2 / (D dt)``,
    capped at a third of the track length (longer lags are averaged over too few pairs).
    """
    x = max(float(reduced_error), 0.0) if np.isfinite(reduced_error) else 100.0
    p = int(np.floor(2 + 2.3 * x**0.52))
    return int(max(2, min(p, max(2, n_points // 3), 50)))


def msd_model(
    model: str, lag_s: np.ndarray, params: np.ndarray, *, frame_interval_s: float, blur_r: float
) -> np.ndarray:
    """Model MSD (2-D) in um^2 at lags ``lag_s`` (s).

    All models share the offset ``4 sigma^2 - 8 R D dt`` of static error ``sigma`` and motion
    blur ``R`` (1/6 for exposure over the whole frame; Michalet 2010, Eq. 9; Berglund 2010).

    ``params`` per model (``off`` is the fitted offset in um^2):

    - immobile: ``(off,)``: ``off``
    - free: ``(D, off)``: ``4 D t + off``
    - anomalous: ``(D, alpha, off)``: ``4 D t**alpha + off``
    - directed: ``(D, v, off)``: ``4 D t + v**2 t**2 + off``
    - confined: ``(D, r, off)``: ``r**2 (1 - exp(-4 D t / r**2)) + off`` (disk of radius r)
    """
    t = np.asarray(lag_s, float)
    if model == "immobile":
        return np.full_like(t, params[0])
    if model == "free":
        return 4 * params[0] * t + params[1]
    if model == "anomalous":
        return 4 * params[0] * t ** params[1] + params[2]
    if model == "directed":
        return 4 * params[0] * t + params[1] ** 2 * t**2 + params[2]
    if model == "confined":
        r2 = params[1] ** 2
        return r2 * (1 - np.exp(-4 * params[0] * t / max(r2, 1e-300))) + params[2]
    raise ValueError(f"unknown MSD model {model!r}; known: {', '.join(MSD_MODELS)}")


@dataclass(frozen=True)
class MSDFit:
    """Result of fitting one MSD model.

    Attributes
    ----------
    model : str
        One of :data:`MSD_MODELS`.
    D_um2_s : float
        Diffusion coefficient (um^2/s); 0 for ``immobile``.
    alpha : float
        Anomalous exponent (1 except for ``anomalous``; 0 for ``immobile``).
    speed_um_s : float
        Drift speed (um/s) of ``directed``, else 0.
    confinement_radius_um : float
        Radius of the confining disk (um) of ``confined``, else NaN.
    sigma_um : float
        Static localisation error (um) implied by the offset (NaN if the offset is negative).
    n_lags : int
        Number of lags fitted.
    bic : float
        Bayesian information criterion of the weighted fit (smaller is better).
    """

    model: str
    D_um2_s: float
    alpha: float
    speed_um_s: float
    confinement_radius_um: float
    sigma_um: float
    n_lags: int
    bic: float


def _weights(msd: np.ndarray, lags: np.ndarray, n_points: int) -> np.ndarray:
    # Relative variance of a time-averaged MSD point at lag n of an N-point Brownian track
    # (Qian, Sheetz & Elson 1991): (2n^2 + 1) / (3 n (N - n + 1)).
    n = lags.astype(float)
    rel = (2 * n**2 + 1) / (3 * n * np.maximum(n_points - n + 1, 1))
    scale = np.maximum(msd, np.max(msd) * 1e-3 + 1e-300)
    return 1.0 / (scale * np.sqrt(rel))


def fit_msd(
    lag_s: np.ndarray,
    msd_um2: np.ndarray,
    model: str,
    *,
    n_points: int,
    frame_interval_s: float,
    blur_r: float = 1 / 6,
    lags: np.ndarray | None = None,
) -> MSDFit:
    """Weighted least-squares fit of one MSD model (see :func:`msd_model`).

    Points are weighted by the inverse standard deviation of a time-averaged MSD point
    (Qian et al., Biophys J 1991); the BIC uses the weighted residuals.

    Parameters
    ----------
    lag_s, msd_um2 : ndarray
        MSD curve in seconds and um^2 (already cut to the lags to fit).
    model : str
        One of :data:`MSD_MODELS`.
    n_points : int
        Number of localisations in the track (sets the weights).
    frame_interval_s : float
        Frame interval (s), for the blur term.
    blur_r : float
        Motion-blur coefficient R (1/6 for continuous exposure over the frame).
    lags : ndarray of int, optional
        Lags in frames (default ``lag_s / frame_interval_s``).
    """
    t = np.asarray(lag_s, float)
    m = np.asarray(msd_um2, float)
    k = _N_PARAMS[model]
    nan_fit = MSDFit(model, np.nan, np.nan, np.nan, np.nan, np.nan, int(t.size), np.inf)
    if t.size < k + 1 or not np.all(np.isfinite(m)):
        return nan_fit
    lag_frames = np.rint(t / frame_interval_s) if lags is None else np.asarray(lags, float)
    w = _weights(m, lag_frames, n_points)
    scale_m = max(float(np.max(np.abs(m))), 1e-300)
    scale_t = float(t[0])
    d0 = max((m[-1] - m[0]) / max(4 * (t[-1] - t[0]), 1e-300), scale_m * 1e-6 / scale_t)
    off0 = float(m[0] * 0.5)
    tiny = 1e-12 * scale_m

    if model == "immobile":
        off = float(np.sum(w**2 * m) / np.sum(w**2))
        params = np.array([off])
    else:
        if model == "free":
            x0, lo, hi = [d0, off0], [0, -np.inf], [np.inf, np.inf]
        elif model == "anomalous":
            x0, lo, hi = [d0, 1.0, off0], [0, 0.01, -np.inf], [np.inf, 2.5, np.inf]
        elif model == "directed":
            v0 = np.sqrt(max(m[-1] - m[0], tiny)) / t[-1]
            x0, lo, hi = [d0 * 0.5, v0, off0], [0, 0, -np.inf], [np.inf, np.inf, np.inf]
        else:  # confined
            r0 = np.sqrt(max(m[-1] - m[0], tiny))
            x0, lo, hi = [d0 * 2, r0, off0], [0, np.sqrt(tiny), -np.inf], [np.inf, np.inf, np.inf]
        # Fit in scaled units (D in msd/t, off in msd) so the optimiser sees O(1) numbers.
        unit = np.array(
            {
                "free": [scale_m / scale_t, scale_m],
                "anomalous": [scale_m / scale_t, 1.0, scale_m],
                "directed": [scale_m / scale_t, np.sqrt(scale_m) / scale_t, scale_m],
                "confined": [scale_m / scale_t, np.sqrt(scale_m), scale_m],
            }[model]
        )

        def resid(p: np.ndarray) -> np.ndarray:
            q = p * unit
            if model == "anomalous":
                pred = 4 * q[0] * scale_t ** (1 - q[1]) * t ** q[1] + q[2]
            else:
                pred = msd_model(model, t, q, frame_interval_s=frame_interval_s, blur_r=blur_r)
            return (pred - m) * w

        x0s = np.clip(
            np.asarray(x0, float) / unit, np.asarray(lo) / unit + 1e-9, np.asarray(hi) / unit
        )
        sol = least_squares(
            resid, x0s, bounds=(np.asarray(lo) / unit, np.asarray(hi) / unit), method="trf"
        )
        params = sol.x * unit
        if model == "anomalous":
            # fitted as 4 D' tau (t/tau)^alpha, tau = first lag; report D in um^2/s^alpha
            params = np.array([params[0] * scale_t ** (1 - params[1]), params[1], params[2]])
    pred = msd_model(model, t, params, frame_interval_s=frame_interval_s, blur_r=blur_r)
    rss = float(np.sum(((pred - m) * w) ** 2))
    n = t.size
    bic = n * np.log(max(rss / n, 1e-300)) + k * np.log(n)

    D = {"immobile": 0.0}.get(model, float(params[0]))
    alpha = {"immobile": 0.0, "anomalous": float(params[1]) if k == 3 else 1.0}.get(model, 1.0)
    speed = float(params[1]) if model == "directed" else 0.0
    radius = float(params[1]) if model == "confined" else np.nan
    off = float(params[-1])
    sigma2 = (off + 8 * blur_r * D * frame_interval_s) / 4
    sigma = float(np.sqrt(sigma2)) if sigma2 >= 0 else np.nan
    return MSDFit(model, D, alpha, speed, radius, sigma, int(n), float(bic))


def _fit_first_lags(
    lags: np.ndarray,
    msd_um2: np.ndarray,
    p: int,
    model: str,
    n_points: int,
    frame_interval_s: float,
    blur_r: float,
) -> MSDFit:
    """:func:`fit_msd` of ``model`` on the first ``p`` lags (frames) of an MSD curve (um^2)."""
    return fit_msd(
        lags[:p] * frame_interval_s,
        msd_um2[:p],
        model,
        n_points=n_points,
        frame_interval_s=frame_interval_s,
        blur_r=blur_r,
        lags=lags[:p],
    )


def _fit_lags(
    lags: np.ndarray, msd: np.ndarray, n_points: int, frame_interval_s: float, blur_r: float
) -> int:
    """Number of lags to fit, by Michalet's iteration: fit free motion, update x, repeat."""
    p = min(4, lags.size)
    for _ in range(5):
        f = _fit_first_lags(lags, msd, p, "free", n_points, frame_interval_s, blur_r)
        if not np.isfinite(f.D_um2_s) or f.D_um2_s <= 0:
            x = 100.0
        else:
            s2 = f.sigma_um**2 if np.isfinite(f.sigma_um) else 0.0
            x = s2 / (f.D_um2_s * frame_interval_s)
        new = min(optimal_n_lags(n_points, x), lags.size)
        if new == p:
            break
        p = new
    return max(p, 2)


def fit_msd_models(
    lags: np.ndarray,
    msd_um2: np.ndarray,
    *,
    n_points: int,
    frame_interval_s: float,
    blur_r: float = 1 / 6,
    models: tuple[str, ...] = MSD_MODELS,
    max_lag_fraction: float = 0.25,
) -> tuple[MSDFit, dict[str, MSDFit]]:
    """Fit several MSD models and choose one by BIC.

    ``free`` is fitted over the optimal number of lags (Michalet 2010); the other models need the
    curvature of longer lags and are fitted over ``max_lag_fraction`` of the track (at least the
    lags of ``free`` and 5); every model's BIC is computed on that same longer range so that they
    compare fairly. A more complex model wins only when its BIC is lower, i.e. when the fit
    improves by more than ``log(n)`` per extra parameter.

    Parameters
    ----------
    lags : ndarray of int
        Lags in frames (ascending), e.g. from :func:`msd_curve`.
    msd_um2 : ndarray
        MSD at those lags, um^2.
    n_points : int
        Localisations in the track.

    Returns
    -------
    best : MSDFit
        The model with the lowest BIC (with the D of ``free`` taken from its optimal-lag fit when
        ``free`` wins).
    fits : dict
        Every model's fit on the common lag range.
    """
    lags = np.asarray(lags)
    msd_um2 = np.asarray(msd_um2, float)
    if lags.size < 3:
        nan = MSDFit("immobile", np.nan, np.nan, np.nan, np.nan, np.nan, int(lags.size), np.inf)
        return nan, {}
    p_free = _fit_lags(lags, msd_um2, n_points, frame_interval_s, blur_r)
    p_long = int(min(lags.size, max(p_free, 5, int(max_lag_fraction * n_points))))
    fits = {
        mdl: _fit_first_lags(lags, msd_um2, p_long, mdl, n_points, frame_interval_s, blur_r)
        for mdl in models
    }
    best = min(fits.values(), key=lambda f: f.bic)
    if (
        best.model == "confined"
        and "immobile" in fits
        and not (best.confinement_radius_um > 2 * np.nan_to_num(best.sigma_um))
    ):
        # a confinement radius below the localisation error cannot be resolved: call it immobile
        best = fits["immobile"]
    if best.model == "free":
        short = _fit_first_lags(lags, msd_um2, p_free, "free", n_points, frame_interval_s, blur_r)
        best = MSDFit(
            "free", short.D_um2_s, 1.0, 0.0, np.nan, short.sigma_um, short.n_lags, best.bic
        )
    return best, fits


def track_msd_fits(
    tracks: pd.DataFrame,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    blur_r: float = 1 / 6,
    models: tuple[str, ...] = MSD_MODELS,
    max_lag: int = 200,
) -> pd.DataFrame:
    """Fit and choose an MSD model for every track (one segment per track).

    Returns
    -------
    DataFrame
        One row per particle: ``particle, n_points, model, D_um2_s, alpha, speed_um_s,
        confinement_radius_um, sigma_um, n_lags, bic``.
    """
    _check_tracks(tracks)
    _check_units(pixel_size_um, frame_interval_s)
    rows = []
    for pid, g in tracks.groupby("particle", sort=True):
        lags, msd, _ = msd_curve(
            g["frame"].to_numpy(), g["x"].to_numpy(), g["y"].to_numpy(), max_lag
        )
        best, _ = fit_msd_models(
            lags,
            msd * pixel_size_um**2,
            n_points=len(g),
            frame_interval_s=frame_interval_s,
            blur_r=blur_r,
            models=models,
        )
        rows.append(
            {
                "particle": int(pid),
                "n_points": len(g),
                **{k: getattr(best, k) for k in FIT_COLUMNS if k not in ("particle", "n_points")},
            }
        )
    if not rows:
        return pd.DataFrame(
            {
                c: pd.Series(
                    dtype="int64"
                    if c in ("particle", "n_points", "n_lags")
                    else object
                    if c == "model"
                    else float
                )
                for c in FIT_COLUMNS
            }
        )
    return pd.DataFrame(rows, columns=list(FIT_COLUMNS))


def fit_fbm(
    frames: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    max_points: int = 150,
    max_gapped_points: int = 64,
) -> tuple[float, float, float]:
    """Maximum-likelihood fit of fractional Brownian motion plus static noise to one track.

    The steps of the track are modelled as a zero-mean Gaussian vector with the exact covariance
    of fBm observed with white localisation noise: per axis ``Var(X(t) - X(s)) = 2 K |t - s|^alpha``
    (2-D MSD ``4 K t^alpha``) plus ``sigma^2`` on every position. ``K`` is profiled out in closed
    form; ``alpha`` and ``sigma^2 / K`` are found by a compiled Nelder-Mead search. Without frame
    gaps the step covariance is Toeplitz and the likelihood costs O(n^2) (Durbin-Levinson);
    frame gaps enter the covariance exactly (Cholesky, O(n^3)), so a track with gaps is fitted
    on its longest gap-free stretch when that holds at least half of its points (or
    ``max_points``), else on its first ``max_gapped_points`` localisations. Much less variable
    than a fit of the time-averaged MSD for short tracks (cf. Weiss, PRE 88, 010101, 2013;
    Lanoiselée et al., J Phys A 2018 for likelihood-based alpha).

    Parameters
    ----------
    frames : ndarray of int
        Frame numbers, ascending.
    x, y : ndarray
        Positions (any unit; ``K`` and ``sigma`` come out in that unit per frame^alpha).
    max_points : int
        At most this many consecutive localisations are used.
    max_gapped_points : int
        At most this many when they include frame gaps (the cost grows as n^3).

    Returns
    -------
    K : float
        Generalised diffusion coefficient, unit^2 / frame^alpha.
    alpha : float
        Anomalous exponent in [0.01, 1.99].
    sigma : float
        Static localisation error, unit.
    """
    t = np.asarray(frames, float)
    xy = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    gapless = bool(np.all(np.diff(t[:max_points]) == 1))
    if not gapless:
        cut = np.flatnonzero(np.diff(t) != 1) + 1
        starts, ends = np.r_[0, cut], np.r_[cut, t.size]
        k = int(np.argmax(ends - starts))
        if ends[k] - starts[k] >= min(max_points, 0.5 * t.size):
            t, xy, gapless = t[starts[k] : ends[k]], xy[starts[k] : ends[k]], True
    t = t[: max_points if gapless else max_gapped_points]
    d = np.diff(xy[: t.size], axis=0)
    m = len(d)
    if m < 3:
        return np.nan, np.nan, np.nan
    scale = float(np.mean(d * d)) or 1.0
    d = np.ascontiguousarray(d / np.sqrt(scale))
    alpha, log_lam = _fbm_fit(t, d, gapless)
    K = _fbm_terms(alpha, log_lam, t, d, gapless)[1] / (2 * m) * scale
    return K / 2, float(alpha), float(np.sqrt(np.exp(log_lam) * K))


@njit(cache=True)
def _fbm_terms(alpha, log_lam, t, d, gapless):  # pragma: no cover - compiled
    """log det and quadratic form (both axes) of the fBm + white-noise step covariance in units
    of K (the per-axis variance of a one-frame fBm step), with ``lambda = sigma^2 / K``."""
    m = d.shape[0]
    lam = math.exp(log_lam)
    logdet, quad = 0.0, 0.0
    if gapless:
        # Toeplitz step covariance: Durbin-Levinson recursion, O(m^2)
        r = np.empty(m)
        for k in range(m):
            r[k] = 0.5 * ((k + 1.0) ** alpha + abs(k - 1.0) ** alpha - 2.0 * float(k) ** alpha)
        r[0] += 2.0 * lam
        if m > 1:
            r[1] -= lam
        phi = np.zeros(m)
        old = np.zeros(m)
        v = r[0]
        logdet = math.log(v)
        quad = (d[0, 0] ** 2 + d[0, 1] ** 2) / v
        for tt in range(1, m):
            acc = r[tt]
            for j in range(1, tt):
                acc -= phi[j] * r[tt - j]
            kap = acc / v
            for j in range(1, tt):
                old[j] = phi[j]
            for j in range(1, tt):
                phi[j] = old[j] - kap * old[tt - j]
            phi[tt] = kap
            v *= 1.0 - kap * kap
            if v <= 0.0:
                return np.inf, np.inf
            ex, ey = d[tt, 0], d[tt, 1]
            for j in range(1, tt + 1):
                ex -= phi[j] * d[tt - j, 0]
                ey -= phi[j] * d[tt - j, 1]
            logdet += math.log(v)
            quad += (ex * ex + ey * ey) / v
    else:
        # frame gaps: general step covariance from a table of |frame difference|^alpha, Cholesky
        span = int(t[-1] - t[0]) + 1
        pw = np.empty(span + 1)
        for k in range(span + 1):
            pw[k] = float(k) ** alpha
        S = np.empty((m, m))
        for i in range(m):
            a0, a1 = int(t[i] - t[0]), int(t[i + 1] - t[0])
            for j in range(i + 1):
                b0, b1 = int(t[j] - t[0]), int(t[j + 1] - t[0])
                S[i, j] = 0.5 * (
                    pw[abs(a1 - b0)] + pw[abs(a0 - b1)] - pw[abs(a1 - b1)] - pw[abs(a0 - b0)]
                )
            S[i, i] += 2.0 * lam
            if i > 0:
                S[i, i - 1] -= lam
        zx = np.empty(m)
        zy = np.empty(m)
        for i in range(m):
            for j in range(i + 1):
                acc = S[i, j]
                for k in range(j):
                    acc -= S[i, k] * S[j, k]
                if j == i:
                    if acc <= 0.0:
                        return np.inf, np.inf
                    S[i, i] = math.sqrt(acc)
                else:
                    S[i, j] = acc / S[j, j]
            ax, ay = d[i, 0], d[i, 1]
            for k in range(i):
                ax -= S[i, k] * zx[k]
                ay -= S[i, k] * zy[k]
            zx[i] = ax / S[i, i]
            zy[i] = ay / S[i, i]
            logdet += 2.0 * math.log(S[i, i])
            quad += zx[i] * zx[i] + zy[i] * zy[i]
    return logdet, quad


@njit(cache=True)
def _fbm_nll(alpha, log_lam, t, d, gapless):  # pragma: no cover - compiled
    """-2 log likelihood per axis (up to constants) of the steps ``d`` with K profiled out."""
    logdet, quad = _fbm_terms(alpha, log_lam, t, d, gapless)
    if not quad < np.inf:
        return 1e300
    return logdet + d.shape[0] * math.log(max(quad / (2.0 * d.shape[0]), 1e-300))


@njit(cache=True)
def _fbm_fit(t, d, gapless):  # pragma: no cover - compiled
    """Nelder-Mead minimisation of :func:`_fbm_nll` over (alpha, log lambda) in the box
    [0.01, 1.99] x [-12, 6]; returns alpha, log lambda."""
    lo0, hi0, lo1, hi1 = 0.01, 1.99, -12.0, 6.0
    P = np.array([[1.0, math.log(0.1)], [1.3, math.log(0.1)], [1.0, math.log(0.1) + 1.5]])
    f = np.empty(3)
    for k in range(3):
        f[k] = _fbm_nll(P[k, 0], P[k, 1], t, d, gapless)
    for _ in range(200):
        order = np.argsort(f)
        P, f = P[order], f[order]
        if (
            abs(f[2] - f[0]) <= 1e-8 * (abs(f[0]) + 1.0)
            and abs(P[2, 0] - P[0, 0]) + abs(P[1, 0] - P[0, 0]) < 1e-3
        ):
            break
        c0 = 0.5 * (P[0, 0] + P[1, 0])
        c1 = 0.5 * (P[0, 1] + P[1, 1])
        # reflection, expansion, contraction, shrink (points clipped to the box)
        x0 = min(max(c0 + (c0 - P[2, 0]), lo0), hi0)
        x1 = min(max(c1 + (c1 - P[2, 1]), lo1), hi1)
        fr = _fbm_nll(x0, x1, t, d, gapless)
        if fr < f[0]:
            e0 = min(max(c0 + 2.0 * (c0 - P[2, 0]), lo0), hi0)
            e1 = min(max(c1 + 2.0 * (c1 - P[2, 1]), lo1), hi1)
            fe = _fbm_nll(e0, e1, t, d, gapless)
            if fe < fr:
                P[2, 0], P[2, 1], f[2] = e0, e1, fe
            else:
                P[2, 0], P[2, 1], f[2] = x0, x1, fr
        elif fr < f[1]:
            P[2, 0], P[2, 1], f[2] = x0, x1, fr
        else:
            k0 = c0 + 0.5 * (P[2, 0] - c0)
            k1 = c1 + 0.5 * (P[2, 1] - c1)
            fk = _fbm_nll(k0, k1, t, d, gapless)
            if fk < f[2]:
                P[2, 0], P[2, 1], f[2] = k0, k1, fk
            else:
                for k in (1, 2):
                    P[k, 0] = P[0, 0] + 0.5 * (P[k, 0] - P[0, 0])
                    P[k, 1] = P[0, 1] + 0.5 * (P[k, 1] - P[0, 1])
                    f[k] = _fbm_nll(P[k, 0], P[k, 1], t, d, gapless)
    k = int(np.argmin(f))
    return P[k, 0], P[k, 1]
