"""Flow tracks: follow particles carried by flow along their straight line, at low SNR.

Owns :class:`FlowConfig` and :func:`follow_flow`, a last pass after track-guided re-detection
that seeds flow tracks from unlinked detections, extends every flow track to its full length and
fills its gaps.
"""

from __future__ import annotations

import itertools
import math
from bisect import insort
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from scipy.spatial import cKDTree

from spt._lap import solve_sparse_lap
from spt.camera import Camera
from spt.errors import SptInputError
from spt.io import release_mapped_pages
from spt.link import renumber_tracks
from spt.localize import Fit, fit_groups, fit_spots

__all__ = ["FlowConfig", "follow_flow"]

#: ``_take_or_fit``'s answer when the spot found began another flow track, now joined.
_JOINED = -2
#: Fits between two releases of a memory-mapped movie's pages (:func:`release_mapped_pages`).
_FITS_PER_RELEASE = 64
#: Owner of a fit that was given up (an unconfirmed seed's, a blink's, an unconfirmed step's):
#: in no track, and not a detection another track may take.
_DISCARDED = -3


@dataclass(frozen=True)
class FlowConfig:
    """Parameters of the flow pass (:func:`follow_flow`); lengths in px, times in frames,
    speeds in um/s (converted with the movie's calibration).

    Attributes
    ----------
    enabled : bool
        Run the flow pass after guided re-detection.
    min_speed_um_s : float
        A track whose straight-line (least-squares) velocity is at least this fast (um/s) is a
        flow track. Well above active transport (~1 um/s), well below blood flow (20-60 um/s).
    max_speed_um_s : float
        Fastest flow to seed tracks for (um/s).
    max_residual_px : float
        Largest r.m.s. distance (px) of a track's points from its straight line for it to be
        followed (plug flow is a straight line with lateral jitter).
    lateral_diffusion_um2_s : float
        Diffusion coefficient (um^2/s) of the jitter about the line (lateral diffusion in the
        flow, and the flow's own unsteadiness); sets how fast the search region grows.
    velocity_window : int
        Points of the track nearest to the end used for the straight line.
    last_point_weight : float
        Weight of the last spot (against the straight line) in the position the prediction
        starts from.
    min_snr : float
        Accept a fit at the prediction if ``signal / signal_err`` is at least this.
    miss_snr_step : float
        After ``k`` frames in a row without a spot, a fit needs ``min_snr + k * miss_snr_step``
        (the prediction is less certain, so a noise peak in its wider search region is likelier).
    search_radius_px : float
        Distance (px) between fit and prediction always accepted, on top of the prediction's
        own uncertainty (2.5 s.d.).
    brightness_ratio : float
        A fit's signal must lie within this factor of the track's median signal.
    follow_rounds : int
        Rounds of following the ends of every flow track, each one followed by joining,
        dropping the seeds not confirmed and filling gaps (the tracks followed are cut once,
        after the first). A later round goes on from ends that stopped where a seed since
        dropped held the spots, or whose track a cut, a join or filled gaps have changed since
        (a longer, better-sampled line near the end).
    confirm_after_misses : bool
        After misses, a fit with ``min_snr <= signal / signal_err`` short of the raised
        threshold ``need`` (``miss_snr_step``) is kept if the next frame, predicted from it,
        yields a detection, or a fit whose squared SNR summed with the first's reaches
        ``need**2 + min_snr**2`` (the two frames' evidence together: a noise peak rarely falls
        on the line in two frames running); if not, both frames count as missed. Off: such a
        fit is refused.
    max_misses : int
        Frames in a row without a spot after which a track end is not followed further (the
        prediction goes on through them: blinking, a spot too dim in one frame).
    seed_gap_frames : int
        Largest gap (frames) between the unlinked detections of a seed (three detections on one
        straight line at a constant flow speed, or two, see ``seed_pairs``). 0: no seeding.
    seed_radius_px : float
        Largest distance (px) of a chain's third detection from the line through the first two.
    seed_pairs : bool
        Also seed from two unlinked detections moving at a flow speed, if both are at least
        ``seed_min_brightness`` times the typical (median) signal of the tracked spots.
    seed_min_brightness : float
        See ``seed_pairs`` (noise detections are mostly dim).
    min_seed_points : int
        A seeded track is kept only if following it brings it to at least this many points.
    join_gap_frames : int
        Largest gap (frames) across which the end of a flow track is joined to the start of
        another on its line (same velocity, brightness). 0: off.
    join_overlap_frames : int
        Most frames by which the later of two joined flow tracks may start before the earlier
        one ends, if no frame holds a spot of both (pieces of one particle's track followed
        into each other's frames, interleaved).
    join_radius_px : float
        The first (last) spot of another flow track this close (px) to the prediction, when
        following forward (backward), joins the two tracks. (A detection in no track within the
        search region is taken as the track's spot.)
    along_gap_frames : int
        Largest gap (frames) between two unlinked detections seeding a track along the flow of
        the tracks already followed (see ``along_angle_deg``), after those are followed. 0: off.
    along_angle_deg : float
        Such a pair's velocity must point within this angle (degrees) of the velocity of a flow
        track of at least ``velocity_window`` spots whose line passes within ``along_lateral_px``
        of the pair, and not beyond its spots' extent along the line by more than that: the
        particles of one vessel flow one way.
    along_lateral_px : float
        See ``along_angle_deg`` (about half a vessel's width).
    split_jump_sd : float
        Before following, and again after it (before joining), a flow track is cut where a
        step jumps off the track's flow: farther than this many s.d. of the jitter
        (``lateral_diffusion_um2_s`` over the step's frames and one frame more for the two
        spots' localisation) from the median velocity of the ``split_window`` steps before it
        and from that of those after it, both at least ``min_speed_um_s``. In plug flow each
        particle keeps its own speed and place in the queue, so such a jump is the linker (or
        following) taking a neighbour's spot; following and joining then put the pieces back
        together by their lines. 0: off.
    split_window : int
        See ``split_jump_sd``.
    position_prior : float
        A fit at a prediction is the maximum a posteriori estimate under a Gaussian prior on
        its position centred on the prediction, of this many times the prediction's own s.d.
        (the Kalman filter's update, done on the image; 0: none, maximum likelihood). At SNR
        2-4 a fit free to move goes to the highest noise peak in its window; the prior keeps it
        on the particle the motion says is there, and a noise fit on the dim background (low
        SNR, refused) instead of on a peak.
    window_blur_frames : float
        The fit window reaches this many frames of the track's motion (px) beyond the PSF's
        3 s.d. on each side: a flowing particle's image is a streak as long as its motion over
        the exposure, light a PSF-sized window would cut off and take for background. 0.5
        covers an exposure of the whole frame.
    """

    enabled: bool = True
    min_speed_um_s: float = 10.0
    max_speed_um_s: float = 80.0
    max_residual_px: float = 2.0
    lateral_diffusion_um2_s: float = 0.5
    velocity_window: int = 10
    last_point_weight: float = 0.7
    min_snr: float = 2.0
    miss_snr_step: float = 1.0
    search_radius_px: float = 1.5
    brightness_ratio: float = 2.5
    max_misses: int = 3
    follow_rounds: int = 2
    confirm_after_misses: bool = True
    seed_gap_frames: int = 3
    seed_radius_px: float = 2.5
    seed_pairs: bool = True
    seed_min_brightness: float = 0.8
    join_radius_px: float = 1.5
    min_seed_points: int = 6
    join_gap_frames: int = 30
    along_gap_frames: int = 6
    along_angle_deg: float = 15.0
    along_lateral_px: float = 15.0
    window_blur_frames: float = 0.5
    position_prior: float = 1.0
    join_overlap_frames: int = 6
    fill_gap_frames: int = 30
    fill_min_snr: float = 2.5
    fill_min_hit_fraction: float = 0.3
    split_jump_sd: float = 4.0
    split_window: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.min_speed_um_s < self.max_speed_um_s:
            raise ValueError("need 0 < min_speed_um_s < max_speed_um_s")
        if self.max_residual_px <= 0 or self.lateral_diffusion_um2_s < 0:
            raise ValueError("max_residual_px must be > 0, lateral_diffusion_um2_s >= 0")
        if self.velocity_window < 2 or self.max_misses < 0 or self.seed_gap_frames < 0:
            raise ValueError("velocity_window >= 2, max_misses >= 0, seed_gap_frames >= 0")
        if self.min_snr < 0 or self.search_radius_px <= 0 or self.brightness_ratio < 1:
            raise ValueError("min_snr >= 0, search_radius_px > 0, brightness_ratio >= 1")
        if self.seed_radius_px <= 0 or self.join_radius_px < 0 or self.seed_min_brightness < 0:
            raise ValueError(
                "seed_radius_px must be > 0, join_radius_px and seed_min_brightness >= 0"
            )
        if self.miss_snr_step < 0 or self.min_seed_points < 2 or self.join_gap_frames < 0:
            raise ValueError("miss_snr_step >= 0, min_seed_points >= 2, join_gap_frames >= 0")
        if self.join_overlap_frames < 0 or self.fill_gap_frames < 0:
            raise ValueError("join_overlap_frames and fill_gap_frames must be >= 0")
        if self.fill_min_snr < 0 or not 0 <= self.fill_min_hit_fraction <= 1:
            raise ValueError("fill_min_snr >= 0, 0 <= fill_min_hit_fraction <= 1")
        if self.along_gap_frames < 0 or not 0 < self.along_angle_deg < 90:
            raise ValueError("along_gap_frames >= 0, 0 < along_angle_deg < 90")
        if self.along_lateral_px <= 0 or self.window_blur_frames < 0:
            raise ValueError("along_lateral_px must be > 0, window_blur_frames >= 0")
        if self.split_jump_sd < 0 or self.split_window < 2:
            raise ValueError("split_jump_sd >= 0, split_window >= 2")
        if self.follow_rounds < 1:
            raise ValueError("follow_rounds must be >= 1")
        if not self.position_prior >= 0:
            raise ValueError("position_prior must be >= 0")


def _line(t: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Least-squares straight line through points (t, xy): position (px) at the mean time,
    velocity (px/frame), r.m.s. distance of the points from the line (px), mean time."""
    tm = t.mean()
    dt = t - tm
    var = (dt**2).sum()
    centre = xy.mean(axis=0)
    vel = (dt[:, None] * (xy - centre)).sum(axis=0) / var if var > 0 else np.zeros(2)
    resid = xy - centre - dt[:, None] * vel
    rms = float(np.sqrt((resid**2).sum(axis=1).mean()))
    return centre, vel, rms, tm


def _members(keys: np.ndarray) -> dict[int, np.ndarray]:
    """Indices (ascending) of the points of each key >= 0 (a track, a frame) in ``keys``."""
    if len(keys) == 0:
        return {}
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    firsts = ordered[np.r_[0, cuts]].tolist()
    return {k: g for k, g in zip(firsts, np.split(order, cuts), strict=True) if k >= 0}


def _median_of_sorted(values: list[float]) -> float:
    """Median of an ascending list (as :func:`numpy.median`)."""
    m = len(values) // 2
    return values[m] if len(values) % 2 else (values[m - 1] + values[m]) / 2


def _seed_chains(
    f: np.ndarray,
    xy: np.ndarray,
    n: np.ndarray,
    config: FlowConfig,
    v_lo: float,
    v_hi: float,
    typical: float,
) -> list[np.ndarray]:
    """Seeds of flow tracks among unlinked detections (arrays of indices into ``f, xy, n``).

    Pairs: two detections at most ``seed_gap_frames`` frames apart, moving between ``v_lo`` and
    ``v_hi`` px/frame, of similar signal. Chains: a pair and a third detection within
    ``seed_radius_px`` (grown with the extrapolation) of the pair's line extrapolated up to
    ``seed_gap_frames`` frames. Chains first (best fit first), then, if ``seed_pairs``, the pairs
    left whose detections are both at least ``seed_min_brightness`` times the ``typical`` signal
    (shortest gap first); a detection is in one seed at most.
    """
    gmax = config.seed_gap_frames
    if gmax == 0 or len(f) < 2:
        return []
    sep = 1e4  # frames far apart in a third coordinate: one tree for the whole movie
    tree = cKDTree(np.column_stack([xy, f * sep]))
    ratio = config.brightness_ratio
    chains, pairs = [], []
    for g in range(1, gmax + 1):
        ahead = np.column_stack([xy, (f + g) * sep])
        i, j = _flatten(tree.query_ball_point(ahead, v_hi * g + 1e-9))
        step = xy[j] - xy[i]
        lo, hi = np.minimum(n[i], n[j]), np.maximum(n[i], n[j])
        keep = ~(np.hypot(step[:, 0], step[:, 1]) < v_lo * g) & ~(hi > ratio * lo)
        i, j, step, lo, hi = i[keep], j[keep], step[keep], lo[keep], hi[keep]
        bright = lo >= config.seed_min_brightness * typical
        pairs += [(g, a, b) for a, b in zip(i[bright].tolist(), j[bright].tolist(), strict=True)]
        for h in range(1, gmax + 1):
            pred = xy[j] + step / g * h
            r = config.seed_radius_px * np.sqrt(1.0 + (h / g) ** 2)
            q, k = _flatten(tree.query_ball_point(np.column_stack([pred, (f[j] + h) * sep]), r))
            ok = np.maximum(hi[q], n[k]) <= ratio * np.minimum(lo[q], n[k])
            q, k = q[ok], k[ok]
            d = xy[k] - pred[q]
            dist = np.hypot(d[:, 0], d[:, 1]) / r
            chains += zip(dist.tolist(), i[q].tolist(), j[q].tolist(), k.tolist(), strict=True)
    used = np.zeros(len(f), bool)
    seeds = []
    for cand in sorted(chains) + (sorted(pairs) if config.seed_pairs else []):
        idx = list(cand[1:])
        if not used[idx].any():
            used[idx] = True
            seeds.append(np.array(idx))
    return seeds


def _flow_lines(
    members: dict[int, np.ndarray], f: np.ndarray, xy: np.ndarray, min_points: int, v_lo: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Straight lines of the tracks (``members``: point indices) of at least ``min_points``
    points moving at least ``v_lo`` px/frame: centre (px), unit direction of motion, and the
    extent (px, lowest and highest) of the points along it from the centre."""
    rows = []
    for idx in members.values():
        if len(idx) < min_points:
            continue
        centre, vel, _, _ = _line(f[idx].astype(float), xy[idx])
        speed = math.hypot(*vel)
        if speed < v_lo:
            continue
        u = vel / speed
        along = (xy[idx] - centre) @ u
        rows.append((*centre, *u, along.min(), along.max()))
    arr = np.array(rows, dtype=float).reshape(-1, 6)
    return arr[:, :2], arr[:, 2:4], arr[:, 4], arr[:, 5]


def _seed_along(
    f: np.ndarray,
    xy: np.ndarray,
    lines: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    config: FlowConfig,
    v_lo: float,
    v_hi: float,
) -> list[np.ndarray]:
    """Pairs of detections (indices into ``f, xy``) moving along a known flow line.

    Two detections at most ``config.along_gap_frames`` frames apart, moving between ``v_lo`` and
    ``v_hi`` px/frame, whose velocity points within ``config.along_angle_deg`` of the direction
    of one of ``lines`` (:func:`_flow_lines`) whose line passes within
    ``config.along_lateral_px`` of the pair's midpoint, inside its extent widened by that much.
    Shortest gap first, then smallest angle; a detection is in one pair at most.
    """
    centre, unit, lo, hi = lines
    gmax = config.along_gap_frames
    if gmax == 0 or len(f) < 2 or len(centre) == 0:
        return []
    sep = 1e4  # frames far apart in a third coordinate: one tree for the whole movie
    tree = cKDTree(np.column_stack([xy, f * sep]))
    cos_min = math.cos(math.radians(config.along_angle_deg))
    reach = config.along_lateral_px
    # each line reaches the pairs within its extent (widened by ``reach``) of its centre
    radius = np.hypot(np.maximum(np.abs(lo - reach), np.abs(hi + reach)), reach) + 1e-9
    cands = []
    for g in range(1, gmax + 1):
        i, j = _flatten(tree.query_ball_point(np.column_stack([xy, (f + g) * sep]), v_hi * g))
        step = (xy[j] - xy[i]) / g
        speed = np.hypot(step[:, 0], step[:, 1])
        keep = speed >= v_lo
        i, j, step, speed = i[keep], j[keep], step[keep], speed[keep]
        mid = 0.5 * (xy[i] + xy[j])
        best = np.full(len(i), -1.0)  # cosine to the best-aligned line the pair lies along
        tree_mid = cKDTree(mid)
        for k in range(len(centre)):  # one line at a time: memory stays that of one answer
            near = tree_mid.query_ball_point(centre[k], radius[k])
            if not near:
                continue
            near = np.asarray(near)
            u0, u1 = unit[k]
            rel = mid[near] - centre[k]
            along = rel[:, 0] * u0 + rel[:, 1] * u1
            lateral = np.abs(rel[:, 0] * u1 - rel[:, 1] * u0)
            cos = (step[near, 0] * u0 + step[near, 1] * u1) / speed[near]
            ok = (lateral <= reach) & (along >= lo[k] - reach) & (along <= hi[k] + reach)
            best[near] = np.maximum(best[near], np.where(ok, cos, -1.0))
        sel = best >= cos_min
        cands += zip(
            [g] * int(sel.sum()),
            (-best[sel]).tolist(),
            i[sel].tolist(),
            j[sel].tolist(),
            strict=True,
        )
    used = np.zeros(len(f), bool)
    seeds = []
    for _, _, a, b in sorted(cands):
        if not (used[a] or used[b]):
            used[[a, b]] = True
            seeds.append(np.array([a, b]))
    return seeds


def _jump_cuts(
    f: np.ndarray, xy: np.ndarray, v_lo: float, var_step: float, max_sd: float, window: int
) -> np.ndarray:
    """Steps of one track (index ``k``: from point ``k`` to ``k + 1``, points in frame order)
    that jump off its flow.

    A step of ``g`` frames is a jump if it lies farther than ``max_sd * sqrt(var_step * (g +
    1))`` px from ``g`` times the median velocity (px/frame) of the ``window`` steps before it
    and from that of the ``window`` steps after it (a side with fewer than 2 steps is not
    asked); if either side moves slower than ``v_lo`` px/frame (the particle stopping, or not
    flowing) it is not.
    """
    step = np.diff(xy, axis=0)
    gap = np.diff(f).astype(float)
    vel = step / gap[:, None]
    # a side's median velocity reaches v_lo only if half its steps reach v_lo / sqrt(2) (in one
    # axis at least): the steps of a track that never flows need no median
    n = len(step)
    fast = np.r_[0, np.cumsum(np.hypot(vel[:, 0], vel[:, 1]) >= v_lo / math.sqrt(2))]
    k = np.arange(n)
    n_before, n_after = np.minimum(k, window), np.minimum(n - 1 - k, window)
    before = (fast[k] - fast[k - n_before]) * 2 >= n_before
    after = (fast[k + 1 + n_after] - fast[k + 1]) * 2 >= n_after
    k = np.flatnonzero((before | (n_before < 2)) & (after | (n_after < 2)))
    if not len(k):
        return k.astype(np.int64)
    # windows[i] holds velocities i - window .. i - 1 (NaN off the track): the steps before
    # step k are windows[k], those after it windows[k + 1 + window]
    padded = np.full((n + 2 * window, 2), np.nan)
    padded[window : window + n] = vel
    windows = sliding_window_view(padded, window, axis=0)  # (n + window + 1, 2, window)
    thr = max_sd * np.sqrt(var_step * (gap[k] + 1))
    slow = np.zeros(len(k), bool)
    dev = np.full(len(k), np.inf)
    asked = np.zeros(len(k), bool)
    for side, count in ((windows[k], n_before[k]), (windows[k + 1 + window], n_after[k])):
        use = count >= 2
        ordered = np.sort(side[use], axis=-1)  # NaN last: the median of the first ``count``
        c = count[use][:, None, None]
        low, high = (np.take_along_axis(ordered, i, -1)[..., 0] for i in ((c - 1) // 2, c // 2))
        v = 0.5 * (low + high)
        slow[use] |= np.hypot(v[:, 0], v[:, 1]) < v_lo
        d = np.hypot(*(step[k[use]] - v * gap[k[use], None]).T)
        dev[use] = np.minimum(dev[use], d)
        asked |= use
    return k[asked & ~slow & (dev > thr)].astype(np.int64)


def _map_fit(
    box: np.ndarray,
    ox: int,
    oy: int,
    pred: np.ndarray,
    prior_sd: float,
    start: Fit,
    sigma: float,
    camera: Camera,
) -> tuple[float, float, float, float, float, float, bool]:
    """Maximum a posteriori fit of one spot in ``box`` (effective photons, shape (1, W, W),
    top-left pixel at column ``ox``, row ``oy``) under a Gaussian prior (``prior_sd`` px per
    axis) on its position centred on ``pred`` (px), from the maximum-likelihood fit ``start``
    (its photons and background); ``sigma`` the PSF s.d. (px), ``camera`` the camera model.

    Returns
    -------
    x, y, photons, x_err, y_err, photons_err, ok
        Position (px), light (effective photons), their s.d. (prior included), and whether
        both ``start`` and this fit converged to positive light inside the box (as
        :func:`spt.localize.fit_spots` accepts: a spot beyond the image's edge is none of its
        spots; the prior refines a spot the image shows, it does not make one where the image
        alone finds none, e.g. a spot entering the field, its centre still outside).
    """
    n0 = float(start.photons[0]) if np.isfinite(start.photons[0]) else 1.0
    b0 = float(start.background[0]) if np.isfinite(start.background[0]) else 1.0
    x, y, n, err, ok, _ = fit_groups(
        box,
        np.array([ox]),
        np.array([oy]),
        pred[None, :1],
        pred[None, 1:],
        np.array([[n0]]),
        np.array([b0]),
        sigma,
        read_var=camera.read_var_effective,
        prior_sd=np.array([[prior_sd]]),
    )
    x, y, n, e, side = x[0, 0], y[0, 0], n[0, 0], err[0, 0], box.shape[-1]
    inside = ox - 0.5 < x < ox + side - 0.5 and oy - 0.5 < y < oy + side - 0.5
    return x, y, n, e[0], e[1], e[2], bool(start.ok[0] and ok[0]) and inside and n > 0


def _flatten(lists) -> tuple[np.ndarray, np.ndarray]:
    """``(query, point)`` index pairs of a :meth:`cKDTree.query_ball_point` answer."""
    lens = np.fromiter(map(len, lists), np.int64, len(lists))
    found = np.fromiter(itertools.chain.from_iterable(lists), np.int64, int(lens.sum()))
    return np.repeat(np.arange(len(lists)), lens), found


def follow_flow(
    tracks: pd.DataFrame,
    frames,
    *,
    camera: Camera,
    psf_sigma_px: float,
    pixel_size_um: float,
    frame_interval_s: float,
    config: FlowConfig = FlowConfig(),
    spots: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Seed and extend tracks of particles carried by flow, along their straight line.

    A particle in plug flow moves on a straight line at a constant speed, with lateral jitter;
    its image is a motion-blurred streak, dim enough at low photon counts to be detected in only
    a third of its frames. Three steps recover it:

    * **cutting**: a track is cut where a step jumps off its flow (``split_jump_sd``): in plug
      flow each particle keeps its own speed and place in the queue, so a jump is the linker
      taking a neighbour's spot; the pieces are followed and joined on their own lines (the
      tracks followed are cut again, before joining);
    * **seeding**: three unlinked detections within a few frames on one straight line at a flow
      speed, or two bright ones at a flow speed, start a new track (track-before-detect on
      detections: random detections rarely line up); a seed is kept only if following it
      (below) brings it to ``min_seed_points`` spots;
    * **following**: from each end of every flow track (straight-line velocity of at least
      ``min_speed_um_s`` and small residual over the ``velocity_window`` points nearest the
      end), the next frame's position is predicted from the last spot (weighted with the line,
      as a steady-state Kalman filter of drift plus random walk) moved by the line's velocity;
      a pixel-integrated Gaussian is fitted there by Poisson MLE (Smith et al., Nat Methods
      2010), refined to the maximum a posteriori under the prediction as a prior on its
      position (``position_prior``: the Kalman update on the image), and accepted at a low
      SNR, higher after each frame without a spot unless the next frame confirms it
      (u-track's Kalman propagation and gap closing, Jaqaman et al., Nat Methods 2008,
      applied to the image), through up to ``max_misses`` frames in a row
      without a spot, until the line leaves the field. A detection in no track at the
      prediction is taken; the first (last) spot of another flow track joins the two;
    * **joining**: the end of a flow track and the start of a later one whose lines reach each
      other's spots (within ``join_gap_frames``) are joined, one-to-one by a sparse LAP;
    * **gap filling**: each frame missing inside a flow track (up to ``fill_gap_frames``) is
      fitted at the straight line between the spots either side, where the particle is far
      better known (a Brownian bridge) than following could predict from one side.

    Following, joining and gap filling are repeated (``follow_rounds``): an end that stopped
    at the spots of a seed since dropped, or whose track has been joined or filled since, is
    followed again.

    Parameters
    ----------
    tracks : DataFrame
        Tracks (``frame, x, y, particle, signal``; px), e.g. from :func:`spt.guided.guided_detect`.
    frames : array-like, shape (T, Y, X)
        The raw movie in ADU, indexable by frame slices.
    camera : Camera
        The camera detection used.
    psf_sigma_px : float
        PSF s.d. (px) detection used.
    pixel_size_um, frame_interval_s : float
        Calibration (um/px, s).
    config : FlowConfig
        Parameters.
    spots : DataFrame, optional
        All detections; those in no track can seed flow tracks or be taken by one.

    Returns
    -------
    DataFrame
        ``tracks`` with the new spots and tracks (``signal``/``background`` in the units of the
        input, ``sigma`` the PSF width), joined tracks sharing one ``particle``, renumbered from
        0 in order of first appearance and sorted by particle then frame.
    """
    if not (pixel_size_um > 0 and frame_interval_s > 0):
        raise SptInputError("follow_flow", "pixel_size_um and frame_interval_s must be > 0")
    missing = [c for c in ("frame", "x", "y", "particle", "signal") if c not in tracks.columns]
    if missing:
        raise SptInputError("tracks", f"missing column(s) {', '.join(missing)}")
    if len(np.shape(frames)) != 3:
        raise SptInputError("frames", f"expected a (T, Y, X) movie, got shape {np.shape(frames)}")
    if not config.enabled or len(tracks) == 0:
        return tracks
    return _Follower(
        tracks, frames, camera, psf_sigma_px, pixel_size_um, frame_interval_s, config, spots
    ).run()


class _Follower:
    """State of the flow pass: all points (track rows, unlinked detections, new fits)."""

    def __init__(self, tracks, frames, camera, sigma, pixel_size_um, dt, config, spots):
        self.frames = frames
        self.camera = camera
        self.sigma = float(sigma)
        self.config = config
        self.shape = np.shape(frames)
        f2 = camera.excess_noise
        self.to_out = f2 if camera.calibrated else camera.adu_per_photon * f2
        self.px_per_frame = dt / pixel_size_um  # (um/s) -> px/frame
        self.var_lat = 2 * config.lateral_diffusion_um2_s * dt / pixel_size_um**2
        self.tracks = tracks.reset_index(drop=True)
        free = None
        if spots is not None and len(spots):
            keys = ["frame", "x", "y"]
            taken = self.tracks[keys].drop_duplicates()
            m = spots[keys].merge(taken, on=keys, how="left", indicator=True)
            free = spots[(m["_merge"] == "left_only").to_numpy()].reset_index(drop=True)
        self.free = free
        # all points: track rows first, then unlinked detections; owner -1 = in no track
        parts = [self.tracks[["frame", "x", "y", "signal"]]]
        if free is not None:
            parts.append(free[["frame", "x", "y", "signal"]])
        pts = pd.concat(parts, ignore_index=True)
        # point arrays with spare room at the end: fits are added one at a time
        self.size = len(pts)
        self.n_measured = self.size  # points from here on are the flow pass's own fits
        cap = self.size + 1024
        self._f = np.empty(cap, np.int64)
        self._xy = np.empty((cap, 2))
        self._n = np.empty(cap)
        self._owner = np.full(cap, -1, np.int64)
        self.f[:] = pts["frame"].to_numpy(np.int64)
        self.xy[:] = pts[["x", "y"]].to_numpy(float)
        self.n[:] = pts["signal"].to_numpy(float) / self.to_out
        n_tr = len(self.tracks)
        self.owner[:n_tr] = self.tracks["particle"].to_numpy()
        self.n_track_rows = n_tr
        self.new_rows: list[tuple] = []  # particle, frame, x, y, n, b, x_err, y_err
        self.by_frame: dict[int, np.ndarray] = _members(self.f)  # points of each frame
        self._fits_since_release = 0

    # -- points -----------------------------------------------------------------------------
    @property
    def f(self) -> np.ndarray:
        """Frame of every point."""
        return self._f[: self.size]

    @property
    def xy(self) -> np.ndarray:
        """Position (px) of every point, shape (n, 2)."""
        return self._xy[: self.size]

    @property
    def n(self) -> np.ndarray:
        """Signal (effective photons) of every point."""
        return self._n[: self.size]

    @property
    def owner(self) -> np.ndarray:
        """Track of every point (-1: in no track); a view, so assignments stick."""
        return self._owner[: self.size]

    def _near(self, t: int, p: np.ndarray, r: float) -> np.ndarray:
        """Indices of the points of frame ``t`` within ``r`` px of ``p``."""
        idx = self.by_frame.get(int(t))
        if idx is None:
            return np.empty(0, np.int64)
        d2 = ((self.xy[idx] - p) ** 2).sum(axis=1)
        return idx[d2 <= r * r]

    def _add_point(self, t, x, y, n, owner) -> int:
        k = self.size
        if k == len(self._f):  # full: double the room
            self._f = np.concatenate([self._f, np.empty(k, np.int64)])
            self._xy = np.concatenate([self._xy, np.empty((k, 2))])
            self._n = np.concatenate([self._n, np.empty(k)])
            self._owner = np.concatenate([self._owner, np.full(k, -1, np.int64)])
        self._f[k], self._xy[k], self._n[k], self._owner[k] = t, (x, y), n, owner
        self.members[owner].append(k)
        self.size = k + 1
        t = int(t)
        self.by_frame[t] = np.append(self.by_frame.get(t, np.empty(0, np.int64)), k)
        return k

    def _release(self, points) -> None:
        """Put ``points`` in no track: detections become free again, fits are discarded."""
        points = np.asarray(points, np.int64)
        self.owner[points] = np.where(points < self.n_measured, -1, _DISCARDED)

    def run(self) -> pd.DataFrame:
        cfg = self.config
        v_lo = self.v_lo = cfg.min_speed_um_s * self.px_per_frame
        v_hi = cfg.max_speed_um_s * self.px_per_frame
        next_id = int(self.tracks["particle"].max()) + 1
        if cfg.split_jump_sd:
            next_id = self._split_jumps(next_id)
        # seeds from unlinked detections
        free_idx = np.flatnonzero(self.owner == -1)
        typical = float(np.median(self.n[: self.n_track_rows]))
        chains = _seed_chains(
            self.f[free_idx], self.xy[free_idx], self.n[free_idx], cfg, v_lo, v_hi, typical
        )
        seeds = set()
        for ch in chains:
            self.owner[free_idx[ch]] = next_id
            seeds.add(next_id)
            next_id += 1
        # flow tracks: straight and fast near an end (a whole track bends with the jitter)
        # each track's points, kept up to date from here on (takes, fits, joins, new seeds)
        self.members = {k: v.tolist() for k, v in _members(self.owner).items()}
        flow = []
        for p, idx in self.members.items():
            idx = np.array(idx)
            if p in seeds:
                flow.append(int(p))
                continue
            if len(idx) < 3:
                continue
            idx = idx[np.argsort(self.f[idx])]
            w = cfg.velocity_window
            for end in (idx[:w], idx[-w:]):
                _, vel, rms, _ = _line(self.f[end].astype(float), self.xy[end])
                if np.hypot(*vel) >= v_lo and rms <= cfg.max_residual_px:
                    flow.append(int(p))
                    break
        self.flow = set(flow)
        self.alias: dict[int, int] = {}
        self._follow_all(flow)
        if cfg.along_gap_frames:
            # particles of one vessel flow one way: the tracks followed so far say which way,
            # so two unlinked detections moving that way are a likely seed
            free_idx = np.flatnonzero(self.owner == -1)
            roots = {p: np.array(self.members[p]) for p in self.flow if p in self.members}
            lines = _flow_lines(roots, self.f, self.xy, cfg.velocity_window, v_lo)
            for pair in _seed_along(self.f[free_idx], self.xy[free_idx], lines, cfg, v_lo, v_hi):
                if (self.owner[free_idx[pair]] != -1).any():
                    continue  # taken by a track followed from an earlier pair
                self.owner[free_idx[pair]] = next_id
                self.members[next_id] = free_idx[pair].tolist()
                seeds.add(next_id)
                self.flow.add(next_id)
                for direction in (1, -1):
                    if self._root(next_id) == next_id:
                        self._follow(next_id, direction)
                next_id += 1
        release_mapped_pages(self.frames)
        if cfg.split_jump_sd:
            next_id = self._split_followed(next_id)
        for again in range(cfg.follow_rounds):
            if again:
                # ends that stopped where a seed since dropped held the spots, or whose track a
                # cut, a join or filled gaps have changed since, may go on
                first = {p: self.f[self.members[p]].min() for p in self.flow if self.members.get(p)}
                self._follow_all(sorted(first, key=first.get))
                release_mapped_pages(self.frames)
            if cfg.join_gap_frames:
                self._join_fragments(v_lo)
            # a seed must be confirmed by what following it found (track-before-detect)
            for p in seeds:
                if self._root(p) == p and len(self.members.get(p, ())) < cfg.min_seed_points:
                    self._release(self.members.pop(p, []))
                    self.flow.discard(p)
            if cfg.fill_gap_frames:
                self._fill_gaps()
                release_mapped_pages(self.frames)
        return self._table()

    def _follow_all(self, tracks: list[int]) -> None:
        """Follow the ends of ``tracks`` (flow tracks, in this order), forward then backward;
        a track joined into another by then is followed as part of it."""
        for direction in (1, -1):
            for p in tracks:
                if self._root(p) == p:
                    self._follow(p, direction)

    def _pieces(self, idx: np.ndarray) -> list[np.ndarray]:
        """The points ``idx`` of one track in frame order, cut where a step jumps off their flow
        (:func:`_jump_cuts`; a track of fewer than 4 points is not cut)."""
        idx = idx[np.argsort(self.f[idx], kind="stable")]
        if len(idx) < 4:
            return [idx]
        cfg = self.config
        cuts = _jump_cuts(
            self.f[idx], self.xy[idx], self.v_lo, self.var_lat, cfg.split_jump_sd, cfg.split_window
        )
        return np.split(idx, cuts + 1)

    def _split_jumps(self, next_id: int) -> int:
        """Cut the input tracks where a step jumps off their flow (:func:`_jump_cuts`); each
        piece after a cut a new track (ids from ``next_id``), a piece of fewer than 3 points
        free detections (dropped if no track takes them: mostly noise, or a spot of a
        neighbour's, which has its own). Returns the next unused id."""
        for idx in _members(self.owner[: self.n_track_rows]).values():
            pieces = self._pieces(idx)
            for i, piece in enumerate(pieces if len(pieces) > 1 else ()):
                if len(piece) < 3:
                    self.owner[piece] = -1
                elif i:
                    self.owner[piece] = next_id
                    next_id += 1
        return next_id

    def _split_followed(self, next_id: int) -> int:
        """Cut the flow tracks followed where a step jumps off their flow (:func:`_jump_cuts`),
        before joining: following has made them longer, so a jump following took (a neighbour's
        spot at the prediction) shows against more steps either side. Each piece of at least 3
        points is a flow track (the first keeps the id, the others new ones from ``next_id``),
        a shorter one's points are put in no track (:meth:`_release`). Returns the next unused
        id."""
        for p in sorted({self._root(q) for q in self.flow}):
            pieces = self._pieces(np.asarray(self.members.get(p, []), np.int64))
            if len(pieces) < 2:
                continue
            self.members[p] = []
            for piece in pieces:
                if len(piece) < 3:
                    self._release(piece)
                    continue
                q = next_id if self.members[p] else p
                if q != p:
                    next_id += 1
                    self.flow.add(q)
                self.owner[piece] = q
                self.members[q] = piece.tolist()
        return next_id

    def _fill_gaps(self) -> None:
        """Fit the frames missing inside each flow track, at the straight line between the spots
        either side of the gap.

        A random walk with drift, pinned at both ends of a gap of ``G`` frames, is a Brownian
        bridge: its mean ``h`` frames in is the linear interpolation of the two spots (the drift
        cancels), its variance per axis ``var_lat * h * (G - h) / G``, at most a quarter of the
        one-sided prediction's ``var_lat * G`` that following had at the gap's middle. So the
        search region is small (2 s.d., not following's 2.5: at SNR 2-3 a fit further off has
        mostly been pulled onto a noise peak), and a fit is accepted at ``fill_min_snr``
        whatever the gap's length; gaps longer than ``fill_gap_frames`` are left (a blink, or a
        join across one), and so are a gap's spots if fewer than ``fill_min_hit_fraction`` of
        its frames have one. Another track's spot in the gap is not joined (joins are
        :meth:`_join_fragments`' and following's).
        """
        cfg = self.config
        for p in sorted({self._root(q) for q in self.flow}):
            idx = self.members.get(p)
            if not idx or self.owner[idx[0]] != p:
                continue  # joined into another track, or an unconfirmed seed
            idx = np.array(idx)
            idx = idx[np.argsort(self.f[idx])]
            ref = float(np.median(self.n[idx]))
            gaps = np.diff(self.f[idx])
            for a in np.flatnonzero((gaps > 1) & (gaps <= cfg.fill_gap_frames + 1)):
                ka, kb = int(idx[a]), int(idx[a + 1])
                gap = int(self.f[kb] - self.f[ka])
                step = (self.xy[kb] - self.xy[ka]) / gap
                self._need, self._speed = cfg.fill_min_snr, math.hypot(*step)
                got = []
                for h in range(1, gap):
                    pred = self.xy[ka] + step * h
                    sd = math.sqrt(self.var_lat * (h * (gap - h) / gap + 0.5))
                    radius = math.hypot(cfg.search_radius_px, 2.0 * sd)
                    # the region is 2 s.d. of the prediction's whole error
                    k = self._take_or_fit(p, int(self.f[ka]) + h, pred, radius / 2, radius, ref, 0)
                    if k >= 0:
                        got.append(k)
                if got and len(got) < cfg.fill_min_hit_fraction * (gap - 1):
                    # a blink: the dot was off, the few fits that passed are noise
                    self._release(got)
                    del self.members[p][-len(got) :]

    def _join_fragments(self, v_lo: float) -> None:
        """Join the end of a flow track to the start of a later one on its line (one-to-one,
        sparse LAP on the normalised distance between each end's prediction and the other's
        spot), across up to ``join_gap_frames`` frames."""
        cfg = self.config
        w = cfg.velocity_window
        roots = sorted({self._root(p) for p in self.flow})
        ends = []  # (track, first t, last t, head line, tail line, median n)
        for p in roots:
            idx = np.sort(np.asarray(self.members.get(p, []), np.int64))
            if len(idx) < 3:
                continue
            idx = idx[np.argsort(self.f[idx])]
            head = _line(self.f[idx[:w]].astype(float), self.xy[idx[:w]])
            tail = _line(self.f[idx[-w:]].astype(float), self.xy[idx[-w:]])
            ends.append(
                (
                    p,
                    self.f[idx[0]],
                    self.f[idx[-1]],
                    head,
                    tail,
                    np.median(self.n[idx]),
                    self.xy[idx[0]],
                    self.xy[idx[-1]],
                )
            )
        if not ends:
            return
        # each track's first frame, head line (its start), brightness and first spot, as arrays
        t_first, t_last = np.array([e[1] for e in ends]), np.array([e[2] for e in ends])
        c_head, v_head = np.array([e[3][0] for e in ends]), np.array([e[3][1] for e in ends])
        r_head, m_head = np.array([e[3][2] for e in ends]), np.array([e[3][3] for e in ends])
        v_tail, r_tail = np.array([e[4][1] for e in ends]), np.array([e[4][2] for e in ends])
        bright = np.array([e[5] for e in ends])
        first = np.array([e[6] for e in ends])
        fast_head = ~(np.hypot(v_head[:, 0], v_head[:, 1]) < v_lo) & ~(r_head > cfg.max_residual_px)
        fast_tail = ~(np.hypot(v_tail[:, 0], v_tail[:, 1]) < v_lo) & ~(r_tail > cfg.max_residual_px)
        rows, cols, cost = [], [], []
        for a in np.flatnonzero(fast_tail):
            _, _, t1, _, (ca, va, ra, ma), na, _, last_a = ends[a]
            h = t_first - t1
            ok = (h >= 1 - cfg.join_overlap_frames) & (h <= cfg.join_gap_frames) & fast_head
            # the later one starts and ends later (so no chain of joins loops back)
            ok &= (t_first > t_first[a]) & (t_last > t1)
            ok &= ~(np.maximum(na, bright) > cfg.brightness_ratio * np.minimum(na, bright))
            # overlapping in time (two pieces of one streak followed into each other): only
            # if no frame holds a spot of both
            frames_a = self.f[self.members[ends[a][0]]]
            for k in np.flatnonzero(ok & (h < 1)):
                ok[k] = not np.isin(self.f[self.members[ends[k][0]]], frames_a).any()
            b = np.flatnonzero(ok)
            if len(b) == 0:
                continue
            h, rb = np.abs(h[b]), r_head[b]
            # each end's line must reach the other's spot
            sd = np.sqrt(self.var_lat * h + (ra**2 + rb**2) * (1.0 + 3.0 * h**2 / w**2))
            fw = ca + va * (t_first[b] - ma)[:, None] - first[b]
            bw = c_head[b] + v_head[b] * (t1 - m_head[b])[:, None] - last_a
            d_fw, d_bw = np.hypot(fw[:, 0], fw[:, 1]), np.hypot(bw[:, 0], bw[:, 1])
            r = np.hypot(cfg.search_radius_px, 2.5 * sd)
            dv = va - v_head[b]
            keep = (d_fw <= r) & (d_bw <= r)
            keep &= np.hypot(dv[:, 0], dv[:, 1]) <= 0.3 * np.hypot(*va) + 1.0
            rows += [int(a)] * int(keep.sum())
            cols += b[keep].tolist()
            cost += (0.5 * (d_fw[keep] + d_bw[keep]) / r[keep] - 1.0).tolist()
        if not rows:
            return
        r_sel, c_sel = solve_sparse_lap(
            np.array(rows), np.array(cols), np.array(cost), len(ends), len(ends)
        )
        parent = {ends[c][0]: ends[r][0] for r, c in zip(r_sel, c_sel, strict=True)}
        for b in [ends[c][0] for c in c_sel]:
            a = parent[b]
            while a in parent:
                a = parent[a]
            moved = self.members.pop(b)
            self.owner[moved] = a
            self.members[a] += moved
            self.alias[b] = a

    def _root(self, p: int) -> int:
        while p in self.alias:
            p = self.alias[p]
        return p

    def _follow(self, p: int, direction: int) -> None:
        """Follow track ``p`` beyond its last (first) frame along its line."""
        cfg = self.config
        n_frames, ny, nx = self.shape
        idx = np.sort(self.members[p])
        order = np.argsort(self.f[idx])
        # the track's points, running towards the end followed; only this loop adds to them
        idx = (idx[order] if direction > 0 else idx[order][::-1]).tolist()
        signals = sorted(self.n[idx].tolist())
        misses = 0
        line = None
        # a dim fit after misses, to be confirmed: (point, misses before it, need, its SNR)
        pending = None
        while True:
            if line is None:  # the track changed: its line, anchor and brightness again
                end_t = int(self.f[idx[-1]])
                near_end = np.array(idx[-cfg.velocity_window :])
                f_end = self.f[near_end].astype(float)
                centre, vel, rms, tm = line = _line(f_end, self.xy[near_end])
                if math.hypot(*vel) < self.v_lo or rms > cfg.max_residual_px:
                    break
                ref = _median_of_sorted(signals)
                # drift plus a random walk: the last spot says more about where the particle
                # is than the straight line does (a steady-state Kalman gain); the line gives
                # the drift
                anchor = cfg.last_point_weight * self.xy[idx[-1]] + (1 - cfg.last_point_weight) * (
                    centre + vel * (end_t - tm)
                )
                span = max(1.0, float(np.ptp(f_end)))
            t = end_t + direction * (misses + 1)
            if not 0 <= t < n_frames:
                break
            pred = anchor + vel * (t - end_t)
            if not (-0.5 < pred[0] < nx - 0.5 and -0.5 < pred[1] < ny - 0.5):
                break
            h = misses + 1
            sd = math.sqrt(self.var_lat * (h + 0.5) + 3.0 * (rms * h / span) ** 2)
            radius = math.hypot(cfg.search_radius_px, 2.5 * sd)
            need = cfg.min_snr + cfg.miss_snr_step * misses
            self._need = cfg.min_snr if cfg.confirm_after_misses else need
            self._speed = math.hypot(*vel)
            # the region is 2.5 s.d. of the prediction's whole error
            got = self._take_or_fit(p, t, pred, radius / 2.5, radius, ref, direction)
            if got == _JOINED:
                return
            fit = got >= self.n_measured
            if pending is not None and got >= 0 and fit:
                # the pair's evidence: as much as a fit at the threshold and one at min_snr
                _, _, need0, snr0 = pending
                if snr0**2 + self.fit_snr**2 < need0**2 + cfg.min_snr**2:
                    self.members[p].remove(got)
                    self._release([got])
                    got = -1
            if got >= 0:
                # after misses, a fit short of ``need`` stands only if the next frame has a spot
                dim = fit and not self.fit_snr >= need
                pending = (got, misses, need, self.fit_snr) if dim and pending is None else None
                idx.append(got)
                insort(signals, float(self.n[got]))
                misses = 0
                line = None
            elif pending is not None:
                # not confirmed: on from the spot before it, both frames missed
                self._unfollow(p, idx, signals, pending[0])
                misses, pending = pending[1] + 2, None
                line = None
                if misses > cfg.max_misses:
                    return
            else:
                misses += 1
                if misses > cfg.max_misses:
                    return
        if pending is not None:
            self._unfollow(p, idx, signals, pending[0])

    def _unfollow(self, p: int, idx: list, signals: list, k: int) -> None:
        """Take the last point ``k`` (an unconfirmed fit) off track ``p`` being followed
        (``idx``: its points towards the end followed; ``signals``: theirs, sorted)."""
        idx.pop()
        signals.remove(float(self.n[k]))
        self.members[p].remove(k)
        self._release([k])

    def _take_or_fit(self, p, t, pred, sd, radius, ref, direction) -> int:
        """Give track ``p`` a spot in frame ``t`` near ``pred`` (s.d. ``sd`` px per axis): an
        unlinked detection, or a fit there. Returns the point's index, -1 if none, or
        ``_JOINED`` if the spot there began (``direction`` 1) or ended (-1) another flow track,
        which is joined to ``p`` (``direction`` 0: never)."""
        cfg = self.config
        lo, hi = ref / cfg.brightness_ratio, ref * cfg.brightness_ratio
        close = self._near(t, pred, max(cfg.join_radius_px, radius))
        own_frames = None
        for k in sorted(close, key=lambda k: np.hypot(*(self.xy[k] - pred))):
            d = np.hypot(*(self.xy[k] - pred))
            o = int(self.owner[k])
            if not lo <= self.n[k] <= hi:
                continue
            if o == -1 and d <= radius:
                self.owner[k] = p
                self.members[p].append(int(k))
                return int(k)
            if direction and o >= 0 and o != p and o in self.flow and d <= cfg.join_radius_px:
                other = self.members[o]
                edge = self.f[other].min() if direction > 0 else self.f[other].max()
                if own_frames is None:
                    own_frames = self.f[self.members[p]]
                if edge == t and not np.isin(self.f[other], own_frames).any():
                    self.owner[other] = p
                    self.members[p] += self.members.pop(o)
                    self.alias[o] = p
                    return _JOINED
        if any(np.hypot(*(self.xy[k] - pred)) <= 2.0 and self.owner[k] >= 0 for k in close):
            return -1  # another track's spot there: do not fit over it
        return self._fit(p, t, pred, sd, radius, lo, hi)

    def _fit(self, p, t, pred, sd, radius, lo, hi) -> int:
        """Fit a spot at ``pred`` (s.d. ``sd`` px per axis) in frame ``t``; its new point's
        index if accepted, else -1. The maximum-likelihood fit starts the maximum a posteriori
        one (``position_prior``) and gives the background."""
        n_frames, ny, nx = self.shape
        reach = 3 * self.sigma + self.config.window_blur_frames * self._speed
        half = max(1, min(int(np.ceil(reach)), (min(ny, nx) - 1) // 2))
        side = 2 * half + 1
        ox = min(max(int(np.rint(pred[0])) - half, 0), nx - side)
        oy = min(max(int(np.rint(pred[1])) - half, 0), ny - side)
        raw = np.asarray(self.frames[t : t + 1])[0, oy : oy + side, ox : ox + side]
        self._fits_since_release += 1
        if self._fits_since_release >= _FITS_PER_RELEASE:
            # a memory-mapped movie: each read maps pages around the window; drop them now
            # and then, so a movie larger than memory stays within bounded resident memory
            release_mapped_pages(self.frames)
            self._fits_since_release = 0
        box = self.camera.to_effective(raw)[None].astype(np.float32)
        fit = fit_spots(
            box,
            np.array([ox]),
            np.array([oy]),
            np.array([pred[0]]),
            np.array([pred[1]]),
            self.sigma,
            read_var=self.camera.read_var_effective,
        )
        x, y, n, n_err = fit.x[0], fit.y[0], fit.photons[0], fit.photons_err[0]
        x_err, y_err, ok = fit.x_err[0], fit.y_err[0], bool(fit.ok[0])
        if ok and self.config.position_prior > 0:  # a MAP fit needs a converged start
            x, y, n, x_err, y_err, n_err, ok = _map_fit(
                box, ox, oy, pred, self.config.position_prior * sd, fit, self.sigma, self.camera
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = self.fit_snr = float(n / n_err)
        ok = ok and snr >= self._need and lo <= n <= hi
        ok = ok and np.hypot(x - pred[0], y - pred[1]) <= radius
        if not ok:
            return -1
        if (self.owner[self._near(t, np.array([x, y]), 1.0)] != _DISCARDED).any():
            return -1
        k = self._add_point(t, x, y, n, p)
        self.new_rows.append((p, t, x, y, n, fit.background[0], x_err, y_err, k))
        return k

    def _table(self) -> pd.DataFrame:
        own = self.owner[: self.n_track_rows]
        # track rows a cut left in no track, and no track took, are dropped: mostly noise
        out = self.tracks[own >= 0].assign(particle=own[own >= 0])
        parts = [out]
        n_free = 0 if self.free is None else len(self.free)
        if n_free:
            own = self.owner[self.n_track_rows : self.n_track_rows + n_free]
            taken = self.free[own >= 0].assign(particle=own[own >= 0])
            parts.append(taken)
        if self.new_rows:
            arr = np.array(self.new_rows, dtype=float)
            arr = arr[self.owner[arr[:, 8].astype(np.int64)] >= 0]
            k = arr[:, 8].astype(np.int64)
            parts.append(
                pd.DataFrame(
                    {
                        "particle": self.owner[k],
                        "frame": arr[:, 1].astype(np.int64),
                        "x": arr[:, 2],
                        "y": arr[:, 3],
                        "signal": arr[:, 4] * self.to_out,
                        "background": arr[:, 5] * self.to_out
                        + (0.0 if self.camera.calibrated else self.camera.offset_adu),
                        "sigma": self.sigma,
                        "x_err": arr[:, 6],
                        "y_err": arr[:, 7],
                    }
                )
            )
        table = pd.concat(
            [q[[c for c in q.columns if c in out.columns]] for q in parts], ignore_index=True
        )
        # seeds that were never extended stay 3-point tracks (as the linker's shortest)
        return renumber_tracks(table)
