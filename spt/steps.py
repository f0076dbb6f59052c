"""Step-size analysis: steps, speeds and turning angles of tracks, and mixture fits of step lengths.

Owns the per-step table (gap-aware: a step spans however many frames separate two localisations),
per-track straightness / turning-angle features and the Rayleigh-mixture fit that counts mobile
populations and gives their D and fractions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spt.errors import SptInputError
from spt.msd import _check_tracks, _check_units

__all__ = [
    "StepMixture",
    "fit_step_mixture",
    "step_features",
    "step_table",
    "summarize_steps",
]

STEP_COLUMNS = (
    "particle",
    "frame",
    "n_frames",
    "dx_um",
    "dy_um",
    "step_um",
    "speed_um_s",
    "turn_angle_rad",
)
FEATURE_COLUMNS = (
    "particle",
    "n_steps",
    "mean_speed_um_s",
    "median_speed_um_s",
    "net_speed_um_s",
    "straightness",
    "mean_cos_turn",
)


def _empty(
    columns: tuple[str, ...], ints: tuple[str, ...] = ("particle", "frame", "n_frames", "n_steps")
) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ints else float) for c in columns})


def step_table(
    tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> pd.DataFrame:
    """One row per step between consecutive localisations of a track.

    Parameters
    ----------
    tracks : DataFrame
        ``frame, x, y, particle`` (pixels); frames may have gaps.
    pixel_size_um, frame_interval_s : float
        Pixel size (um) and frame interval (s).

    Returns
    -------
    DataFrame
        ``particle, frame`` (frame where the step ends), ``n_frames`` (frames spanned, > 1 over a
        blinking gap), ``dx_um, dy_um, step_um``, ``speed_um_s = step_um / (n_frames dt)`` and
        ``turn_angle_rad`` (signed angle in (-pi, pi] between this step and the previous one;
        NaN for the first step of a track and after a zero-length step).
    """
    _check_tracks(tracks)
    _check_units(pixel_size_um, frame_interval_s)
    if len(tracks) == 0:
        return _empty(STEP_COLUMNS)
    t = tracks.sort_values(["particle", "frame"], kind="stable")
    pid = t["particle"].to_numpy()
    fr = t["frame"].to_numpy(np.int64)
    xy = t[["x", "y"]].to_numpy(float) * pixel_size_um
    same = pid[1:] == pid[:-1]
    d = (xy[1:] - xy[:-1])[same]
    nf = (fr[1:] - fr[:-1])[same]
    if np.any(nf <= 0):
        raise SptInputError("tracks", "a particle has two localisations in the same frame")
    step = np.hypot(d[:, 0], d[:, 1])
    ang = np.arctan2(d[:, 1], d[:, 0])
    p_step = pid[1:][same]
    turn = np.full(step.size, np.nan)
    if step.size > 1:
        prev_ok = (p_step[1:] == p_step[:-1]) & (step[1:] > 0) & (step[:-1] > 0)
        dtheta = np.angle(np.exp(1j * (ang[1:] - ang[:-1])))
        turn[1:] = np.where(prev_ok, dtheta, np.nan)
    return pd.DataFrame(
        {
            "particle": p_step.astype(np.int64),
            "frame": fr[1:][same],
            "n_frames": nf.astype(np.int64),
            "dx_um": d[:, 0],
            "dy_um": d[:, 1],
            "step_um": step,
            "speed_um_s": step / (nf * frame_interval_s),
            "turn_angle_rad": turn,
        }
    )


def step_features(
    tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> pd.DataFrame:
    """Per-track speed, straightness and turning-angle features.

    ``straightness`` is net displacement over path length (1 for a straight run, ~0 for
    diffusion); ``mean_cos_turn`` is the mean cosine of the turning angle (persistence: ~1 for a
    run, ~0 for Brownian motion, < 0 when localisation noise or confinement dominates);
    ``net_speed_um_s`` is net displacement over elapsed time.
    """
    steps = step_table(tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s)
    if steps.empty:
        return _empty(FEATURE_COLUMNS)
    rows = []
    for pid, g in steps.groupby("particle", sort=True):
        path = float(g["step_um"].sum())
        net = float(np.hypot(g["dx_um"].sum(), g["dy_um"].sum()))
        cos = np.cos(g["turn_angle_rad"].dropna().to_numpy())
        rows.append(
            {
                "particle": int(pid),
                "n_steps": len(g),
                "mean_speed_um_s": float(g["speed_um_s"].mean()),
                "median_speed_um_s": float(g["speed_um_s"].median()),
                "net_speed_um_s": net / (float(g["n_frames"].sum()) * frame_interval_s),
                "straightness": net / path if path > 0 else 0.0,
                "mean_cos_turn": float(cos.mean()) if cos.size else 0.0,
            }
        )
    return pd.DataFrame(rows, columns=list(FEATURE_COLUMNS))


def summarize_steps(steps: pd.DataFrame, by: str = "state") -> pd.DataFrame:
    """Step-length and speed distribution summary per group (e.g. per ``state`` or ``particle``).

    ``steps`` is a :func:`step_table` with a ``by`` column added (e.g. merged from segmented
    tracks). Returns ``by, n_steps, mean/median/sd/p90 of speed_um_s, median step_um``.
    """
    cols = [
        by,
        "n_steps",
        "mean_speed_um_s",
        "median_speed_um_s",
        "sd_speed_um_s",
        "p90_speed_um_s",
        "median_step_um",
    ]
    if steps.empty or by not in steps.columns:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="int64" if c == "n_steps" else object if c == by else float)
                for c in cols
            }
        )
    g = steps.groupby(by, sort=True)
    out = pd.DataFrame(
        {
            "n_steps": g.size(),
            "mean_speed_um_s": g["speed_um_s"].mean(),
            "median_speed_um_s": g["speed_um_s"].median(),
            "sd_speed_um_s": g["speed_um_s"].std(ddof=0),
            "p90_speed_um_s": g["speed_um_s"].quantile(0.9),
            "median_step_um": g["step_um"].median(),
        }
    )
    return out.reset_index()[cols]


@dataclass(frozen=True)
class StepMixture:
    """Rayleigh mixture fitted to single-frame 2-D step lengths.

    Attributes
    ----------
    n_components : int
        Number of populations chosen by BIC.
    D_um2_s : tuple of float
        Apparent diffusion coefficient of each population, ``(s2 - 2 sigma^2) / (2 dt)`` per axis
        with ``s2`` the fitted Rayleigh variance; ascending.
    fractions : tuple of float
        Fraction of steps in each population.
    variances_um2 : tuple of float
        Fitted Rayleigh variance parameters (per axis, um^2).
    bic : float
        BIC of the chosen mixture.
    """

    n_components: int
    D_um2_s: tuple[float, ...]
    fractions: tuple[float, ...]
    variances_um2: tuple[float, ...]
    bic: float


def _rayleigh_em(r: np.ndarray, k: int, n_iter: int = 300) -> tuple[np.ndarray, np.ndarray, float]:
    q = np.quantile(r**2, (np.arange(k) + 0.5) / k) / 2
    s2 = np.maximum(q, np.mean(r**2) * 1e-4)
    w = np.full(k, 1.0 / k)
    r2 = r**2
    ll_old = -np.inf
    for _ in range(n_iter):
        logp = np.log(w) + np.log(r)[:, None] - np.log(s2) - r2[:, None] / (2 * s2)
        mx = logp.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(logp - mx).sum(axis=1))
        resp = np.exp(logp - lse[:, None])
        nk = resp.sum(axis=0) + 1e-12
        w = nk / nk.sum()
        s2 = np.maximum((resp * r2[:, None]).sum(axis=0) / (2 * nk), np.mean(r2) * 1e-6)
        ll = float(lse.sum())
        if ll - ll_old < 1e-8 * abs(ll):
            break
        ll_old = ll
    order = np.argsort(s2)
    return w[order], s2[order], ll


def fit_step_mixture(
    step_um: np.ndarray,
    *,
    frame_interval_s: float,
    sigma_um: float = 0.0,
    max_components: int = 3,
) -> StepMixture:
    """Fit a mixture of Rayleigh distributions to single-frame step lengths; choose k by BIC.

    A 2-D Brownian population with coefficient D observed every ``dt`` with static error sigma
    has Rayleigh-distributed step lengths with per-axis variance ``2 D dt + 2 sigma^2`` (motion
    blur ignored); see e.g. Schütz, Schindler & Schmidt, Biophys J 1997 for the mixture approach.

    Parameters
    ----------
    step_um : ndarray
        Step lengths (um) over one frame each (take ``step_table(...).query("n_frames == 1")``).
    frame_interval_s : float
        Frame interval (s).
    sigma_um : float
        Localisation error (um) subtracted when converting variances to D.
    max_components : int
        Largest number of populations tried.
    """
    r = np.asarray(step_um, float)
    r = r[np.isfinite(r) & (r > 0)]
    if r.size < 3 * max(1, max_components) or max_components < 1:
        if r.size == 0:
            return StepMixture(0, (), (), (), np.inf)
        max_components = 1
    best: StepMixture | None = None
    for k in range(1, max_components + 1):
        w, s2, ll = _rayleigh_em(r, k)
        bic = -2 * ll + (2 * k - 1) * np.log(r.size)
        if best is None or bic < best.bic:
            D = tuple(float(max(v - 2 * sigma_um**2, 0.0) / (2 * frame_interval_s)) for v in s2)
            best = StepMixture(
                k, D, tuple(float(x) for x in w), tuple(float(x) for x in s2), float(bic)
            )
    return best  # type: ignore[return-value]
