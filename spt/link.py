"""Linking spots into tracks: motion-predicted frame-to-frame assignment with gap closing.

Owns :class:`LinkConfig` and :func:`link`. Each frame is one linear assignment problem (LAP,
Jaqaman et al. 2008) between the live tracks and the new spots, costed by the likelihood of three
motion models (diffusion, constant velocity, any move up to the maximum speed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit
from scipy.spatial import cKDTree

from spt._lap import solve_sparse_lap
from spt.errors import SptInputError
from spt.schema import SPOT_COLUMNS, empty_table

__all__ = ["LinkConfig", "drop_sparse_tracks", "link"]


@dataclass(frozen=True)
class LinkConfig:
    """Parameters of track linking (physical units; converted with the movie's calibration).

    Attributes
    ----------
    max_speed_um_s : float
        Fastest motion to follow without a prediction (um/s), e.g. blood flow. Sets the search
        radius ``max_speed_um_s * frame_interval_s`` for the first step of a track and after abrupt
        changes of motion (stop-and-go).
    diffusion_um2_s : float
        Diffusion coefficient (um^2/s) of the "random motion" model; steps of size
        ``sqrt(4 D dt)`` around the last position are cheap. Use the fastest common D.
    velocity_noise_um_s : float
        Per-frame change of velocity (um/s, s.d. per axis) allowed by the constant-velocity model
        (Kalman-type prediction of flowing particles; Jaqaman et al. 2008).
    max_gap_frames : int
        Longest run of missing frames bridged within one track (blinking: a quantum dot off for up
        to this many frames keeps its identity).
    gap_penalty : float
        Extra cost (in log-likelihood units) per missing frame of a gap; higher values prefer
        starting a new track over a long gap.
    model_switch_penalty : float
        Extra cost of a link explained only by the "any move up to max speed" model, which is
        used when neither prediction fits (log-likelihood units).
    min_track_length : int
        Drop tracks with fewer spots than this (isolated false detections). 1 keeps all.
    intensity_sd : float
        Expected s.d. of the natural log of a spot's ``signal`` around its track's running mean
        (quantum dots keep their brightness while on). A link to a spot much brighter or dimmer
        than the track costs ``(z^2 - 1) / 2`` more, ``z`` the log-ratio over this s.d. (capped
        at ``intensity_max_cost``), which keeps tracks off false detections and off the
        other particle where two meet. 0, or spots without a positive ``signal`` column: position
        only.
    intensity_max_cost : float
        Cap of the intensity term (log-likelihood units), so that a merged or partly hidden spot
        is still linkable when nothing else fits.
    sparse_track_points : int
        Tracks with fewer spots than this that are also sparse (see ``sparse_track_density``)
        are dropped by :func:`drop_sparse_tracks`, after guided re-detection. 0: keep all.
    sparse_track_density : float
        Least share of the frames it spans that a short track must have spots in. A quantum dot
        blinks, but a real short track has a spot in most frames once the guided pass has
        filled its gaps; a few spots scattered over many frames are chained false detections.
    sparse_track_brightness : float
        A short sparse track is dropped only if its median ``signal`` is also below this
        fraction of the median signal of all tracked spots (false detections are dim; a bright
        particle blinking for long keeps its track). 0: never drop; no ``signal`` column: by
        the other two criteria alone.
    """

    max_speed_um_s: float = 80.0
    diffusion_um2_s: float = 0.25
    velocity_noise_um_s: float = 5.0
    max_gap_frames: int = 20
    gap_penalty: float = 0.3
    model_switch_penalty: float = 4.0
    min_track_length: int = 3
    intensity_sd: float = 0.3
    intensity_max_cost: float = 6.0
    sparse_track_points: int = 15
    sparse_track_density: float = 0.5
    sparse_track_brightness: float = 0.9

    def __post_init__(self) -> None:
        if self.max_speed_um_s <= 0 or self.diffusion_um2_s <= 0 or self.velocity_noise_um_s <= 0:
            raise ValueError("max_speed_um_s, diffusion_um2_s and velocity_noise_um_s must be > 0")
        if self.max_gap_frames < 0 or self.min_track_length < 1:
            raise ValueError("max_gap_frames must be >= 0 and min_track_length >= 1")
        if self.gap_penalty < 0 or self.model_switch_penalty < 0:
            raise ValueError("gap_penalty and model_switch_penalty must be >= 0")
        if self.intensity_sd < 0 or self.intensity_max_cost < 0:
            raise ValueError("intensity_sd and intensity_max_cost must be >= 0")
        if self.sparse_track_points < 0 or not 0 <= self.sparse_track_density <= 1:
            raise ValueError("sparse_track_points must be >= 0, sparse_track_density in [0, 1]")
        if self.sparse_track_brightness < 0:
            raise ValueError("sparse_track_brightness must be >= 0")


def _check(spots: pd.DataFrame, pixel_size_um: float, frame_interval_s: float) -> None:
    if not (pixel_size_um > 0 and frame_interval_s > 0):
        raise SptInputError("link", "pixel_size_um and frame_interval_s must be > 0")
    if not isinstance(spots, pd.DataFrame):
        raise SptInputError("spots", f"expected a DataFrame, got {type(spots).__name__}")
    missing = [c for c in ("frame", "x", "y") if c not in spots.columns]
    if missing:
        raise SptInputError("spots", f"missing column(s) {', '.join(missing)}")
    if len(spots) == 0:
        return
    for c in ("frame", "x", "y"):
        if not pd.api.types.is_numeric_dtype(spots[c]):
            raise SptInputError("spots", f"column {c!r} must be numeric")
        if not np.isfinite(spots[c].to_numpy(float)).all():
            raise SptInputError("spots", f"column {c!r} contains NaN or infinite values")


class _Tracks:
    """State of the live tracks: last position, velocity estimate and last frame (arrays)."""

    def __init__(self) -> None:
        self.pos = np.zeros((0, 2))
        self.vel = np.zeros((0, 2))
        self.has_vel = np.zeros(0, bool)
        self.last = np.zeros(0, np.int64)
        self.ident = np.zeros(0, np.int64)
        self.log_signal = np.zeros(0)  # running mean of log(signal)


def link(
    spots: pd.DataFrame,
    config: LinkConfig = LinkConfig(),
    *,
    pixel_size_um: float,
    frame_interval_s: float,
) -> pd.DataFrame:
    """Link spots into tracks.

    For every frame, the tracks seen within the last ``max_gap_frames + 1`` frames compete for the
    new spots in one linear assignment (solved exactly with the Jonker-Volgenant algorithm of
    :func:`scipy.optimize.linear_sum_assignment`, per connected component of the candidate
    graph, so dense frames never blow up combinatorially). The cost of linking a track to a spot
    is the smallest negative log-likelihood among three motion models, in the spirit of u-track's
    Kalman propagation (Jaqaman et al., Nat Methods 2008):

    * random motion around the last position, s.d. ``sqrt(2 D dt gap)`` per axis;
    * constant velocity, predicted from the track's last steps, with a velocity noise growing
      with the gap (particles carried by flow);
    * any move up to ``max_speed_um_s`` (uniform in the disc), plus ``model_switch_penalty``
      (start of a run, stop-and-go).

    A gap of ``g`` missing frames adds ``gap_penalty * g``. A track or spot left unassigned costs
    as much as an unpredicted one-frame move, so every link inside the search radius is taken
    unless a better one competes.

    Parameters
    ----------
    spots : DataFrame
        Spots with at least ``frame, x, y`` (px).
    config : LinkConfig
        Linking parameters (physical units).
    pixel_size_um : float
        Pixel size in um.
    frame_interval_s : float
        Time between frames in s.

    Returns
    -------
    DataFrame
        The input rows (minus those in tracks shorter than ``min_track_length``) with an int
        column ``particle`` numbered from 0 in order of first appearance, sorted by particle then
        frame.
    """
    _check(spots, pixel_size_um, frame_interval_s)
    if len(spots) == 0:
        cols = list(spots.columns) if len(spots.columns) else list(SPOT_COLUMNS)
        out = empty_table(tuple(c for c in cols if c != "particle") + ("particle",))
        return out
    spots = spots.reset_index(drop=True)
    frames = spots["frame"].to_numpy(np.int64)
    xy = spots[["x", "y"]].to_numpy(np.float64)
    log_signal = None
    if config.intensity_sd > 0 and "signal" in spots.columns:
        signal = pd.to_numeric(spots["signal"], errors="coerce").to_numpy(np.float64)
        if np.isfinite(signal).all() and (signal > 0).all():
            log_signal = np.log(signal)
    order = np.argsort(frames, kind="stable")
    ids = _link_arrays(
        frames[order],
        xy[order],
        None if log_signal is None else log_signal[order],
        config,
        pixel_size_um,
        frame_interval_s,
    )
    particle = np.empty(len(spots), np.int64)
    particle[order] = ids
    out = spots.copy()
    out["particle"] = particle
    if config.min_track_length > 1:
        sizes = out.groupby("particle")["frame"].transform("size")
        out = out[sizes.to_numpy() >= config.min_track_length]
    return renumber_tracks(out)


def drop_sparse_tracks(tracks: pd.DataFrame, config: LinkConfig = LinkConfig()) -> pd.DataFrame:
    """Tracks without the short, sparse, dim ones (fewer than ``config.sparse_track_points``
    spots, in fewer than ``config.sparse_track_density`` of the frames they span, median signal
    below ``config.sparse_track_brightness`` times that of all tracked spots), renumbered.

    Parameters
    ----------
    tracks : DataFrame
        Tracks with ``frame`` and ``particle``.
    config : LinkConfig
        Gives the two thresholds.

    Returns
    -------
    DataFrame
        See :func:`renumber_tracks`; ``tracks`` itself when nothing is dropped.
    """
    if config.sparse_track_points == 0 or len(tracks) == 0:
        return tracks
    g = tracks.groupby("particle")["frame"]
    n = g.transform("size").to_numpy()
    span = (g.transform("max") - g.transform("min")).to_numpy() + 1
    sparse = (n < config.sparse_track_points) & (n < config.sparse_track_density * span)
    if "signal" in tracks.columns:
        signal = pd.to_numeric(tracks["signal"], errors="coerce")
        own = signal.groupby(tracks["particle"]).transform("median").to_numpy()
        sparse &= own < config.sparse_track_brightness * float(signal.median())
    if not sparse.any():
        return tracks
    return renumber_tracks(tracks[~sparse])


def renumber_tracks(tracks: pd.DataFrame) -> pd.DataFrame:
    """Tracks with ``particle`` renumbered 0..n-1 in order of first appearance, sorted by
    particle then frame."""
    first = tracks.groupby("particle")["frame"].min().sort_values(kind="stable")
    mapping = pd.Series(np.arange(len(first), dtype=np.int64), index=first.index)
    out = tracks.assign(particle=mapping.loc[tracks["particle"].to_numpy()].to_numpy())
    return out.sort_values(["particle", "frame"], kind="stable", ignore_index=True)


def _link_arrays(
    frames: np.ndarray,
    xy: np.ndarray,
    log_signal: np.ndarray | None,
    config: LinkConfig,
    pixel_size_um: float,
    dt: float,
) -> np.ndarray:
    """Track id of every spot (spots sorted by frame); ``log_signal`` None: position only."""
    px_per_um = 1.0 / pixel_size_um
    r_flat = config.max_speed_um_s * dt * px_per_um + 1.0
    var_d = 2.0 * config.diffusion_um2_s * dt * px_per_um**2 + 0.1**2
    var_v = (config.velocity_noise_um_s * dt * px_per_um) ** 2
    cost_flat = np.log(np.pi * r_flat**2) + config.model_switch_penalty
    cost_none = cost_flat + 1.0
    max_gap = config.max_gap_frames

    ids = np.full(len(frames), -1, np.int64)
    tr = _Tracks()
    next_id = 0
    bounds = np.flatnonzero(np.diff(frames)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(frames)]])
    for s, e in zip(starts, ends, strict=True):
        t = frames[s]
        pts = xy[s:e]
        live = np.flatnonzero(t - tr.last <= max_gap + 1)
        if len(live) < len(tr.last):  # forget tracks lost for too long
            for name in ("pos", "vel", "has_vel", "last", "ident", "log_signal"):
                setattr(tr, name, getattr(tr, name)[live])
        assigned = np.full(len(pts), -1)
        if len(tr.last):
            rows, cols, cost = _candidate_costs(
                tr,
                pts,
                t,
                r_flat,
                var_d,
                var_v,
                cost_flat,
                config.gap_penalty,
                config.model_switch_penalty,
            )
            if log_signal is not None:
                z2 = (log_signal[s:e][cols] - tr.log_signal[rows]) ** 2 / config.intensity_sd**2
                cost = cost + np.clip(0.5 * (z2 - 1.0), 0.0, config.intensity_max_cost)
            keep = cost < cost_none
            rows, cols, cost = rows[keep], cols[keep], cost[keep]
            if len(rows):
                r_sel, c_sel = solve_sparse_lap(
                    rows, cols, cost - cost_none, len(tr.last), len(pts)
                )
                assigned[c_sel] = r_sel
        linked = assigned >= 0
        tri = assigned[linked]
        gap = (t - tr.last[tri]).astype(float)
        step = (pts[linked] - tr.pos[tri]) / gap[:, None]
        had = tr.has_vel[tri]
        tr.vel[tri] = np.where(had[:, None], 0.5 * tr.vel[tri] + 0.5 * step, step)
        tr.has_vel[tri] = True
        tr.pos[tri] = pts[linked]
        tr.last[tri] = t
        if log_signal is not None:
            tr.log_signal[tri] = 0.7 * tr.log_signal[tri] + 0.3 * log_signal[s:e][linked]
        ids[s:e][linked] = tr.ident[tri]
        n_new = int((~linked).sum())
        if n_new:
            new_ids = np.arange(next_id, next_id + n_new)
            next_id += n_new
            ids[s:e][~linked] = new_ids
            tr.pos = np.vstack([tr.pos, pts[~linked]])
            tr.vel = np.vstack([tr.vel, np.zeros((n_new, 2))])
            tr.has_vel = np.concatenate([tr.has_vel, np.zeros(n_new, bool)])
            tr.last = np.concatenate([tr.last, np.full(n_new, t)])
            tr.ident = np.concatenate([tr.ident, new_ids])
            new_ls = np.zeros(n_new) if log_signal is None else log_signal[s:e][~linked]
            tr.log_signal = np.concatenate([tr.log_signal, new_ls])
    return ids


def _candidate_costs(
    tr: _Tracks,
    pts: np.ndarray,
    t: int,
    r_flat,
    var_d,
    var_v,
    cost_flat,
    gap_penalty,
    switch_penalty,
):
    """Sparse (track, spot, cost) triplets for all pairs within the search regions."""
    gap = (t - tr.last).astype(float)
    pred = tr.pos + tr.vel * gap[:, None] * tr.has_vel[:, None]
    sd_v = np.sqrt(var_v * gap**2 + var_d * gap)
    radius = np.maximum(r_flat, 4.0 * sd_v)
    # neighbours of the last position (random / any motion) and of the prediction (flow)
    if len(tr.pos) * len(pts) <= _BRUTE_FORCE_PAIRS:
        rows, cols = _pairs_within(tr.pos, pred, pts, radius)
    else:
        rows, cols = _pairs_within_tree(tr.pos, pred, pts, radius)
    if len(rows) == 0:
        return rows, cols, np.zeros(0)
    g = gap[rows]
    d2_last = ((pts[cols] - tr.pos[rows]) ** 2).sum(axis=1)
    vd = var_d * g
    # a track moving faster than its random-motion spread switches to "stopped" only at a cost
    speed2 = (tr.vel[rows] ** 2).sum(axis=1) * tr.has_vel[rows]
    moving = speed2 > 8.0 * var_d
    c_diff = d2_last / (2 * vd) + np.log(2 * np.pi * vd) + switch_penalty * moving
    d2_pred = ((pts[cols] - pred[rows]) ** 2).sum(axis=1)
    vv = var_v * g**2 + var_d * g
    c_vel = np.where(tr.has_vel[rows], d2_pred / (2 * vv) + np.log(2 * np.pi * vv), np.inf)
    c_any = np.where(d2_last <= (r_flat * g) ** 2, cost_flat + 2 * np.log(g), np.inf)
    cost = np.minimum(np.minimum(c_diff, c_vel), c_any) + gap_penalty * (g - 1)
    return rows, cols, cost


#: Above this many (track, spot) pairs per frame, neighbours are found with a k-d tree instead
#: of testing every pair (same pairs; the tree only pays off on very dense frames).
_BRUTE_FORCE_PAIRS = 1 << 18


@njit(cache=True, nogil=True)
def _pairs_within(pos, pred, pts, radius):
    """(track, spot) pairs, sorted, with the spot within ``radius`` of the track's last
    position or of its prediction (every pair tested: frames hold few spots)."""
    n, m = len(pos), len(pts)
    hit = np.zeros(n * m, np.bool_)
    count = 0
    for i in range(n):
        r2 = radius[i] * radius[i]
        for j in range(m):
            dx, dy = pts[j, 0] - pos[i, 0], pts[j, 1] - pos[i, 1]
            within = dx * dx + dy * dy <= r2
            if not within:
                dx, dy = pts[j, 0] - pred[i, 0], pts[j, 1] - pred[i, 1]
                within = dx * dx + dy * dy <= r2
            if within:
                hit[i * m + j] = True
                count += 1
    rows = np.empty(count, np.int64)
    cols = np.empty(count, np.int64)
    k = 0
    for e in range(n * m):
        if hit[e]:
            rows[k], cols[k] = e // m, e % m
            k += 1
    return rows, cols


def _pairs_within_tree(pos, pred, pts, radius):
    """:func:`_pairs_within` with a k-d tree, for dense frames."""
    tree = cKDTree(pts)
    pairs = []
    for centre in (pos, pred):
        lists = tree.query_ball_point(centre, radius)
        lens = np.fromiter((len(li) for li in lists), np.int64, len(lists))
        if lens.sum():
            pairs.append(
                np.column_stack(
                    [np.repeat(np.arange(len(lists)), lens), np.concatenate(lists).astype(np.int64)]
                )
            )
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pr = np.vstack(pairs)
    key = np.unique(pr[:, 0] * len(pts) + pr[:, 1])
    return key // len(pts), key % len(pts)
