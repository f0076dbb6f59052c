"""Scoring detections and tracks against ground truth.

Owns spot matching (recall, precision, RMSE), track recovery and identity switches, and the
ISBI 2012 Particle Tracking Challenge measures alpha, beta, JSC and JSC-theta (Chenouard 2014).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

from spt._lap import solve_sparse_lap
from spt.errors import SptInputError

__all__ = [
    "match_spots",
    "DetectionScores",
    "detection_scores",
    "TrackScores",
    "track_scores",
    "IsbiScores",
    "isbi_scores",
]


def _xyf(table: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in ("frame", "x", "y") if c not in table.columns]
    if missing:
        raise SptInputError(name, f"missing column(s) {', '.join(missing)}")
    return table["frame"].to_numpy(np.int64), table[["x", "y"]].to_numpy(np.float64)


def _close_pairs(fa, pa, fb, pb, max_dist: float):
    """All (i, j, distance) with the same frame and distance < max_dist."""
    if len(fa) == 0 or len(fb) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    sep = 4.0 * max_dist + 1.0  # frames far apart in a third coordinate
    ta = cKDTree(np.column_stack([pa, fa * sep]))
    tb = cKDTree(np.column_stack([pb, fb * sep]))
    sdm = ta.sparse_distance_matrix(tb, max_dist, output_type="ndarray")
    i, j = sdm["i"].astype(np.int64), sdm["j"].astype(np.int64)
    same = fa[i] == fb[j]
    i, j = i[same], j[same]
    return i, j, np.hypot(*(pa[i] - pb[j]).T)


def match_spots(truth: pd.DataFrame, found: pd.DataFrame, max_dist: float = 2.0) -> pd.DataFrame:
    """One-to-one matching of found spots to true spots, frame by frame.

    Maximises the number of pairs closer than ``max_dist`` and, among those, minimises the summed
    distance (Hungarian algorithm per cluster of competing pairs).

    Parameters
    ----------
    truth, found : DataFrame
        Tables with ``frame, x, y`` (px).
    max_dist : float
        Largest distance (px) for a match.

    Returns
    -------
    DataFrame
        Columns ``truth_index``, ``found_index`` (positional indices into the inputs), ``dx``,
        ``dy`` (found minus true, px).
    """
    ft, pt = _xyf(truth, "truth")
    ff, pf = _xyf(found, "found")
    i, j, d = _close_pairs(ft, pt, ff, pf, max_dist)
    # cost < -1 for every pair: cardinality first, then distance
    a, b = solve_sparse_lap(i, j, d / max_dist - 2.0, len(ft), len(ff))
    dxy = pf[b] - pt[a]
    return pd.DataFrame({"truth_index": a, "found_index": b, "dx": dxy[:, 0], "dy": dxy[:, 1]})


@dataclass(frozen=True)
class DetectionScores:
    """Spot-level scores: ``recall`` = matched / true, ``precision`` = matched / found,
    ``rmse_px`` = root mean square of the 2-D... per-axis error over matched spots (px)."""

    n_true: int
    n_found: int
    n_matched: int
    recall: float
    precision: float
    rmse_px: float


def detection_scores(
    truth: pd.DataFrame, found: pd.DataFrame, max_dist: float = 2.0
) -> DetectionScores:
    """Recall, precision and per-axis RMSE of found spots against true spots.

    Parameters
    ----------
    truth, found : DataFrame
        ``frame, x, y`` (px).
    max_dist : float
        Matching gate (px).

    Returns
    -------
    DetectionScores
        ``rmse_px`` is ``sqrt(mean(dx^2 + dy^2) / 2)``, the per-axis RMSE comparable to a
        one-axis Cramer-Rao bound.
    """
    m = match_spots(truth, found, max_dist)
    nt, nf, nm = len(truth), len(found), len(m)
    rmse = float(np.sqrt(np.mean(m.dx**2 + m.dy**2) / 2)) if nm else float("nan")
    return DetectionScores(
        nt, nf, nm, nm / nt if nt else float("nan"), nm / nf if nf else float("nan"), rmse
    )


@dataclass(frozen=True)
class TrackScores:
    """Track-level scores.

    ``recovered`` is the fraction of true tracks (with at least ``min_points`` points) of which at
    least ``whole_fraction`` of the points are matched to one and the same found track;
    ``switches_per_100_links`` counts, over consecutive matched points of a true track, how often
    the found track changes, per 100 such links.
    """

    n_true_tracks: int
    recovered: float
    switches_per_100_links: float


def track_scores(
    truth: pd.DataFrame,
    tracks: pd.DataFrame,
    *,
    max_dist: float = 2.0,
    whole_fraction: float = 0.8,
    min_points: int = 10,
) -> TrackScores:
    """Fraction of true tracks recovered whole, and identity switches.

    Parameters
    ----------
    truth : DataFrame
        True positions with ``frame, x, y, particle``.
    tracks : DataFrame
        Found tracks with ``frame, x, y, particle``.
    max_dist : float
        Spot matching gate (px).
    whole_fraction : float
        Share of a true track's points that must be in one found track for it to count as
        recovered.
    min_points : int
        True tracks shorter than this are not scored.
    """
    m = match_spots(truth, tracks, max_dist)
    tp = truth["particle"].to_numpy()
    fp = tracks["particle"].to_numpy()
    sizes = pd.Series(tp).value_counts()
    scored = sizes[sizes >= min_points]
    pairs = pd.DataFrame(
        {
            "t": tp[m.truth_index],
            "f": fp[m.found_index],
            "frame": truth["frame"].to_numpy()[m.truth_index],
        }
    )
    best = pairs.groupby(["t", "f"]).size().groupby(level=0).max()
    best = best.reindex(scored.index, fill_value=0)
    recovered = float((best / scored >= whole_fraction).mean()) if len(scored) else float("nan")
    pairs = pairs.sort_values(["t", "frame"])
    same_t = pairs["t"].to_numpy()[1:] == pairs["t"].to_numpy()[:-1]
    changed = pairs["f"].to_numpy()[1:] != pairs["f"].to_numpy()[:-1]
    n_links = int(same_t.sum())
    switches = 100.0 * (same_t & changed).sum() / n_links if n_links else float("nan")
    return TrackScores(len(scored), recovered, float(switches))


@dataclass(frozen=True)
class IsbiScores:
    """ISBI 2012 challenge measures (Chenouard et al. 2014), all in [0, 1], higher is better."""

    alpha: float
    beta: float
    jsc: float
    jsc_theta: float


def isbi_scores(truth: pd.DataFrame, tracks: pd.DataFrame, eps: float = 5.0) -> IsbiScores:
    """Chenouard et al. (Nat Methods 11:281, 2014) track-assignment measures.

    The distance between two tracks is the sum over the frames where either exists of the gated
    distance ``min(||x_t - y_t||, eps)``, counted as ``eps`` where only one of them has a point.
    Reference tracks X are paired one-to-one with candidate tracks Y or with dummy (empty) tracks
    so that the total distance ``d(X, Y)`` is minimal (Hungarian algorithm). Then

    * ``alpha = 1 - d(X, Y) / d(X, 0)``, with ``d(X, 0) = eps * (number of reference points)``;
    * ``beta = (d(X, 0) - d(X, Y)) / (d(X, 0) + d(Ybar, 0))``, Ybar the unpaired candidate tracks;
    * ``JSC = TP / (TP + FN + FP)`` on points: TP are points of paired tracks closer than eps in
      the same frame, FN the other reference points, FP the other candidate points;
    * ``JSC_theta`` the same on whole tracks: TP reference tracks paired with a candidate, FN
      those paired with a dummy, FP unpaired candidate tracks.

    Parameters
    ----------
    truth, tracks : DataFrame
        ``frame, x, y, particle`` (px).
    eps : float
        Gate in px (5 in the challenge).
    """
    ft, pt = _xyf(truth, "truth")
    ff, pf = _xyf(tracks, "tracks")
    _, ti = np.unique(truth["particle"].to_numpy(), return_inverse=True)
    _, fi = np.unique(tracks["particle"].to_numpy(), return_inverse=True)
    nt, nf = ti.max() + 1 if len(ti) else 0, fi.max() + 1 if len(fi) else 0
    len_t = np.bincount(ti, minlength=nt).astype(float)
    len_f = np.bincount(fi, minlength=nf).astype(float)
    if nt == 0:
        raise SptInputError("truth", "no reference tracks to score against")
    if nf == 0:
        return IsbiScores(0.0, 0.0, 0.0, 0.0)
    # frames in common: sparse indicator products
    t0 = min(ft.min(), ff.min())
    n_frames = int(max(ft.max(), ff.max()) - t0 + 1)
    at = csr_matrix((np.ones(len(ft)), (ti, ft - t0)), shape=(nt, n_frames))
    af = csr_matrix((np.ones(len(ff)), (fi, ff - t0)), shape=(nf, n_frames))
    overlap = (at @ af.T).tocoo()
    gain = {}
    # d(X, Y) = eps (|X| + |Y|) - sum over common frames of (2 eps - min(dist, eps))
    for r, c, v in zip(overlap.row, overlap.col, overlap.data, strict=True):
        gain[(r, c)] = eps * v
    i, j, d = _close_pairs(ft, pt, ff, pf, eps)
    close = pd.DataFrame({"r": ti[i], "c": fi[j], "g": eps - d})
    close_sum = close.groupby(["r", "c"])["g"].sum()
    for (r, c), g in close_sum.items():
        gain[(r, c)] += g
    keys = np.array(list(gain.keys()), dtype=np.int64).reshape(-1, 2)
    g = np.fromiter(gain.values(), float, len(gain))
    dist = eps * (len_t[keys[:, 0]] + len_f[keys[:, 1]]) - g
    # pairing beats the dummy when dist < eps |X|
    a, b = solve_sparse_lap(keys[:, 0], keys[:, 1], dist - eps * len_t[keys[:, 0]], nt, nf)
    pair_dist = dict(zip(zip(keys[:, 0], keys[:, 1], strict=True), dist, strict=True))
    d_xy = eps * len_t.sum()
    for r, c in zip(a, b, strict=True):
        d_xy += pair_dist[(r, c)] - eps * len_t[r]
    d_x0 = eps * len_t.sum()
    unpaired = np.ones(nf, bool)
    unpaired[b] = False
    d_ybar = eps * len_f[unpaired].sum()
    alpha = 1.0 - d_xy / d_x0
    beta = (d_x0 - d_xy) / (d_x0 + d_ybar)
    paired = set(zip(a.tolist(), b.tolist(), strict=True))
    tp_points = int(
        sum((r, c) in paired for r, c in zip(ti[i].tolist(), fi[j].tolist(), strict=True))
    )
    fn_points = len(ft) - tp_points
    fp_points = len(ff) - tp_points
    jsc = tp_points / (tp_points + fn_points + fp_points)
    tp_tracks = len(a)
    jsc_theta = tp_tracks / (tp_tracks + (nt - tp_tracks) + (nf - tp_tracks))
    return IsbiScores(float(alpha), float(beta), float(jsc), float(jsc_theta))
