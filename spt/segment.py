"""Motion-state segmentation: change points and a motion state per point and per segment.

Owns :func:`segment_tracks`, which cuts each track where its local motion model changes
(penalised likelihood of the step vectors) and labels every segment ``immobile``, ``confined``,
``free`` or ``directed`` with its D, alpha, net speed and confinement radius; and
:func:`run_stop_summary`, the per-track stop-and-go summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit

from spt.errors import SptInputError
from spt.msd import fit_fbm
from spt.schema import SEGMENT_COLUMNS

__all__ = [
    "RUN_STOP_COLUMNS",
    "SEGMENT_TABLE_COLUMNS",
    "SegmentConfig",
    "changepoints",
    "pool_confinement",
    "run_stop_summary",
    "segment_tracks",
]

#: Columns of the segments table returned by :func:`segment_tracks`, in order: those of
#: :data:`spt.schema.SEGMENT_COLUMNS` but ``stage`` (added by the stage classification), then more.
SEGMENT_TABLE_COLUMNS: tuple[str, ...] = (
    *(c for c in SEGMENT_COLUMNS if c != "stage"),
    "confinement_radius_um",
    "motion",
    "duration_s",
    "net_displacement_um",
    "drift_chi2",
    "spread_ratio",
    "disk_radius_um",
)
#: Columns of :func:`run_stop_summary`.
RUN_STOP_COLUMNS: tuple[str, ...] = (
    "particle",
    "n_runs",
    "n_stops",
    "run_time_s",
    "stop_time_s",
    "run_fraction",
    "mean_run_duration_s",
    "mean_stop_duration_s",
    "mean_run_speed_um_s",
    "median_run_speed_um_s",
    "max_run_speed_um_s",
)
_INT_COLUMNS = ("particle", "segment", "start_frame", "end_frame", "n_points", "n_runs", "n_stops")
_STR_COLUMNS = ("state", "motion")


@dataclass(frozen=True)
class SegmentConfig:
    """Parameters of motion-state segmentation (:func:`segment_tracks`).

    Attributes
    ----------
    min_segment_frames : int
        Shortest segment, in localisations. Shorter stretches are not split off.
    changepoint_penalty : float
        Multiplier of the BIC penalty ``5 log(2 m)`` (m steps) that each segment pays in -2 log
        likelihood. Larger gives fewer change points.
    stop_go_penalty : float
        Penalty per change point, times ``log(2 m)`` (m points), when a stretch of stops and
        runs is re-cut with the continuous stop-and-go model (a run goes straight from one stop
        to the next, so a change point adds no free parameter beyond its time and a stop's
        position). Larger gives fewer, longer runs and stops.
    directed_min_chi2 : float
        A segment is ``directed`` when its net displacement is this many times (chi^2 with 2
        degrees of freedom) the variance expected from its own diffusion and localisation noise...
    directed_min_speed_um_s : float
        ...and its net speed is at least this (um/s).
    directed_min_alpha : float
        A segment whose MSD exponent is at least this is also ``directed`` (ballistic motion
        without a constant drift, as in the AnDi "directed" state).
    immobile_max_radius_um : float
        A non-directed segment whose noise-corrected spread (disk radius sqrt(2) * radius of
        gyration, um) is at most this is ``immobile``.
    immobile_max_D_um2_s : float
        ...or whose short-time D (um^2/s) is at most this.
    confined_max_spread_ratio : float
        A non-directed, non-immobile segment is ``confined`` when its noise-corrected squared
        radius of gyration is below this fraction of the value free diffusion with its short-time D
        would reach over the same duration (``2 D T / 3``)...
    confined_weak_spread_ratio : float
        ...or below this fraction while its alpha is below ``confined_max_alpha``; otherwise
        ``free``.
    confined_max_alpha : float
        See ``confined_weak_spread_ratio``; 0 turns that rule off (e.g. for data where
        sub-diffusion without walls counts as free, as in AnDi).
    blur_r : float
        Motion-blur coefficient R of the camera (1/6: exposure over the whole frame; 0: very
        short exposure). Used to separate localisation noise from diffusion.
    pool_D_factor : float
        Confined vs free is decided per population of segments (see :func:`pool_confinement`):
        segments of the whole table whose short-time D is within this factor of each other form
        a population; <= 1 turns population decisions off (each segment on its own spread).
    pool_min_points : int
        Segments shorter than this (points) keep their own decision and join no population.
    pool_confined_max_ratio : float
        A population is confined when the median spread ratio (noise-corrected squared radius
        of gyration over ``2 D T / 3``; mean 1 for free diffusion) of its segments is below this.
    pool_confined_strong_ratio : float
        In a free population, a segment is still ``confined`` when its own spread ratio is
        below this (about the 0.5 % quantile of free diffusion).
    """

    min_segment_frames: int = 6
    changepoint_penalty: float = 0.85
    stop_go_penalty: float = 0.65
    directed_min_chi2: float = 30.0
    directed_min_speed_um_s: float = 0.05
    directed_min_alpha: float = 1.8
    immobile_max_radius_um: float = 0.05
    immobile_max_D_um2_s: float = 0.003
    confined_max_spread_ratio: float = 0.3
    confined_weak_spread_ratio: float = 0.7
    confined_max_alpha: float = 0.8
    blur_r: float = 1 / 6
    pool_D_factor: float = 1.5
    pool_min_points: int = 30
    pool_confined_max_ratio: float = 0.5
    pool_confined_strong_ratio: float = 0.2

    def __post_init__(self) -> None:
        if int(self.min_segment_frames) != self.min_segment_frames or self.min_segment_frames < 3:
            raise ValueError(
                f"min_segment_frames must be an integer >= 3, got {self.min_segment_frames!r}"
            )
        if int(self.pool_min_points) != self.pool_min_points or self.pool_min_points < 3:
            raise ValueError(
                f"pool_min_points must be an integer >= 3, got {self.pool_min_points!r}"
            )
        for name in (
            "changepoint_penalty",
            "stop_go_penalty",
            "directed_min_chi2",
            "directed_min_speed_um_s",
            "immobile_max_radius_um",
            "immobile_max_D_um2_s",
            "confined_max_spread_ratio",
            "confined_weak_spread_ratio",
            "confined_max_alpha",
            "pool_D_factor",
            "pool_confined_max_ratio",
            "pool_confined_strong_ratio",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if 1 / 6 < self.blur_r <= 0.1675:
            # 0.167 typed in a form or a TOML file means 1/6.
            object.__setattr__(self, "blur_r", 1 / 6)
        if not 0 <= self.blur_r <= 1 / 6:
            raise ValueError(f"blur_r must be in [0, 1/6], got {self.blur_r!r}")


# --------------------------------------------------------------------------- change points


class _Increments:
    """The steps of one track, with the likelihood of any stretch of them under an MA(1) model."""

    def __init__(self, frames: np.ndarray, xy: np.ndarray):
        d = np.diff(xy, axis=0)
        n = np.diff(frames).astype(float)
        self.d, self.n, self.m = d, n, len(n)
        self.c_d = np.concatenate([np.zeros((1, 2)), np.cumsum(d, axis=0)])
        self.c_n = np.concatenate([[0.0], np.cumsum(n)])
        scale = float(np.mean(np.sum(d * d, axis=1) / n)) / 2 if self.m else 1.0
        # floor on the per-axis step variance (px^2) so that noiseless input stays finite
        self.floor = max(scale * 1e-6, 1e-12)

    def drift(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Drift per frame (K, 2) of each stretch [a, b): net displacement over frames spanned."""
        N = self.c_n[b] - self.c_n[a]
        return (self.c_d[b] - self.c_d[a]) / N[:, None]

    def fit(
        self, a: np.ndarray, b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Maximum-likelihood MA(1) model of the steps of each stretch [a_k, b_k).

        Steps over ``n`` frames have mean ``mu n``, per-axis variance ``s2 (n + 2 rho (n - 1))``
        and covariance ``rho s2`` with the next step: the exact law of a diffusing, drifting
        particle seen with static localisation noise and motion blur (Berglund, PRE 2010), for
        which ``s2 = 2 D dt (1 - 2R) + 2 sigma^2`` and ``rho s2 = 2 D dt R - sigma^2``; a free
        ``rho`` also absorbs confinement and fBm (either sign) to first order. ``mu`` is the net
        displacement over the frames spanned (the exact GLS estimate when noise dominates), ``s2``
        is profiled out in closed form and ``rho`` is chosen on a grid; the likelihood is evaluated
        with a vectorised LDL^T (Thomas) recursion over all stretches and grid values at once.

        Returns
        -------
        mu : (K, 2) drift per frame; s2 : (K,); rho : (K,); cost : (K,) -2 log likelihood.
        """
        a = np.asarray(a, np.int64)
        b = np.asarray(b, np.int64)
        mu = self.drift(a, b)
        s2, rho, cost = _ma1_profile(self.d, self.n, a, b, mu, _RHO_GRID, self.floor)
        return mu, s2, rho, cost

    def noise_variance(self, window: int, blur_r: float) -> float:
        """Localisation variance sigma^2 (px^2, per axis) of the track: the median over windows of
        the covariance-based estimate ``sigma^2 = R q - c`` (Vestergaard et al., PRE 2014), with
        ``q = g0 + 2 g1`` and ``c = g1`` from one-frame steps (gaps skipped), drift removed."""
        unit = self.n == 1
        w = max(int(window), 20)
        ests = []
        for start in range(0, max(self.m - w // 2, 1), w):
            sl = slice(start, min(start + w, self.m))
            d, n, u = self.d[sl], self.n[sl], unit[sl]
            pair = u[1:] & u[:-1]
            if pair.sum() < 5:
                continue
            e = d - (d.sum(axis=0) / n.sum()) * n[:, None]
            g0 = float(np.mean(e[u] ** 2))
            g1 = float(np.mean((e[1:] * e[:-1])[pair]))
            ests.append(blur_r * (g0 + 2 * g1) - g1)
        if not ests:
            return self.floor
        return max(float(np.median(ests)), self.floor)

    def fit_noise(
        self, a: np.ndarray, b: np.ndarray, sigma2: float, blur_r: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`fit` with the localisation variance fixed to the track's ``sigma2``.

        Steps over ``n`` frames: mean ``mu n``, per-axis variance ``q (n - 2R) + 2 sigma^2`` and
        covariance ``q R - sigma^2`` with the next step (Berglund, PRE 82, 011917, 2010), with
        ``q = 2 D dt`` chosen on a grid. Returns mu (K, 2), q (K,), cost (K,).
        """
        a = np.asarray(a, np.int64)
        b = np.asarray(b, np.int64)
        mu = self.drift(a, b)
        q_ratio, cost = _ma1_fixed_noise(self.d, self.n, a, b, mu, _Q_GRID, sigma2, blur_r)
        return mu, q_ratio * sigma2, cost


# The two likelihoods below evaluate, for each stretch [a_k, b_k) and each grid value, the exact
# Gaussian likelihood of a tridiagonal (MA(1)) step covariance by an LDL^T (Thomas) recursion,
# and keep the best grid value. Compiled: this is the hot loop of segmentation.


@njit(cache=True, forceinline=True)
def _ldl_step(di, off, j, min_pivot, e0, e1, dprev, z0, z1, logdet, quad):  # pragma: no cover
    """One step of the LDL^T recursion of one stretch: the j-th step (from 0), with residual
    (e0, e1), variance di and covariance off with the step before. Returns the new pivot and
    forward-substituted residual and the log-determinant and quadratic form so far."""
    lk = off / dprev if j > 0 else 0.0
    dk = max(di - lk * off, min_pivot)
    nz0 = e0 - lk * z0
    nz1 = e1 - lk * z1
    return dk, nz0, nz1, logdet + math.log(dk), quad + (nz0 * nz0 + nz1 * nz1) / dk


@njit(cache=True)
def _ma1_profile(d, n, a, b, mu, rho_grid, floor):  # pragma: no cover - compiled
    """Free-rho MA(1) fit: returns s2 (K,), rho (K,), cost (K,) (see :meth:`_Increments.fit`)."""
    K, G, M = a.size, rho_grid.size, n.size
    s2_out = np.empty(K)
    rho_out = np.empty(K)
    cost_out = np.empty(K)
    const = 1.0 + math.log(2.0 * math.pi)
    for k in range(K):
        length = b[k] - a[k]
        m = float(max(length, 1))
        best = np.inf
        for g in range(G):
            rho = rho_grid[g]
            dprev, z0, z1, logdet, quad = 1.0, 0.0, 0.0, 0.0, 0.0
            for j in range(length):
                i = min(a[k] + j, M - 1)
                ni = n[i]
                e0 = d[i, 0] - mu[k, 0] * ni
                e1 = d[i, 1] - mu[k, 1] * ni
                di = ni + 2.0 * rho * (ni - 1.0)
                dprev, z0, z1, logdet, quad = _ldl_step(
                    di, rho, j, 1e-9, e0, e1, dprev, z0, z1, logdet, quad
                )
            s2 = max(quad / (2.0 * m), floor)
            cost = 2.0 * logdet + 2.0 * m * math.log(s2) + 2.0 * m * const
            if cost < best:
                best = cost
                s2_out[k] = s2
                rho_out[k] = rho
        cost_out[k] = best
    return s2_out, rho_out, cost_out


@njit(cache=True)
def _ma1_fixed_noise(d, n, a, b, mu, q_grid, sigma2, blur_r):  # pragma: no cover - compiled
    """MA(1) fit with fixed localisation variance: returns q/sigma2 (K,), cost (K,)."""
    K, G, M = a.size, q_grid.size, n.size
    q_out = np.empty(K)
    cost_out = np.empty(K)
    log2pi = math.log(2.0 * math.pi)
    for k in range(K):
        length = b[k] - a[k]
        best = np.inf
        for g in range(G):
            r = q_grid[g]
            off = sigma2 * (r * blur_r - 1.0)
            dprev, z0, z1, logdet, quad = 1.0, 0.0, 0.0, 0.0, 0.0
            for j in range(length):
                i = min(a[k] + j, M - 1)
                ni = n[i]
                e0 = d[i, 0] - mu[k, 0] * ni
                e1 = d[i, 1] - mu[k, 1] * ni
                di = sigma2 * (2.0 + r * (ni - 2.0 * blur_r))
                dprev, z0, z1, logdet, quad = _ldl_step(
                    di, off, j, 1e-12, e0, e1, dprev, z0, z1, logdet, quad
                )
            cost = 2.0 * logdet + quad + 2.0 * length * log2pi
            if cost < best:
                best = cost
                q_out[k] = r
        cost_out[k] = best
    return q_out, cost_out


# The LDL^T recursion of a tridiagonal step covariance, kept for every grid value g at once in
# ten arrays (the rows of one (10, G) array ``sums``): the reciprocal pivot and the forward-
# substituted x, y steps and frame counts of the latest step (inv, z0, z1, w), the product and
# accumulated log of the pivots (prod, logacc: the log-determinant; the product is folded into
# the log every 32 steps, cheaper than one log per step), and the weighted sums z'z, z'w (x, y)
# and w'w (szz, szw0, szw1, sww) from which the quadratic form follows for any drift. Shared by
# :func:`_fixed_noise_blocks` and :func:`_optimal_partition`; inlined by LLVM (forceinline: a
# call per step costs more than the step; numba's own inline="always" measured 15-25 % slower).


@njit(cache=True, forceinline=True)
def _ldl_reset(sums):  # pragma: no cover - compiled
    """Start an empty stretch: all sums 0, the pivot product (row 4) 1."""
    sums[:] = 0.0
    sums[4] = 1.0


@njit(cache=True, forceinline=True)
def _ldl_push(P, Q, x, off, d0, d1, ni, count, sums):  # pragma: no cover - compiled
    """Add one step (d0, d1) over ni frames for every grid value g: diagonal ``P[g] + Q[g] x``,
    covariance ``off[g]`` with the step before; ``count`` steps in the stretch with this one."""
    inv, z0, z1, w, prod, logacc, szz, szw0, szw1, sww = sums
    for g in range(off.size):
        o = off[g]
        lk = o * inv[g]
        dk = max(P[g] + Q[g] * x - lk * o, 1e-12)
        iv = 1.0 / dk
        a0 = d0 - lk * z0[g]
        a1 = d1 - lk * z1[g]
        aw = ni - lk * w[g]
        prod[g] *= dk
        szz[g] += (a0 * a0 + a1 * a1) * iv
        szw0[g] += a0 * aw * iv
        szw1[g] += a1 * aw * iv
        sww[g] += aw * aw * iv
        inv[g] = iv
        z0[g] = a0
        z1[g] = a1
        w[g] = aw
    if count % 32 == 0:
        for g in range(off.size):
            logacc[g] += math.log(prod[g])
            prod[g] = 1.0


@njit(cache=True, forceinline=True)
def _ldl_form(sums, g, mu0, mu1):  # pragma: no cover - compiled
    """Quadratic form and log-determinant of the stretch at grid value g, for drift (mu0, mu1)
    per frame."""
    prod, logacc, szz, szw0, szw1, sww = sums[4:]
    quad = szz[g] - 2.0 * (mu0 * szw0[g] + mu1 * szw1[g]) + (mu0 * mu0 + mu1 * mu1) * sww[g]
    return quad, logacc[g] + math.log(prod[g])


@njit(cache=True)
def _fixed_noise_blocks(d, n, nodes, q_grid, sigma2, blur_r):  # pragma: no cover - compiled
    """-2 log L of :meth:`_Increments.fit_noise` for every block of points [nodes[i], nodes[j])
    (its steps nodes[i] .. nodes[j] - 2), in one forward pass per start node: the drift enters
    the quadratic form through sums kept for every grid value (:func:`_ldl_push`, as in
    :func:`_optimal_partition`). Returns a (K, K) matrix, inf for j <= i."""
    K, G = nodes.size, q_grid.size
    out = np.full((K, K), np.inf)
    log2pi = math.log(2.0 * math.pi)
    # in units of the noise: steps / sigma, variances / sigma^2 (keeps the products in range);
    # per-axis variance 2 + q (n - 2R), covariance q R - 1 with the next step
    scale = 1.0 / math.sqrt(sigma2)
    log_s2 = math.log(sigma2)
    two = np.full(G, 2.0)
    off = np.empty(G)
    for g in range(G):
        off[g] = q_grid[g] * blur_r - 1.0
    sums = np.empty((10, G))
    last = nodes[K - 1] - 2
    for i in range(K - 1):
        a = nodes[i]
        _ldl_reset(sums)
        sd0, sd1, sn = 0.0, 0.0, 0.0
        j = i + 1
        for k in range(a, last + 1):
            ni = n[k]
            dx = d[k, 0] * scale
            dy = d[k, 1] * scale
            base = ni - 2.0 * blur_r
            _ldl_push(two, q_grid, base, off, dx, dy, ni, k - a + 1, sums)
            sd0 += dx
            sd1 += dy
            sn += ni
            while j < K and nodes[j] - 2 < k:
                j += 1
            if j < K and nodes[j] - 2 == k:
                mu0, mu1 = sd0 / sn, sd1 / sn
                length = k - a + 1
                best = np.inf
                for g in range(G):
                    quad, logdet = _ldl_form(sums, g, mu0, mu1)
                    cost = 2.0 * logdet + quad + 2.0 * length * (log2pi + log_s2)
                    if cost < best:
                        best = cost
                out[i, j] = best
    return out


# Ratios q / sigma^2 = 2 D dt / sigma^2 tried by fit_noise (0: immobile).
_Q_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 36)])

# Lag-1 step correlations tried; dense near -1/2, where static noise dominates the steps.
_RHO_GRID = np.array(
    [
        -0.499,
        -0.497,
        -0.493,
        -0.487,
        -0.477,
        -0.46,
        -0.44,
        -0.41,
        -0.37,
        -0.31,
        -0.23,
        -0.12,
        0.0,
        0.15,
        0.3,
        0.45,
    ]
)


@njit(cache=True)
def _stretch_cost(sums, g, k, mu0, mu1, floor):  # pragma: no cover
    """-2 log likelihood of a stretch of k steps at grid value g with drift mu (per frame), the
    scale s2 of the covariance profiled out."""
    quad, logdet = _ldl_form(sums, g, mu0, mu1)
    s2 = max(quad / (2.0 * k), floor)
    return 2.0 * logdet + 2.0 * k * (math.log(s2) + 1.0 + math.log(2.0 * math.pi))


@njit(cache=True)
def _optimal_partition(d, n, A, B, C, floor, L, pen, margin, max_len):  # pragma: no cover
    """Exact optimal partitioning of the steps (d, n) into stretches of L to ``max_len`` steps,
    each with its own MA(1) model, with PELT pruning (Killick et al., JASA 2012); returns the
    segment starts (step indices, ascending, without 0).

    A stretch's steps have mean ``mu n`` (mu: its net displacement per frame), per-axis variance
    ``s2 (A_g + B_g n)`` and covariance ``s2 C_g`` between neighbours, for the grid value g that
    fits best, with s2 profiled out (:meth:`_Increments.fit`: ``A = -2 rho, B = 1 + 2 rho,
    C = rho``). For each end
    b one backward LDL^T pass over the steps gives the cost of every stretch [i, b) at every grid
    value; the best g is followed along i by a local search on the grid (the profile is smooth
    in g and changes little from one i to the next).

    The cap ``max_len`` bounds the work at O(m max_len) for m steps; the pruning stays valid
    under it, since a start pruned at end b' is beaten by the later start b' at every later end.
    """
    m, G = n.size, A.size
    F = np.full(m + 1, np.inf)
    F[0] = -pen
    prev = np.zeros(m + 1, np.int64)
    pruned_at = np.full(m + 1, m + L + 1)  # end at which a start was found to be hopeless
    last = np.full(m + 1, np.inf)  # F[i] + C(i, b) of the latest end b
    sums = np.empty((10, G))
    lo = 0
    for b in range(L, m + 1):
        while lo < b and (pruned_at[lo] + L <= b or lo < b - max_len):
            lo += 1
        best, arg = np.inf, -1
        _ldl_reset(sums)
        gs = G // 2
        sd0, sd1, sn = 0.0, 0.0, 0.0
        for i in range(b - 1, lo - 1, -1):
            k = b - i
            ni = n[i]
            d0 = d[i, 0]
            d1 = d[i, 1]
            _ldl_push(A, B, ni, C, d0, d1, ni, k, sums)
            sd0 += d0
            sd1 += d1
            sn += ni
            if k < L or F[i] == np.inf or pruned_at[i] + L <= b:
                continue
            mu0, mu1 = sd0 / sn, sd1 / sn
            c = _stretch_cost(sums, gs, k, mu0, mu1, floor)
            for step in (-1, 1):
                while 0 <= gs + step < G:
                    c2 = _stretch_cost(sums, gs + step, k, mu0, mu1, floor)
                    if c2 >= c:
                        break
                    c, gs = c2, gs + step
            last[i] = F[i] + c
            if last[i] + pen < best:
                best, arg = last[i] + pen, i
        F[b], prev[b] = best, arg
        for i in range(lo, b - L + 1):
            if pruned_at[i] > m and last[i] > F[b] + margin:
                pruned_at[i] = b
    out = []
    j = prev[m]
    while j > 0:
        out.append(j)
        j = prev[j]
    res = np.empty(len(out), np.int64)
    for t in range(len(out)):
        res[t] = out[len(out) - 1 - t]
    return res


@njit(cache=True)
def _stretch_min_cost(d, n, A, B, C, floor, i, b):  # pragma: no cover - compiled
    """Cost of the stretch of steps [i, b) at its best grid value (:func:`_optimal_partition`)."""
    sums = np.empty((10, A.size))
    _ldl_reset(sums)
    sd0, sd1, sn = 0.0, 0.0, 0.0
    for j in range(b - 1, i - 1, -1):
        _ldl_push(A, B, n[j], C, d[j, 0], d[j, 1], n[j], b - j, sums)
        sd0 += d[j, 0]
        sd1 += d[j, 1]
        sn += n[j]
    best = np.inf
    for g in range(A.size):
        best = min(best, _stretch_cost(sums, g, b - i, sd0 / sn, sd1 / sn, floor))
    return best


def _merge_stretches(starts: np.ndarray, m: int, pen: float, cost: Callable) -> np.ndarray:
    """Merge neighbouring stretches while that lowers the penalised cost, the best merge first.

    A merge joins two or three neighbouring stretches (three: a short stretch between two
    others may pay for its two cuts only together). ``starts`` are segment starts (without 0) of
    ``m`` steps; ``cost(i, b)`` is the cost of the stretch [i, b). Returns the starts that remain.
    """
    bounds = [0, *(int(s) for s in starts), m]
    known: dict[tuple[int, int], float] = {}

    def c(a: int, b: int) -> float:
        if (a, b) not in known:
            known[a, b] = cost(a, b)
        return known[a, b]

    while len(bounds) > 2:
        best, cut = 0.0, (0, 0)
        for k in range(len(bounds) - 2):
            for span in (2, 3)[: len(bounds) - 1 - k - 1]:
                parts = sum(c(bounds[k + q], bounds[k + q + 1]) for q in range(span))
                gain = parts + (span - 1) * pen - c(bounds[k], bounds[k + span])
                if gain > best:
                    best, cut = gain, (k + 1, k + span)
        if best <= 0:
            break
        del bounds[cut[0] : cut[1]]
    return np.asarray(bounds[1:-1], np.int64)


# PELT keeps a start until it is this much (-2 log L) worse than the best: splitting a stretch
# need not lower an MA(1) cost exactly (the correlation across the cut is lost).
_PELT_MARGIN = 0.0

#: Longest stretch (steps) the optimal partitioning considers: the cost of a track of m steps is
#: O(m x this) instead of O(m^2) (a 3 000-point track without changes took 0.2 s). The
#: partition of a longer track is then completed by :func:`_merge_stretches`; tracks of up to
#: this many steps get the exact optimum.
_MAX_STRETCH_STEPS = 600


def changepoints(
    frames: np.ndarray,
    xy: np.ndarray,
    config: SegmentConfig = SegmentConfig(),
) -> np.ndarray:
    """Change points of one track, as indices of the localisations that start a new segment.

    Penalised-likelihood segmentation of the step vectors: every stretch of steps gets its own
    MA(1) model (:meth:`_Increments.fit`: drift, step variance and lag-1 correlation), and the
    partition into stretches of at least ``min_segment_frames - 1`` steps that minimises the
    total -2 log likelihood plus a BIC penalty per segment is found exactly by optimal
    partitioning (dynamic programming; Jackson et al., IEEE SPL 2005) with PELT pruning (Killick
    et al., JASA 2012), in one compiled pass per end point (O(n^2) at worst: a track without
    changes; PELT drops the starts that can no longer win).

    Parameters
    ----------
    frames : ndarray of int
        Frame numbers, ascending.
    xy : ndarray, shape (n, 2)
        Positions (pixels).
    config : SegmentConfig

    Returns
    -------
    ndarray of int
        Sorted indices into ``frames`` (each in ``[1, n-1]``); empty when the track is one segment.
    """
    inc = _Increments(np.asarray(frames), np.asarray(xy, float))
    L = max(int(config.min_segment_frames) - 1, 2)
    if inc.m < 2 * L:
        return np.zeros(0, np.int64)
    pen = config.changepoint_penalty * 5 * np.log(2 * inc.m)
    # Increment k joins localisations k and k+1; the new motion starts at localisation k.
    d = np.ascontiguousarray(inc.d)
    A, B, C = -2.0 * _RHO_GRID, 1.0 + 2.0 * _RHO_GRID, _RHO_GRID
    starts = _optimal_partition(
        d, inc.n, A, B, C, inc.floor, L, pen, _PELT_MARGIN, _MAX_STRETCH_STEPS
    )
    if inc.m <= _MAX_STRETCH_STEPS:
        return starts
    return _merge_stretches(
        starts, inc.m, pen, lambda i, b: _stretch_min_cost(d, inc.n, A, B, C, inc.floor, i, b)
    )


def _linear_changepoints(
    t: np.ndarray, xy: np.ndarray, sigma2: float, L: int, pen: float
) -> tuple[list[int], float]:
    """Best partition of a path into straight pieces (constant velocity, no diffusion) in noise.

    Optimal partitioning (dynamic programming) with each piece fitted by least squares; with the
    localisation variance ``sigma2`` known, a piece of ``k`` points costs
    ``2 (k - 1) log(2 pi sigma2) + 2 log k + RSS / sigma2``, its -2 log likelihood written for
    its ``k - 1`` steps, so that it compares with :meth:`_Increments.fit_noise` (the step joining
    two pieces is charged as one step of pure noise). This is the exact model of stop-and-go
    motion: it resolves slow runs that a model with diffusion absorbs as a slightly larger D.

    Returns
    -------
    starts : list of int
        Indices of the points that start a new piece (each piece has >= L points).
    cost : float
        -2 log likelihood of the steps plus ``pen`` per change point.
    """
    # centred: the cumulative sums of x^2 lose all precision far from the origin
    xy = np.ascontiguousarray(xy - xy.mean(axis=0), float)
    return _linear_partition(t - t[0], xy, sigma2, min(L, len(t)), pen)


@njit(cache=True)
def _path_sums(t, xy):  # pragma: no cover - compiled
    """Cumulative sums (n + 1, 8) of 1, t, t^2, x, y, t x, t y, x^2 + y^2 along a path."""
    n = t.size
    c = np.zeros((n + 1, 8))
    for k in range(n):
        x, y, tk = xy[k, 0], xy[k, 1], t[k]
        c[k + 1, 0] = c[k, 0] + 1.0
        c[k + 1, 1] = c[k, 1] + tk
        c[k + 1, 2] = c[k, 2] + tk * tk
        c[k + 1, 3] = c[k, 3] + x
        c[k + 1, 4] = c[k, 4] + y
        c[k + 1, 5] = c[k, 5] + tk * x
        c[k + 1, 6] = c[k, 6] + tk * y
        c[k + 1, 7] = c[k, 7] + x * x + y * y
    return c


@njit(cache=True)
def _level_rss(c, i, e):  # pragma: no cover - compiled
    """Residual sum of squares of points [i, e) about their mean position (a stop)."""
    cnt = c[e, 0] - c[i, 0]
    sx = c[e, 3] - c[i, 3]
    sy = c[e, 4] - c[i, 4]
    return c[e, 7] - c[i, 7] - (sx * sx + sy * sy) / cnt


@njit(cache=True)
def _line_rss(c, i, e):  # pragma: no cover - compiled
    """Residual sum of squares of the least-squares straight line through points [i, e),
    from the cumulative sums ``c`` of :func:`_path_sums`."""
    cnt = c[e, 0] - c[i, 0]
    st = c[e, 1] - c[i, 1]
    sx = c[e, 3] - c[i, 3]
    sy = c[e, 4] - c[i, 4]
    ctt = c[e, 2] - c[i, 2] - st * st / cnt
    ctx = c[e, 5] - c[i, 5] - st * sx / cnt
    cty = c[e, 6] - c[i, 6] - st * sy / cnt
    rss = _level_rss(c, i, e)
    if ctt > 0:
        rss -= (ctx * ctx + cty * cty) / ctt
    return rss


@njit(cache=True)
def _linear_partition(t, xy, sigma2, L, pen):  # pragma: no cover - compiled
    """Optimal partitioning for :func:`_linear_changepoints`; O(1) per piece from cumulative
    sums of t, t^2, x, t x and x^2."""
    n = t.size
    c = _path_sums(t, xy)
    log2pis = math.log(2.0 * math.pi * sigma2)
    # a later piece also pays for the step that joins it to the previous one (pure noise)
    join = pen + 2.0 * (math.log(4.0 * math.pi * sigma2) + 1.0)
    F = np.full(n + 1, np.inf)
    F[0] = -join
    prev = np.zeros(n + 1, np.int64)
    for e in range(L, n + 1):
        for i in range(0, e - L + 1):
            if F[i] == np.inf:
                continue
            cnt = c[e, 0] - c[i, 0]
            rss = _line_rss(c, i, e)
            cost = max(rss, 0.0) / sigma2 + 2.0 * (cnt - 1.0) * log2pis + 2.0 * math.log(cnt)
            tot = F[i] + cost + join
            if tot < F[e]:
                F[e], prev[e] = tot, i
    cps = []
    e = n
    while e > 0:
        e = prev[e]
        if e > 0:
            cps.append(e)
    cps.sort()
    return cps, F[n]


def _stops_and_runs(
    frames: np.ndarray, xy: np.ndarray, bounds: list[int], sigma2: float, chi2_min: float
) -> bool:
    """True when the straight pieces ``bounds`` include both a stop and a run: the slope of a
    piece is significant (chi^2, 2 dof, >= chi2_min) for a run and not for a stop."""
    chi2 = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        t = frames[a:b] - frames[a:b].mean()
        ctt = float(t @ t)
        v = t @ (xy[a:b] - xy[a:b].mean(axis=0)) / ctt
        chi2.append(float(v @ v) * ctt / sigma2)
    return min(chi2) < chi2_min <= max(chi2)


# --------------------------------------------------------------------------- segment description


@dataclass(frozen=True)
class _Units:
    pixel_size_um: float
    frame_interval_s: float


def _describe(
    frames: np.ndarray,
    xy: np.ndarray,
    sigma2_px: float | None,
    cfg: SegmentConfig,
    u: _Units,
    directed: bool | None = None,
) -> dict:
    """Physical parameters and motion state of one segment (positions in px); ``directed``
    (when not None) replaces the segment's own test of directed motion."""
    px, dt = u.pixel_size_um, u.frame_interval_s
    n = len(frames)
    out = {
        "n_points": n,
        "duration_s": float(frames[-1] - frames[0]) * dt,
        "net_displacement_um": float(np.hypot(*(xy[-1] - xy[0]))) * px,
        "D_um2_s": np.nan,
        "alpha": np.nan,
        "speed_um_s": 0.0,
        "confinement_radius_um": np.nan,
        "drift_chi2": 0.0,
    }
    if n < 3:
        if n == 2:
            out["speed_um_s"] = out["net_displacement_um"] / max(out["duration_s"], dt)
        state = (
            "directed"
            if out["speed_um_s"] >= max(cfg.directed_min_speed_um_s, 1e-300)
            else "immobile"
        )
        if state == "immobile":
            out["D_um2_s"], out["alpha"] = 0.0, 0.0
        else:
            # One displacement: the only D it supports is d^2 / (4 t); no exponent can be fitted.
            out["D_um2_s"] = out["net_displacement_um"] ** 2 / (4 * max(out["duration_s"], dt))
            out["alpha"] = 1.0
        return {**out, "state": state}
    inc = _Increments(frames, xy)
    mu, s2, rho, _ = (v[0] for v in inc.fit(np.array([0]), np.array([inc.m])))
    c = rho * s2
    N = float(frames[-1] - frames[0])
    q = max(s2 + 2 * c, 0.0)  # 2 D dt per axis (covariance-based estimator, Vestergaard 2014)
    if sigma2_px is None:
        sigma2_px = max(cfg.blur_r * q - c, 0.0)
    D = q / (2 * dt) * px**2
    # Net speed: least-squares line through the positions (robust to the end points' noise).
    t = frames - frames.mean()
    v = (t @ (xy - xy.mean(axis=0))) / max(float(t @ t), 1e-300)  # px / frame
    speed = float(np.hypot(*v)) * px / dt
    var_net = N * q + 2 * sigma2_px + inc.floor
    chi2 = float(np.sum((mu * N) ** 2) / var_net)
    # Spread: radius of gyration around the mean, noise-corrected; disk radius = sqrt(2) Rg.
    rg2 = float(np.mean(np.sum((xy - xy.mean(axis=0)) ** 2, axis=1))) - 2 * sigma2_px
    rg2 = max(rg2, 0.0)
    radius_um = float(np.sqrt(2 * rg2)) * px
    # alpha: exact likelihood of fBm + localisation noise (far less variable than an MSD fit)
    _, alpha, _ = fit_fbm(frames, xy[:, 0], xy[:, 1])
    if directed is None:
        directed = speed >= cfg.directed_min_speed_um_s and (
            chi2 >= cfg.directed_min_chi2
            or (
                np.isfinite(alpha)
                and alpha >= cfg.directed_min_alpha
                and chi2 >= cfg.directed_min_chi2 / 3
            )
        )
    if directed:
        state = "directed"
    elif radius_um <= cfg.immobile_max_radius_um or D <= cfg.immobile_max_D_um2_s:
        state = "immobile"
    elif _confined(rg2, q, N, alpha, cfg):
        state = "confined"
    else:
        state = "free"
    out.update(
        D_um2_s=D, alpha=alpha if np.isfinite(alpha) else 1.0, speed_um_s=speed, drift_chi2=chi2
    )
    if state == "immobile":
        out.update(D_um2_s=0.0, alpha=0.0, confinement_radius_um=radius_um)
    elif state == "confined":
        out["confinement_radius_um"] = radius_um
    spread = rg2 / (q * N / 3) if q * N > 0 else np.inf
    return {**out, "state": state, "spread_ratio": spread, "disk_radius_um": radius_um}


#: Standard deviation of the spread ratio of free 2-D diffusion (its mean is 1; simulated).
_FREE_SPREAD_SD = 0.63


def pool_confinement(
    tracks: pd.DataFrame, segments: pd.DataFrame, config: SegmentConfig = SegmentConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decide confined vs free for populations of segments rather than one segment at a time.

    A single segment of confined diffusion that lasts only a few relaxation times spreads
    almost as far as free diffusion would (the noise-corrected spread ratio of free diffusion
    has mean 1 and a 5 % quantile of 0.33), so the per-segment rule misses many of them. Here
    every free or confined segment of at least ``config.pool_min_points`` points is compared with
    its population: the segments of the whole table whose short-time D lies within a factor
    ``config.pool_D_factor`` of its own (itself included; at least 3). When the median spread
    ratio of that population is below ``config.pool_confined_max_ratio`` and its mean is
    significantly below 1 (by 2 standard errors of free diffusion, sd 0.63 per segment) the
    population is confined and a member is ``confined`` unless its own ratio reaches 1 (the
    free-diffusion mean); otherwise the population is free and a member is ``confined`` only
    when its own ratio is below ``config.pool_confined_strong_ratio`` (about the 0.5 % quantile
    of free diffusion). Pooling evidence over trajectories follows the ensemble view of
    confinement analysis (Saxton & Jacobson, Annu. Rev. Biophys. Biomol. Struct. 26, 373, 1997:
    single short trajectories cannot tell confinement from free diffusion reliably; populations
    can).

    :func:`segment_tracks` ends with this step; call it yourself on the concatenated output
    of :func:`segment_tracks` run on parts of a table with ``pool_D_factor=0`` (parallel
    segmentation), which gives the same result as one call on the whole table.

    Parameters
    ----------
    tracks, segments : DataFrame
        Output of :func:`segment_tracks` (``segments`` needs ``spread_ratio`` and
        ``disk_radius_um``).
    config : SegmentConfig

    Returns
    -------
    tracks, segments : DataFrame
        Copies with ``state`` (and ``motion``, ``confinement_radius_um``) updated.
    """
    if config.pool_D_factor <= 1 or segments.empty:
        return tracks, segments
    state = segments["state"].to_numpy(object)
    ratio = segments["spread_ratio"].to_numpy(float)
    D = segments["D_um2_s"].to_numpy(float)
    cand = np.flatnonzero(
        np.isin(state, ("free", "confined"))
        & (segments["n_points"].to_numpy() >= config.pool_min_points)
        & np.isfinite(ratio)
        & (D > 0)
    )
    if cand.size < 3:
        return tracks, segments
    log_d = np.log(D[cand])
    new_state = state.copy()
    for k, i in enumerate(cand):
        pop = ratio[cand][np.abs(log_d - log_d[k]) <= np.log(config.pool_D_factor)]
        if pop.size < 3:
            continue
        significant = np.mean(pop) < 1 - 2 * _FREE_SPREAD_SD / np.sqrt(pop.size)
        if significant and np.median(pop) < config.pool_confined_max_ratio:
            confined = ratio[i] < 1.0
        else:
            confined = ratio[i] < config.pool_confined_strong_ratio
        new_state[i] = "confined" if confined else "free"
    changed = new_state != state
    if not changed.any():
        return tracks, segments
    segments = segments.copy()
    segments["state"] = new_state
    segments.loc[changed, "motion"] = np.where(new_state[changed] == "confined", "stop", "go")
    segments.loc[changed, "confinement_radius_um"] = np.where(
        new_state[changed] == "confined", segments.loc[changed, "disk_radius_um"], np.nan
    )
    key = pd.MultiIndex.from_frame(segments[["particle", "segment"]])
    lookup = pd.Series(new_state, index=key)
    tracks = tracks.copy()
    tracks["state"] = lookup.reindex(
        pd.MultiIndex.from_frame(tracks[["particle", "segment"]])
    ).to_numpy(object)
    return tracks, segments


def _confined(rg2: float, q: float, N: float, alpha: float, cfg: SegmentConfig) -> bool:
    """Confined rather than free: the noise-corrected spread ``rg2`` stays well below the
    ``q N / 3`` (px^2) that free diffusion with the segment's short-time D reaches in ``N``
    frames, or moderately below it together with a sub-diffusive alpha."""
    free_rg2 = q * N / 3
    return rg2 < cfg.confined_max_spread_ratio * free_rg2 or (
        rg2 < cfg.confined_weak_spread_ratio * free_rg2 and alpha < cfg.confined_max_alpha
    )


# --------------------------------------------------------------------------- public API


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: pd.Series(
                dtype="int64" if c in _INT_COLUMNS else object if c in _STR_COLUMNS else float
            )
            for c in columns
        }
    )


def _validate(tracks: pd.DataFrame, pixel_size_um: float, frame_interval_s: float) -> None:
    if not isinstance(tracks, pd.DataFrame):
        raise SptInputError("tracks", f"expected a pandas DataFrame, got {type(tracks).__name__}")
    missing = [c for c in ("frame", "x", "y", "particle") if c not in tracks.columns]
    if missing:
        raise SptInputError("tracks", f"missing column(s) {', '.join(missing)}")
    for col in ("frame", "x", "y", "particle"):
        if not pd.api.types.is_numeric_dtype(tracks[col]):
            raise SptInputError("tracks", f"column {col!r} is not numeric")
    if len(tracks) and not np.all(
        np.isfinite(tracks[["frame", "x", "y", "particle"]].to_numpy(float))
    ):
        raise SptInputError("tracks", "NaN or infinite values in frame, x, y or particle")
    if len(tracks) and tracks.duplicated(["particle", "frame"]).any():
        raise SptInputError("tracks", "a particle has two localisations in the same frame")
    for label, value in (("pixel_size_um", pixel_size_um), ("frame_interval_s", frame_interval_s)):
        if not (isinstance(value, (int, float, np.floating)) and np.isfinite(value) and value > 0):
            raise SptInputError(label, f"must be a positive number, got {value!r}")


def _segment_one(
    frames: np.ndarray, xy: np.ndarray, sigma2_px: float | None, cfg: SegmentConfig, u: _Units
) -> list[dict]:
    """Segments of one track (positions sorted by frame), each described by :func:`_describe`."""
    n = len(frames)
    if n <= 2:
        return [{**_describe(frames, xy, sigma2_px, cfg, u), "start": 0, "end": n}]
    inc = _Increments(frames, xy)
    L = max(int(cfg.min_segment_frames) - 1, 2)
    # Localisation variance of the stop-and-go models (px^2): the track's own covariance-based
    # estimate, or the reported error when larger (a Cramer-Rao error is a lower bound of the
    # real one; too small a noise makes confined diffusion look like stops and runs).
    s2 = inc.noise_variance(L, cfg.blur_r)
    if sigma2_px is not None:
        s2 = max(s2, sigma2_px)
    starts = [0, *changepoints(frames, xy, cfg).tolist()]
    # Pass 2: each stretch is cut with the piecewise-linear model (stops and constant-velocity
    # runs, no diffusion); its cuts are the nodes at which the stretch may then change between
    # diffusion and the continuous stop-and-go model (:func:`_mixed_cuts`): stop-and-go parts
    # replace diffusion where they are more likely after penalties (diffusion pays log(2m) for
    # its D).
    ends = [*starts[1:], n]
    refined = []
    pass2: set[int] = set()
    for s, e in zip(starts, ends, strict=True):
        refined.append(s)
        if 2 * cfg.min_segment_frames <= e - s <= 2000:
            pen = cfg.changepoint_penalty * 3 * np.log(2 * (e - s))
            cps, _ = _linear_changepoints(
                frames[s:e].astype(float), xy[s:e], s2, cfg.min_segment_frames, pen
            )
            nodes = [s, *(s + k for k in cps), e]
            if cps and _stops_and_runs(frames, xy, nodes, s2, cfg.directed_min_chi2):
                new_cuts = _mixed_cuts(frames, xy, inc, nodes, s2, cfg, pen, u)
                refined += new_cuts
                pass2 |= set(new_cuts)
    starts = refined
    ends = [*starts[1:], n]
    # A segment's steps run from its first point to the first point of the next segment.
    descs = [
        _describe(frames[s : e + 1], xy[s : e + 1], sigma2_px, cfg, u)
        for s, e in zip(starts, ends, strict=True)
    ]
    # neighbouring stops are one stop; so are neighbours of one diffusive state that only the
    # stop-and-go model of pass 2 cut apart
    out: list[dict] = []
    for d, s, e in zip(descs, starts, ends, strict=True):
        same = bool(out) and d["state"] == out[-1]["state"]
        if same and (d["state"] == "immobile" or (s in pass2 and d["state"] != "directed")):
            s0 = out[-1]["start"]
            out[-1] = {
                **_describe(frames[s0 : e + 1], xy[s0 : e + 1], sigma2_px, cfg, u),
                "start": s0,
                "end": e,
            }
        else:
            out.append({**d, "start": s, "end": e})
    return _stop_go_regions(frames, xy, out, inc, s2, sigma2_px, cfg, u)


def _mixed_cuts(
    frames: np.ndarray,
    xy: np.ndarray,
    inc: _Increments,
    nodes: list[int],
    s2: float,
    cfg: SegmentConfig,
    pen: float,
    u: _Units,
) -> list[int]:
    """Cuts of the stretch [nodes[0], nodes[-1]) into diffusive segments (between any two
    nodes) and stretches of the continuous stop-and-go model (cut anywhere), whichever explains
    the path best after penalties (:func:`_mixed_partition`). Returns the inner cuts, or none
    when the best explanation holds no run or no immobile stop."""
    a0 = nodes[0]
    m = nodes[-1] - a0
    L = int(cfg.min_segment_frames)
    nd = np.array(nodes, np.int64)
    diff = _fixed_noise_blocks(inc.d, inc.n, nd, _Q_GRID, s2, cfg.blur_r) + np.log(2 * m)
    t = frames[a0 : nodes[-1]].astype(float)
    pts = np.ascontiguousarray(xy[a0 : nodes[-1]] - xy[a0 : nodes[-1]].mean(axis=0))
    starts, kinds = _mixed_partition(
        t - t[0], pts, s2, L, pen, _STOP_LEVEL_POINTS, nd - a0, diff, pen, False, False
    )
    if not ((kinds == 1).any() and np.isin(kinds, (2, 3)).any()):
        return []
    # a stop-and-go explanation needs a stop that is immobile by the rule of :func:`_describe`
    # (noise-corrected disk radius or short-time D); without it, straight pieces are only a
    # better fit than Brownian motion for persistent or slow anomalous diffusion
    ends = [*starts[1:], m]
    for p, q, kind in zip(starts, ends, kinds, strict=True):
        if kind != 1:
            continue
        r = pts[p:q] - pts[p:q].mean(axis=0)
        rg2 = max(float(np.mean(np.sum(r * r, axis=1))) - 2 * s2, 0.0)
        radius_um = float(np.sqrt(2 * rg2)) * u.pixel_size_um
        q_px2 = inc.fit_noise(np.array([a0 + p]), np.array([a0 + q - 1]), s2, cfg.blur_r)[1][0]
        D = q_px2 / (2 * u.frame_interval_s) * u.pixel_size_um**2
        if radius_um <= cfg.immobile_max_radius_um or D <= cfg.immobile_max_D_um2_s:
            return (a0 + starts[1:]).tolist()
    return []


@njit(cache=True)
def _mixed_partition(
    t, xy, sigma2, L, pen, w, nodes, diff, pen_join, diff_first, diff_last
):  # pragma: no cover - compiled
    """Optimal partition of a path into stretches of stop-and-go and diffusive blocks.

    A stop is a constant position. A run between two stops is the straight line from the level
    of the stop before it (mean of its last ``w`` points) at the knot half-way between the two
    frames, to the level of the stop after it (mean of its first ``w`` points) at the next
    knot, so that a run costs no free parameter; a run next to a diffusive block or at an end
    of the path is a free straight line (``2 log k`` for its slope). Stops and runs alternate,
    have >= ``L`` points and cost ``RSS / sigma2`` plus ``pen`` per change point between them.
    A diffusive block spans any two nodes and costs ``diff[i, j]`` (the -2 log L of its steps);
    a change next to it costs ``pen_join`` plus one step of pure noise. Every block of ``k``
    points is charged for ``k - 1`` points, so the costs compare with the step likelihoods.
    ``diff_first`` / ``diff_last`` force the first / last block to be diffusive. O(n^2) from
    the cumulative sums of :func:`_path_sums` plus O(K^2) for the nodes.

    Returns
    -------
    starts : int array, the first point of every piece (``starts[0] == 0``).
    kinds : int array, per piece: 1 stop, 2 run ending at a stop, 3 run with a free end,
        4 diffusive block.
    """
    n = t.size
    c = _path_sums(t, xy)
    l2p = 2.0 * math.log(2.0 * math.pi * sigma2)  # per point, two axes
    join = pen_join + 2.0 * (math.log(4.0 * math.pi * sigma2) + 1.0)
    K = nodes.size - 1
    isnode = np.full(n + 1, -1)
    for k in range(K + 1):
        isnode[nodes[k]] = k
    Le = np.zeros((n + 1, 2))
    Ls = np.zeros((n + 1, 2))
    for b in range(1, n + 1):
        a = max(b - w, 0)
        Le[b, 0] = (c[b, 3] - c[a, 3]) / (b - a)
        Le[b, 1] = (c[b, 4] - c[a, 4]) / (b - a)
    for i in range(0, n):
        e = min(i + w, n)
        Ls[i, 0] = (c[e, 3] - c[i, 3]) / (e - i)
        Ls[i, 1] = (c[e, 4] - c[i, 4]) / (e - i)
    tau = np.zeros(n + 1)
    for k in range(1, n):
        tau[k] = 0.5 * (t[k - 1] + t[k])
    INF = np.inf
    H = np.full(n + 1, INF)  # stop ending at e
    G = np.full(n + 1, INF)  # run ending at e, anchored to the stop after it
    Gf = np.full(n + 1, INF)  # run ending at e with a free end (end of path or diffusive next)
    Dv = np.full(n + 1, INF)  # diffusive block ending at node e
    S = np.full(n + 1, INF)  # cost before a free start at i (0 or after a diffusive block)
    pH = np.full(n + 1, -1)
    pHt = np.zeros(n + 1, np.int64)
    pG = np.full(n + 1, -1)
    pGt = np.zeros(n + 1, np.int64)
    pGf = np.full(n + 1, -1)
    pGft = np.zeros(n + 1, np.int64)
    pD = np.full(n + 1, -1)
    pDt = np.zeros(n + 1, np.int64)
    if not diff_first:
        S[0] = -l2p
    # types: 0 start, 1 stop, 2 run (anchored end), 3 run (free end), 4 diffusive
    for e in range(1, n + 1):
        # diffusive block ending at node e
        if isnode[e] > 0:
            j = isnode[e]
            best, arg, typ = INF, -1, 0
            for i in range(j):
                b = nodes[i]
                if b == 0:
                    pc, pt = 0.0, 0
                else:
                    pc, pt = H[b] + join, 1
                    if Gf[b] + join < pc:
                        pc, pt = Gf[b] + join, 3
                    if Dv[b] + join < pc:
                        pc, pt = Dv[b] + join, 4
                v = pc + diff[i, j]
                if v < best:
                    best, arg, typ = v, b, pt
            Dv[e], pD[e], pDt[e] = best, arg, typ
        if e < L:
            if isnode[e] > 0 and e < n:
                S[e] = Dv[e] + join - l2p
            continue
        # stop ending at e
        best, arg, typ = INF, -1, 0
        for i in range(0, e - L + 1):
            if S[i] < INF:
                pc, pt = S[i], (0 if i == 0 else 4)
            else:
                pc, pt = INF, 0
            if G[i] + pen < pc:
                pc, pt = G[i] + pen, 2
            if pc == INF:
                continue
            v = pc + _level_rss(c, i, e) / sigma2 + l2p * (e - i)
            if v < best:
                best, arg, typ = v, i, pt
        H[e], pH[e], pHt[e] = best, arg, typ
        # runs ending at e
        bestA, argA, typA = INF, -1, 0
        bestF, argF, typF = INF, -1, 0
        free_end = e == n or isnode[e] > 0
        for b in range(0, e - L + 1):
            cnt = c[e, 0] - c[b, 0]
            lin = INF
            if S[b] < INF or (free_end and H[b] < INF):
                lin = _line_rss(c, b, e) / sigma2 + 2.0 * math.log(cnt) + l2p * cnt
            if S[b] < INF:
                pt = 0 if b == 0 else 4
                v = S[b] + lin
                if v < bestA:
                    bestA, argA, typA = v, b, pt
                if free_end and v < bestF:
                    bestF, argF, typF = v, b, pt
            if H[b] == INF:
                continue
            if free_end:
                v = H[b] + pen + lin
                if v < bestF:
                    bestF, argF, typF = v, b, 1
            if e < n:
                st = c[e, 1] - c[b, 1]
                sx = c[e, 3] - c[b, 3]
                sy = c[e, 4] - c[b, 4]
                tb = tau[b]
                D = tau[e] - tb
                Ax, Ay = Le[b, 0], Le[b, 1]
                Bx, By = Ls[e, 0] - Ax, Ls[e, 1] - Ay
                ss = (st - cnt * tb) / D
                s2 = (c[e, 2] - c[b, 2] - 2 * tb * st + cnt * tb * tb) / (D * D)
                sxx = (c[e, 5] - c[b, 5] - tb * sx) / D
                sxy = (c[e, 6] - c[b, 6] - tb * sy) / D
                rss = (
                    c[e, 7]
                    - c[b, 7]
                    - 2 * (Ax * sx + Ay * sy)
                    - 2 * (Bx * sxx + By * sxy)
                    + cnt * (Ax * Ax + Ay * Ay)
                    + 2 * (Ax * Bx + Ay * By) * ss
                    + (Bx * Bx + By * By) * s2
                )
                v = H[b] + pen + rss / sigma2 + l2p * cnt
                if v < bestA:
                    bestA, argA, typA = v, b, 1
        G[e], pG[e], pGt[e] = bestA, argA, typA
        Gf[e], pGf[e], pGft[e] = bestF, argF, typF
        if isnode[e] > 0 and e < n:
            S[e] = Dv[e] + join - l2p
    # backtrack
    tot, fin = Dv[n], 4
    if not diff_last:
        if H[n] < tot:
            tot, fin = H[n], 1
        if Gf[n] < tot:
            tot, fin = Gf[n], 3
    starts = []
    kinds = []
    e, typ = n, fin
    while e > 0:
        if typ == 1:
            p, nt = pH[e], pHt[e]
        elif typ == 2:
            p, nt = pG[e], pGt[e]
        elif typ == 3:
            p, nt = pGf[e], pGft[e]
        else:
            p, nt = pD[e], pDt[e]
        starts.append(p)
        kinds.append(typ)
        e, typ = p, nt
    starts.reverse()
    kinds.reverse()
    return np.array(starts, np.int64), np.array(kinds, np.int64)


#: Points of a stop whose mean gives the level where the neighbouring run starts or ends.
_STOP_LEVEL_POINTS = 8


def _run_chi2(
    frames: np.ndarray, xy: np.ndarray, s: int, e: int, lo: int, hi: int, sigma2: float
) -> float:
    """Significance (chi^2, 2 dof) of the displacement of the run [s, e): between the mean
    positions of the whole stops [lo, s) before and [e, hi) after it (a stop's position is best
    estimated from all of its points), or, when ``lo == s`` or ``hi == e`` (no stop on that
    side), from its least-squares slope; ``sigma2`` is the localisation variance."""
    if s > lo and e < hi:
        before, after = xy[lo:s], xy[e:hi]
        delta = after.mean(axis=0) - before.mean(axis=0)
        return float(delta @ delta) / (sigma2 * (1 / len(before) + 1 / len(after)))
    t = frames[s:e] - frames[s:e].mean()
    ctt = float(t @ t)
    v = t @ (xy[s:e] - xy[s:e].mean(axis=0)) / ctt
    return float(v @ v) * ctt / sigma2


#: Frames by which the boundary between a stretch of stops and runs and a diffusive neighbour
#: may move when the stretch is re-cut.
_BOUNDARY_WINDOW = 20


def _stop_go_regions(
    frames: np.ndarray,
    xy: np.ndarray,
    segs: list[dict],
    inc: _Increments,
    s2: float,
    sigma2_px: float | None,
    cfg: SegmentConfig,
    u: _Units,
) -> list[dict]:
    """Re-cut each stretch of consecutive stops (immobile) and runs (directed) that holds both
    with the continuous stop-and-go model (:func:`_mixed_partition`): knowing that a run
    starts where the last stop was and ends where the next stop is locates slow runs far better
    than pieces fitted independently. A free or confined neighbour joins the re-cut as one
    diffusive block whose boundary with the stretch may move by ``_BOUNDARY_WINDOW`` frames; a
    neighbour of at most twice that many points (typically pass 1's description of a short run
    or stop at the end of a track or next to another phase) may also be replaced as a whole."""
    L = int(cfg.min_segment_frames)
    W = _BOUNDARY_WINDOW
    out: list[dict] = []
    j = 0
    while j < len(segs):
        k = j
        while k < len(segs) and segs[k]["state"] in ("immobile", "directed"):
            k += 1
        if k == j:
            out.append(segs[j])
            j += 1
            continue
        group = segs[j:k]
        a, b = group[0]["start"], group[-1]["end"]
        states = {d["state"] for d in group}
        if len(states) < 2 or b - a < 2 * L:
            out += group
            j = k
            continue
        diffusive = ("free", "confined")
        left = bool(W) and bool(out) and out[-1]["state"] in diffusive
        right = bool(W) and k < len(segs) and segs[k]["state"] in diffusive
        lo = out[-1]["start"] if left else a
        hi = segs[k]["end"] if right else b
        nodes = [lo]
        if left:
            nodes += [x for x in range(a - W, a + W + 1) if lo + L <= x <= b - L]
        if right:
            nodes += [
                x for x in range(b - W, b + W + 1) if max(a + L, nodes[-1] + 1) <= x <= hi - L
            ]
        nodes.append(hi)
        nd = np.array(nodes, np.int64)
        if left or right:
            diff = _fixed_noise_blocks(inc.d, inc.n, nd, _Q_GRID, s2, cfg.blur_r)
            diff += np.log(2 * (hi - lo))
        else:
            diff = np.full((2, 2), np.inf)
        t = frames[lo:hi].astype(float)
        pts = np.ascontiguousarray(xy[lo:hi] - xy[lo:hi].mean(axis=0))
        pen = cfg.stop_go_penalty * np.log(2 * (hi - lo))
        pen_join = cfg.changepoint_penalty * 3 * np.log(2 * (hi - lo))
        starts, kinds = _mixed_partition(
            t - t[0],
            pts,
            s2,
            L,
            pen,
            _STOP_LEVEL_POINTS,
            nd - lo,
            diff,
            pen_join,
            # a neighbour no longer than twice the window may be replaced as a whole
            left and a - lo > 2 * W,
            right and hi - b > 2 * W,
        )
        if not ((kinds == 1).any() and np.isin(kinds, (2, 3)).any()):
            out += group
            j = k
            continue
        if left:
            out.pop()
        starts = (lo + starts).tolist()
        ends = [*starts[1:], hi]
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            run = None
            if kinds[i] in (2, 3):
                before = starts[i - 1] if i > 0 and kinds[i - 1] == 1 else s
                after = ends[i + 1] if i + 1 < len(kinds) and kinds[i + 1] == 1 else e
                run = _run_chi2(frames, xy, s, e, before, after, s2) >= cfg.directed_min_chi2
            d = _describe(frames[s : e + 1], xy[s : e + 1], sigma2_px, cfg, u, directed=run)
            if out and d["state"] == "immobile" and out[-1]["state"] == "immobile":
                s0 = out[-1]["start"]
                d = _describe(frames[s0 : e + 1], xy[s0 : e + 1], sigma2_px, cfg, u)
                out[-1] = {**d, "start": s0, "end": e}
            else:
                out.append({**d, "start": s, "end": e})
        j = k + 1 if right else k
    return out


def segment_tracks(
    tracks: pd.DataFrame,
    config: SegmentConfig = SegmentConfig(),
    *,
    pixel_size_um: float,
    frame_interval_s: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split every track into motion segments and label points and segments with a motion state.

    Change points come from a penalised likelihood of the step vectors (:func:`changepoints`),
    refined where a continuous model of stops and straight runs (a run goes from one stop's
    position to the next; positions in localisation noise) explains a part of a track better
    than diffusion (optimal partition into diffusive and stop-and-go pieces); each segment is
    then classified (``directed`` if its net displacement is significant for its
    own noise and diffusion, else ``immobile`` / ``confined`` / ``free`` from its noise-corrected
    spread) and neighbouring stops are merged; finally confined vs free is decided per
    population of segments with similar D (:func:`pool_confinement`), so the result of a
    segment depends on the other tracks of the table (``pool_D_factor=0`` turns this off).

    Parameters
    ----------
    tracks : DataFrame
        trackpy-style table: ``frame`` (int), ``x, y`` (px), ``particle`` (int); frames may have
        gaps; optional ``x_err, y_err`` (px) give the localisation error, otherwise it is estimated
        from the steps. Other columns are kept.
    config : SegmentConfig
        Segmentation parameters.
    pixel_size_um : float
        Pixel size (um).
    frame_interval_s : float
        Frame interval (s).

    Returns
    -------
    tracks_out : DataFrame
        The input rows (sorted by particle, frame) plus ``segment`` (int, 0, 1, ... within each
        particle) and ``state`` (one of :data:`spt.schema.STATES`).
    segments : DataFrame
        One row per (particle, segment), columns :data:`SEGMENT_TABLE_COLUMNS`: frames, number of
        points, ``state``, ``D_um2_s`` (short-time D; 0 when immobile), ``alpha`` (MSD exponent;
        0 when immobile), ``speed_um_s`` (net speed from a straight-line fit of position against
        time), ``confinement_radius_um`` (immobile and confined segments; NaN otherwise),
        ``motion`` (``"go"`` for directed/free, ``"stop"`` for immobile/confined), ``duration_s``,
        ``net_displacement_um`` and ``drift_chi2`` (significance of the net displacement).
    """
    _validate(tracks, pixel_size_um, frame_interval_s)
    u = _Units(float(pixel_size_um), float(frame_interval_s))
    if len(tracks) == 0:
        out = tracks.copy()
        out["segment"] = pd.Series(dtype="int64")
        out["state"] = pd.Series(dtype=object)
        return out, _empty(SEGMENT_TABLE_COLUMNS)
    out = tracks.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    seg_col = np.zeros(len(out), np.int64)
    state_col = np.empty(len(out), dtype=object)
    rows = []
    has_err = "x_err" in out.columns and "y_err" in out.columns
    pos = 0
    for pid, g in out.groupby("particle", sort=True):
        frames = g["frame"].to_numpy(np.int64)
        xy = g[["x", "y"]].to_numpy(float)
        sigma2 = None
        if has_err:
            err = g[["x_err", "y_err"]].to_numpy(float)
            err = err[np.isfinite(err)]
            sigma2 = float(np.mean(err**2)) if err.size else None
        for k, d in enumerate(_segment_one(frames, xy, sigma2, config, u)):
            sl = slice(pos + d["start"], pos + d["end"])
            seg_col[sl] = k
            state_col[sl] = d["state"]
            rows.append(
                {
                    "particle": int(pid),
                    "segment": k,
                    "start_frame": int(frames[d["start"]]),
                    "end_frame": int(frames[d["end"] - 1]),
                    **{c: d[c] for c in SEGMENT_TABLE_COLUMNS if c in d and c != "n_points"},
                    "n_points": int(d["end"] - d["start"]),
                    "motion": "go" if d["state"] in ("directed", "free") else "stop",
                }
            )
        pos += len(g)
    out["segment"] = seg_col
    out["state"] = state_col
    segments = pd.DataFrame(rows, columns=list(SEGMENT_TABLE_COLUMNS))
    segments = segments.astype({c: "int64" for c in _INT_COLUMNS if c in segments.columns})
    return pool_confinement(out, segments, config)


def run_stop_summary(segments: pd.DataFrame) -> pd.DataFrame:
    """Per-track stop-and-go summary of a segments table from :func:`segment_tracks`.

    Runs are ``go`` segments (directed or free), stops are ``stop`` segments (immobile or
    confined). Run speeds are the segments' net speeds.

    Returns
    -------
    DataFrame
        One row per particle, columns :data:`RUN_STOP_COLUMNS` (times in s, speeds in um/s;
        run statistics are NaN for a track without runs, stop statistics for one without stops).
    """
    missing = [
        c for c in ("particle", "motion", "duration_s", "speed_um_s") if c not in segments.columns
    ]
    if missing:
        raise SptInputError("segments", f"missing column(s) {', '.join(missing)}")
    if segments.empty:
        return _empty(RUN_STOP_COLUMNS)
    rows = []
    for pid, g in segments.groupby("particle", sort=True):
        runs, stops = g[g["motion"] == "go"], g[g["motion"] == "stop"]
        run_t, stop_t = float(runs["duration_s"].sum()), float(stops["duration_s"].sum())
        total = run_t + stop_t
        rows.append(
            {
                "particle": int(pid),
                "n_runs": len(runs),
                "n_stops": len(stops),
                "run_time_s": run_t,
                "stop_time_s": stop_t,
                "run_fraction": run_t / total if total > 0 else float(len(stops) == 0),
                "mean_run_duration_s": float(runs["duration_s"].mean()) if len(runs) else np.nan,
                "mean_stop_duration_s": float(stops["duration_s"].mean()) if len(stops) else np.nan,
                "mean_run_speed_um_s": float(runs["speed_um_s"].mean()) if len(runs) else np.nan,
                "median_run_speed_um_s": float(runs["speed_um_s"].median())
                if len(runs)
                else np.nan,
                "max_run_speed_um_s": float(runs["speed_um_s"].max()) if len(runs) else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=list(RUN_STOP_COLUMNS))
