"""Track-guided re-detection: look again, at a low threshold, where a track says its spot must be.

Owns :class:`GuidedConfig` and :func:`guided_detect`, a second pass after linking that fills the
gaps of tracks, extends their ends, splits spots that carry 2-3 particles' light, joins broken
pieces and undoes identity swaps where two tracks meet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from spt._lap import solve_sparse_lap
from spt.camera import Camera, estimate_camera
from spt.detect import DetectConfig, resolve_camera_and_psf
from spt.errors import SptInputError
from spt.flow import FlowConfig, follow_flow
from spt.identity import step_variance, untangle_tracks
from spt.io import release_mapped_pages
from spt.link import LinkConfig, drop_sparse_tracks, link, renumber_tracks
from spt.localize import fit_groups, fit_spots, pixel_integrals

__all__ = ["GuidedConfig", "guided_detect", "guided_detect_movie"]

#: A spot is taken for two unresolved emitters when its signal is within this factor of the
#: sum of both tracks' typical signals and at least this factor above its own track's.
_MERGED_RATIO = 1.4
#: Each emitter of a split spot must carry between 1/this and this times its track's light.
_SPLIT_RATIO = 1.8


@dataclass(frozen=True)
class GuidedConfig:
    """Parameters of track-guided re-detection (:func:`guided_detect`).

    Attributes
    ----------
    enabled : bool
        Run the guided pass after linking.
    min_snr : float
        Accept a guided spot if its fitted ``signal / signal_err`` (Fisher information) is at
        least this. Lower than detection's ``min_snr``: the track's prediction confines the
        search to a few pixels, so noise has few chances to pass.
    search_radius_px : float
        Largest distance (px) between a guided fit and the track's prediction, on top of the
        prediction's own uncertainty (from the linker's motion models).
    brightness_ratio : float
        A guided spot's signal must lie within this factor of its track's median signal (quantum
        dots keep their brightness while on).
    velocity_noise_um_s : float
        S.d. (um/s, per axis) of the error of a flowing track's predicted velocity one frame
        beyond its end: the velocity is estimated from the last 3 steps, and flow has lateral
        jitter, so this is larger than the linker's per-frame velocity noise.
    gap_min_hit_fraction : float
        The fits in a gap of a track are kept only if at least this share of its frames yield
        a spot (a fit or a detection taken): a quantum dot off for the whole gap (a blink)
        leaves only noise to fit, of which a few fits pass ``min_snr`` by chance, while a dim
        dot the detector missed yields a spot in most frames. 0: keep every fit.
    extend_frames : int
        Most frames probed beyond each end of a track.
        0: fill gaps only.
    max_misses : int
        Frames in a row without a spot after which the extension of a track end stops (the
        prediction goes on through them: blinking, spots too dim in one frame).
    pair_radius_px : float
        A prediction closer than this (px) to a spot of another track is fitted jointly with it
        (two emitters) and kept only if two emitters explain the window better than one.
    pair_min_llr : float
        Smallest twice-log-likelihood gain of two emitters over one for a joint fit to be kept.
    join_radius_px : float
        An existing spot this close (px) to a prediction is taken as the track's own: a spot left
        out of every track is added to it, and the first (last) spot of another track joins the
        two tracks when the track is extended forward (backward).
    share_merged : bool
        Give a spot to a second track when the prediction falls within ``join_radius_px`` of it,
        two emitters cannot be resolved there, and its signal matches the sum of both tracks'
        (a merge, as in u-track; both tracks then carry the pair's centre).
    split_bright : bool
        Before each re-link, split a track's spot with 2-3 times its track's typical light into
        2-3 fitted emitters (unresolved particles of which only one has a track), so that the
        hidden ones can be linked into tracks of their own.
    split_min_excess : float
        For ``split_bright``: a spot is split when its light is at least ``1 +`` this times its
        track's typical light (and closer to 2 or 3 times than to 1), and at least ``1 + 4 s``
        times, ``s`` the s.d. of the log light of the track's single-emitter spots (at low SNR
        one emitter's light varies too much from frame to frame to be counted).
    resolve_merged : bool
        Where the free two-emitter fit of a pair probe fails (the emitters closer than the PSF
        width), fit them again with Gaussian priors on their positions (the track's
        prediction, the detection) and keep both when the spot carries the light of two: the
        image fixes the pair's summed light and centroid, the tracks fix the separation.
    merged_min_excess : float
        For ``resolve_merged``: the spot's light, fitted as one emitter, must exceed its own
        track's typical brightness by at least this fraction of the probing track's.
    merged_partner_sd_px : float
        For ``resolve_merged``: s.d. (px) of the prior on the detected spot's own emitter,
        centred on the detection (which lies between the two emitters).
    relink_passes : int
        Times the augmented tracks' spots are linked again (:func:`spt.link.link`) and looked
        at again; with gaps filled and merged pairs split the linker swaps fewer identities.
        0: one guided pass on the first linking only.
    chunk_frames : int
        Most frames read from the movie at once (memory ~ chunk x Y x X x pixel size).
    untangle_min_llr : float
        Last, two tracks that meet (within ``untangle_contact_px``) are exchanged after their
        closest approach when each one's position and brightness in the
        ``untangle_window_frames`` frames before the meeting predict the other's after it
        better, by this log-likelihood ratio. 0: off.
    untangle_contact_px : float
        Distance (px) at which two tracks meet, for ``untangle_min_llr``.
    untangle_window_frames : int
        Frames before and after a meeting whose spots judge it, for ``untangle_min_llr``.
    untangle_flow_contact_px : float
        Distance (px) at which two flowing tracks meet, for ``untangle_min_llr`` (they pass
        each other between frames).
    untangle_brightness_sd : float
        Each side of a meeting takes as many frames (up to ``untangle_brightness_max_frames``)
        as bring the s.d. of its mean log brightness down to this, for ``untangle_min_llr``.
    untangle_brightness_max_frames : int
        Most frames either side of a meeting whose spots give the brightness.
    untangle_isolation_px : float
        Spots with another track's spot within this distance (px) do not count towards the
        brightness (their fits mix the two spots' light).
    rejoin_gap_frames : int
        Longest gap (frames) across which the end of one track and the start of another, at
        the same place, are joined after the last pass (beyond the linker's
        ``max_gap_frames``): a particle hidden for a while in a cluster of unresolved ones.
        0: off.
    rejoin_radius_px : float
        Largest distance (px) between the end and the start joined across a long gap.
    """

    enabled: bool = True
    min_snr: float = 2.0
    search_radius_px: float = 1.5
    brightness_ratio: float = 2.5
    velocity_noise_um_s: float = 10.0
    gap_min_hit_fraction: float = 0.3
    extend_frames: int = 10
    max_misses: int = 2
    pair_radius_px: float = 3.5
    pair_min_llr: float = 6.0
    join_radius_px: float = 1.5
    share_merged: bool = True
    relink_passes: int = 1
    split_bright: bool = True
    split_min_excess: float = 0.6
    resolve_merged: bool = True
    merged_min_excess: float = 0.5
    merged_partner_sd_px: float = 1.0
    chunk_frames: int = 64
    untangle_min_llr: float = 6.0
    untangle_contact_px: float = 3.0
    untangle_window_frames: int = 10
    untangle_flow_contact_px: float = 6.0
    untangle_brightness_sd: float = 0.04
    untangle_brightness_max_frames: int = 60
    untangle_isolation_px: float = 2.0
    rejoin_gap_frames: int = 100
    rejoin_radius_px: float = 4.0

    def __post_init__(self) -> None:
        if self.min_snr < 0 or self.search_radius_px <= 0 or self.brightness_ratio < 1:
            raise ValueError("min_snr must be >= 0, search_radius_px > 0, brightness_ratio >= 1")
        if self.velocity_noise_um_s <= 0:
            raise ValueError("velocity_noise_um_s must be > 0")
        if not 0 <= self.gap_min_hit_fraction <= 1:
            raise ValueError("gap_min_hit_fraction must be in [0, 1]")
        if (
            min(self.extend_frames, self.max_misses, self.relink_passes) < 0
            or self.chunk_frames < 1
        ):
            raise ValueError(
                "extend_frames, max_misses and relink_passes must be >= 0, chunk_frames >= 1"
            )
        if self.pair_radius_px < 0 or self.join_radius_px < 0 or self.pair_min_llr < 0:
            raise ValueError("pair_radius_px, join_radius_px and pair_min_llr must be >= 0")
        if self.split_min_excess <= 0 or self.merged_min_excess < 0:
            raise ValueError("split_min_excess must be > 0 and merged_min_excess >= 0")
        if self.merged_partner_sd_px <= 0:
            raise ValueError("merged_partner_sd_px must be > 0")
        if (
            self.untangle_min_llr < 0
            or min(self.untangle_contact_px, self.untangle_flow_contact_px) <= 0
        ):
            raise ValueError(
                "untangle_min_llr must be >= 0, untangle_contact_px and "
                "untangle_flow_contact_px > 0"
            )
        if self.untangle_window_frames < 2:
            raise ValueError("untangle_window_frames must be >= 2")
        if (
            self.untangle_brightness_sd <= 0
            or self.untangle_brightness_max_frames < self.untangle_window_frames
            or self.untangle_isolation_px < 0
        ):
            raise ValueError(
                "untangle_brightness_sd must be > 0, untangle_brightness_max_frames >= "
                "untangle_window_frames and untangle_isolation_px >= 0"
            )
        if self.rejoin_gap_frames < 0 or self.rejoin_radius_px <= 0:
            raise ValueError("rejoin_gap_frames must be >= 0 and rejoin_radius_px > 0")


@dataclass
class _Spots:
    """Every spot that emits light in the movie (detections and accepted guided spots)."""

    frame: np.ndarray
    x: np.ndarray
    y: np.ndarray
    n: np.ndarray  # effective photons
    row: np.ndarray  # row in the track table, -1 when the spot is in no track, -2 guided
    src: np.ndarray  # row in the detections table, -1 for a guided spot
    ref: np.ndarray  # median effective photons of the spot's track (its own if in none)

    def add(self, frame, x, y, n, row) -> None:
        self.ref = np.concatenate([self.ref, n])
        self.src = np.concatenate([self.src, np.full(len(frame), -1)])
        self.frame = np.concatenate([self.frame, frame])
        self.x = np.concatenate([self.x, x])
        self.y = np.concatenate([self.y, y])
        self.n = np.concatenate([self.n, n])
        self.row = np.concatenate([self.row, row])


@dataclass
class _Probes:
    """Where to look: frame, predicted position (px), prediction s.d. (px), reference photons."""

    frame: np.ndarray
    x: np.ndarray
    y: np.ndarray
    sd: np.ndarray
    ref: np.ndarray


def _read_boxes(frames, t, ox, oy, side: int, camera: Camera, chunk: int) -> np.ndarray:
    """Windows (n, side, side) in effective photons. Only the frames holding a window are
    read, in runs of consecutive frames of at most ``chunk`` (a lazy reader decodes each
    needed frame once and no other)."""
    boxes = np.empty((len(t), side, side), np.float32)
    if len(t) == 0:
        return boxes
    order = np.argsort(t, kind="stable")
    ts = t[order]
    need = np.unique(ts)
    cut = np.flatnonzero(np.diff(need) != 1) + 1
    ar = np.arange(side)
    read = 0
    for run in np.split(need, cut):
        for lo in run[::chunk]:
            hi = min(lo + chunk - 1, run[-1])
            if read >= chunk:
                # a memory-mapped movie: drop the pages read so far, so a movie larger than
                # memory is re-read within bounded resident memory (as detection does)
                release_mapped_pages(frames)
                read = 0
            read += hi + 1 - lo
            block = np.asarray(frames[lo : hi + 1])
            a, b = np.searchsorted(ts, [lo, hi + 1])
            idx = order[a:b]
            rows = (oy[idx, None] + ar)[:, :, None]
            cols = (ox[idx, None] + ar)[:, None, :]
            boxes[idx] = camera.to_effective(block[(t[idx] - lo)[:, None, None], rows, cols])
    release_mapped_pages(frames)
    return boxes


def _render_into(extra, ox, oy, i, x, y, n, sigma) -> None:
    """Add spots (x, y, n) to windows ``extra[i]`` whose top-left corners are (ox[i], oy[i])."""
    if len(i) == 0:
        return
    side = extra.shape[1]
    ar = np.arange(side)
    s = np.full((len(i), 1), sigma)
    ex, _, _ = pixel_integrals(ox[i, None] + ar - x[:, None], s)
    ey, _, _ = pixel_integrals(oy[i, None] + ar - y[:, None], s)
    np.add.at(extra, i, (n[:, None, None] * ey[:, :, None] * ex[:, None, :]).astype(np.float32))


def _probe(frames, shape, probes: _Probes, spots: _Spots, camera, sigma, config, half):
    """Fit a spot at every probe; see :func:`guided_detect`.

    Returns a dict of arrays (one entry per probe): ``ok`` accepted, ``x, y, n, b, x_err, y_err``
    of the new spot, ``partner`` (index into ``spots`` of a neighbour refitted jointly, else -1)
    with its refitted ``px, py, pn, px_err, py_err``, ``take`` (index of a spot in no track
    within ``join_radius_px``, to take as the track's own, else -1) and ``near`` (index of any
    spot within ``join_radius_px``, else -1).
    """
    m = len(probes.frame)
    ny, nx = shape
    side = 2 * half + 1
    out = {
        "ok": np.zeros(m, bool),
        "partner": np.full(m, -1),
        "take": np.full(m, -1),
        "near": np.full(m, -1),
    }
    for k in ("x", "y", "n", "b", "x_err", "y_err", "px", "py", "pn", "px_err", "py_err"):
        out[k] = np.full(m, np.nan)
    if m == 0:
        return out
    sep = 1e4
    # only the spots of the probed frames
    sub = np.flatnonzero(np.isin(spots.frame, np.unique(probes.frame)))
    if len(sub) == 0:
        sub = np.zeros(1, np.int64)  # one far-away point keeps the tree valid
    tree = cKDTree(np.column_stack([spots.x[sub], spots.y[sub], spots.frame[sub] * sep]))
    centre = np.column_stack([probes.x, probes.y, probes.frame * sep])
    dist, near = tree.query(centre, k=1, distance_upper_bound=config.pair_radius_px)
    has = np.isfinite(dist)
    near = np.where(has, sub[np.minimum(near, len(sub) - 1)], -1)
    close = has & (dist <= config.join_radius_px)
    out["near"] = np.where(close, near, -1)
    # a spot in no track at the prediction is taken as it is; any other is fitted jointly
    free = close & (spots.row[np.maximum(near, 0)] == -1)
    out["take"] = np.where(free, near, -1)
    partner = np.where(has & ~free, near, -1)
    fit = out["take"] < 0
    # window: centred on the prediction, or on the midpoint of prediction and partner
    cx = np.where(partner >= 0, 0.5 * (probes.x + spots.x[partner]), probes.x)
    cy = np.where(partner >= 0, 0.5 * (probes.y + spots.y[partner]), probes.y)
    ox = np.clip(np.rint(cx).astype(np.int64) - half, 0, nx - side)
    oy = np.clip(np.rint(cy).astype(np.int64) - half, 0, ny - side)
    idx = np.flatnonzero(fit)
    if len(idx) == 0:
        return out
    boxes = _read_boxes(
        frames, probes.frame[idx], ox[idx], oy[idx], side, camera, config.chunk_frames
    )
    # light of the other spots reaching the window is a known term of the model
    reach = half * np.sqrt(2) + 4 * sigma
    lists = tree.query_ball_point(
        np.column_stack([cx[idx], cy[idx], probes.frame[idx] * sep]), reach
    )
    lens = np.fromiter((len(li) for li in lists), np.int64, len(lists))
    pi = np.repeat(np.arange(len(idx)), lens)
    pj = sub[np.concatenate(lists).astype(np.int64)] if lens.sum() else np.zeros(0, np.int64)
    keep = pj != partner[idx][pi]
    pi, pj = pi[keep], pj[keep]
    extra = np.zeros_like(boxes)
    _render_into(extra, ox[idx], oy[idx], pi, spots.x[pj], spots.y[pj], spots.n[pj], sigma)
    read_var = camera.read_var_effective
    lo_n = probes.ref[idx] / config.brightness_ratio
    hi_n = probes.ref[idx] * config.brightness_ratio
    radius = np.sqrt(config.search_radius_px**2 + (2.5 * probes.sd[idx]) ** 2)

    single = partner[idx] < 0
    s_idx = np.flatnonzero(single)
    if len(s_idx):
        g = idx[s_idx]
        f = fit_spots(
            boxes[s_idx],
            ox[g],
            oy[g],
            probes.x[g],
            probes.y[g],
            sigma,
            read_var=read_var,
            extra=extra[s_idx],
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = f.photons / f.photons_err
        good = f.ok & (snr >= config.min_snr)
        good &= np.hypot(f.x - probes.x[g], f.y - probes.y[g]) <= radius[s_idx]
        good &= (f.photons >= lo_n[s_idx]) & (f.photons <= hi_n[s_idx])
        out["ok"][g] = good
        out["x"][g], out["y"][g], out["n"][g], out["b"][g] = f.x, f.y, f.photons, f.background
        out["x_err"][g], out["y_err"][g] = f.x_err, f.y_err
    p_idx = np.flatnonzero(~single)
    if len(p_idx):
        g = idx[p_idx]
        pj = partner[g]
        bx = boxes[p_idx] - extra[p_idx]
        edge = np.concatenate([bx[:, 0, :], bx[:, -1, :], bx[:, 1:-1, 0], bx[:, 1:-1, -1]], axis=1)
        b0 = np.maximum(np.median(edge, axis=1), 1e-3)
        x1, y1, n1, _, ok1, ll1 = fit_groups(
            bx,
            ox[g],
            oy[g],
            spots.x[pj, None],
            spots.y[pj, None],
            spots.n[pj, None],
            b0,
            sigma,
            read_var=read_var,
            n_iter=6,  # started at the detection, already near its optimum
        )
        x2, y2, n2, e2, ok2, ll2 = fit_groups(
            bx,
            ox[g],
            oy[g],
            np.column_stack([spots.x[pj], probes.x[g]]),
            np.column_stack([spots.y[pj], probes.y[g]]),
            np.column_stack([spots.n[pj], probes.ref[g]]),
            b0,
            sigma,
            read_var=read_var,
        )
        # the two emitters are interchangeable: the track's own is the one nearer its prediction
        swap = np.hypot(x2[:, 0] - probes.x[g], y2[:, 0] - probes.y[g]) < np.hypot(
            x2[:, 1] - probes.x[g], y2[:, 1] - probes.y[g]
        )
        for a in (x2, y2, n2, e2):
            a[swap] = a[swap][:, ::-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = n2[:, 1] / e2[:, 1, 2]
        good = ok2 & (2 * (ll2 - np.where(ok1, ll1, -np.inf)) >= config.pair_min_llr)
        good |= ok2 & ~ok1
        good &= snr >= config.min_snr
        good &= np.hypot(x2[:, 1] - probes.x[g], y2[:, 1] - probes.y[g]) <= radius[p_idx]
        # a merged spot lies between the two emitters: its own one may be ~half their distance away
        shift = np.hypot(x2[:, 0] - spots.x[pj], y2[:, 0] - spots.y[pj])
        good &= shift <= 0.6 * config.pair_radius_px
        good &= (n2[:, 0] >= spots.n[pj] / config.brightness_ratio) & (
            n2[:, 0] <= spots.n[pj] * config.brightness_ratio
        )
        good &= np.hypot(x2[:, 0] - x2[:, 1], y2[:, 0] - y2[:, 1]) >= 1.0
        good &= (n2[:, 1] >= lo_n[p_idx]) & (n2[:, 1] <= hi_n[p_idx])
        if config.resolve_merged:
            good |= _resolve_merged(
                good,
                bx,
                ox[g],
                oy[g],
                b0,
                probes,
                g,
                spots,
                pj,
                n1[:, 0],
                ok1,
                sigma,
                read_var,
                config,
                radius[p_idx],
                (x2, y2, n2, e2),
            )
        out["x"][g], out["y"][g], out["n"][g] = x2[:, 1], y2[:, 1], n2[:, 1]
        out["b"][g] = b0
        out["x_err"][g], out["y_err"][g] = e2[:, 1, 0], e2[:, 1, 1]
        join = config.join_radius_px
        # unresolved (closer than ~1 PSF s.d.): the spot carries the light of both tracks, so
        # both get it as their position, as a merge in u-track (Jaqaman et al. 2008)
        both = spots.n[pj] / (probes.ref[g] + spots.ref[pj])
        shared = (
            config.share_merged
            & ~good
            & (np.hypot(spots.x[pj] - probes.x[g], spots.y[pj] - probes.y[g]) <= join)
        )
        shared &= (both >= 1 / _MERGED_RATIO) & (both <= _MERGED_RATIO)
        shared &= spots.n[pj] >= _MERGED_RATIO * spots.ref[pj]
        good |= shared
        out["ok"][g] = good
        out["x"][g] = np.where(shared, spots.x[pj], out["x"][g])
        out["y"][g] = np.where(shared, spots.y[pj], out["y"][g])
        out["n"][g] = np.where(shared, spots.n[pj] / 2, out["n"][g])
        out["x_err"][g] = np.where(shared, sigma / 2, out["x_err"][g])
        out["y_err"][g] = np.where(shared, sigma / 2, out["y_err"][g])
        out["partner"][g] = np.where(good & ~shared, pj, -1)
        out["px"][g], out["py"][g], out["pn"][g] = x2[:, 0], y2[:, 0], n2[:, 0]
        out["px_err"][g], out["py_err"][g] = e2[:, 0, 0], e2[:, 0, 1]
    return out


def _resolve_merged(
    good, bx, ox, oy, b0, probes, g, spots, pj, n_one, ok1, sigma, read_var, config, radius, fit
) -> np.ndarray:
    """Two emitters in one unresolved spot, placed by where their tracks say they are.

    For pair probes the free two-emitter fit did not accept (``~good``): when the spot's light
    (``n_one``, one emitter fitted) exceeds its own track's brightness by at least
    ``config.merged_min_excess`` of the probing track's, two emitters are fitted with Gaussian
    priors on their positions (:func:`spt.localize.fit_groups` with ``prior_sd``): the probe's
    prediction (its s.d.) and the detection (``config.merged_partner_sd_px``). The image fixes
    the pair's light and centroid; the tracks fix what it cannot, the separation. Accepted fits
    overwrite their rows of ``fit`` (x, y, photons, errors; emitter 0 the partner, 1 the
    probe's) in place; returns the accepted mask.
    """
    x2, y2, n2, e2 = fit
    ref_q, ref_p = probes.ref[g], spots.ref[pj]
    cand = ~good & ok1 & (n_one >= ref_p + config.merged_min_excess * ref_q)
    cand &= n_one >= _MERGED_RATIO * ref_p  # not a dim (or false) track's light alone
    cand &= n_one <= _MERGED_RATIO * (ref_p + ref_q)
    q = np.flatnonzero(cand)
    acc = np.zeros(len(g), bool)
    if len(q) == 0:
        return acc
    gq, pq = g[q], pj[q]
    sd_q = np.clip(probes.sd[gq], 0.1, config.search_radius_px)
    # light: the excess over the partner's own is the probe's (prior s.d. 30 %)
    n_start = np.column_stack([ref_p[q], ref_q[q]]) * (n_one[q] / (ref_p[q] + ref_q[q]))[:, None]
    x3, y3, n3, e3, ok3, _ = fit_groups(
        bx[q],
        ox[q],
        oy[q],
        np.column_stack([spots.x[pq], probes.x[gq]]),
        np.column_stack([spots.y[pq], probes.y[gq]]),
        n_start,
        b0[q],
        sigma,
        read_var=read_var,
        n_iter=8,
        prior_sd=np.column_stack([np.full(len(q), config.merged_partner_sd_px), sd_q]),
        photons_prior_sd=0.3 * n_start,
    )
    ok = ok3.copy()
    ok &= np.hypot(x3[:, 1] - probes.x[gq], y3[:, 1] - probes.y[gq]) <= radius[q]
    ok &= np.hypot(x3[:, 0] - spots.x[pq], y3[:, 0] - spots.y[pq]) <= 0.6 * config.pair_radius_px
    br = config.brightness_ratio
    ok &= (n3[:, 1] >= ref_q[q] / br) & (n3[:, 1] <= ref_q[q] * br)
    ok &= (n3[:, 0] >= ref_p[q] / br) & (n3[:, 0] <= ref_p[q] * br)
    q = q[ok]
    x2[q], y2[q], n2[q], e2[q] = x3[ok], y3[ok], n3[ok], e3[ok]
    acc[q] = True
    return acc


def _dedupe_accepted(frame, x, y, score, min_dist=1.0):
    """Indices of accepted spots to keep so no two of one frame are closer than ``min_dist``."""
    if len(frame) < 2:
        return np.arange(len(frame))
    pts = np.column_stack([x, y, frame * 1e4])
    pairs = cKDTree(pts).query_pairs(min_dist, output_type="ndarray")
    keep = np.ones(len(frame), bool)
    if len(pairs):
        drop = np.where(score[pairs[:, 0]] < score[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
        keep[drop] = False
    return np.flatnonzero(keep)


class _Builder:
    """The track table being augmented: new rows, refitted rows and joined particles."""

    def __init__(self, tracks, spots: _Spots, detections, to_out: float, sigma: float):
        self.tracks = tracks
        self.detections = detections
        self.taken: list[tuple[int, int]] = []
        self.spots = spots
        self.to_out = to_out
        self.sigma = sigma
        # rows added by fits: particle, frame, x, y, n, b, x_err, y_err (n and b in photons)
        self.new: list[np.ndarray] = []
        self._frames = tracks["frame"].to_numpy()
        self._detection_frames = None if detections is None else detections["frame"].to_numpy()
        self.particle = tracks["particle"].to_numpy().copy()
        self.x = tracks["x"].to_numpy(float).copy()
        self.y = tracks["y"].to_numpy(float).copy()
        self.signal = tracks["signal"].to_numpy(float).copy() if "signal" in tracks else None
        self.x_err = tracks["x_err"].to_numpy(float).copy() if "x_err" in tracks else None
        self.y_err = tracks["y_err"].to_numpy(float).copy() if "y_err" in tracks else None
        self.touched: set[int] = set()  # spot indices refitted or taken once already

    def accept(self, particle, probes: _Probes, res: dict, sel: np.ndarray) -> np.ndarray:
        """Add the accepted probes ``sel`` (fits, joint fits, taken spots); returns, for each of
        ``sel``, the new position's spot index (or -1 if dropped as a duplicate)."""
        took = res["take"][sel]
        fitted = sel[took < 0]
        # a spot taken by two probes, or fitted twice: keep one
        keep = _dedupe_accepted(
            probes.frame[fitted], res["x"][fitted], res["y"][fitted], res["n"][fitted]
        )
        dropped = np.setdiff1d(np.arange(len(fitted)), keep)
        result = np.full(len(sel), -1)
        pos = {int(s): i for i, s in enumerate(sel)}
        for i in dropped:
            pos.pop(int(fitted[i]))
        for s in list(pos):
            k = res["take"][s]
            if k >= 0:
                if k in self.touched or self.spots.row[k] != -1:
                    pos.pop(s)
                    continue
                self.touched.add(int(k))
            p = res["partner"][s]
            if p >= 0 and p in self.touched:
                pos.pop(s)
                continue
        rows, added = [], []
        for s, i in pos.items():
            k = res["take"][s]
            if k >= 0:
                self.spots.row[k] = -2  # now in a track (its row is among the new ones)
                result[i] = k
                self.taken.append((int(particle[s]), int(self.spots.src[k])))
                continue
            p = res["partner"][s]
            if p >= 0:
                self.touched.add(int(p))
                self.spots.x[p], self.spots.y[p] = res["px"][s], res["py"][s]
                self.spots.n[p] = res["pn"][s]
                r = self.spots.row[p]
                if r >= 0:
                    self.x[r], self.y[r] = res["px"][s], res["py"][s]
                    if self.signal is not None:
                        self.signal[r] = res["pn"][s] * self.to_out
                    if self.x_err is not None:
                        self.x_err[r], self.y_err[r] = res["px_err"][s], res["py_err"][s]
            added.append(s)
            result[i] = len(self.spots.frame) + len(added) - 1
            rows.append(
                (
                    particle[s],
                    probes.frame[s],
                    res["x"][s],
                    res["y"][s],
                    res["n"][s],
                    res["b"][s],
                    res["x_err"][s],
                    res["y_err"][s],
                )
            )
        if added:
            self.spots.add(
                probes.frame[added],
                res["x"][added],
                res["y"][added],
                res["n"][added],
                np.full(len(added), -2),
            )
        if rows:
            self.new.append(np.array(rows, dtype=float))
        return result

    def join(self, other: int, mine: int) -> None:
        """Give every spot of track ``other`` (fitted ones included) to track ``mine``."""
        self.particle[self.particle == other] = mine
        for arr in self.new:
            arr[arr[:, 0] == other, 0] = mine
        self.taken = [(mine if p == other else p, s) for p, s in self.taken]

    def frames_of(self, particle: int) -> np.ndarray:
        """Frames of a track now (its spots, guided ones included)."""
        own = self._frames[self.particle == particle]
        new = [a[a[:, 0] == particle, 1].astype(own.dtype) for a in self.new]
        taken = [self._detection_frames[s] for p, s in self.taken if p == particle]
        return np.concatenate([own, *new, np.array(taken, dtype=own.dtype)])

    def overlap(self, a: int, b: int) -> bool:
        """Whether tracks ``a`` and ``b`` share a frame or interleave in time."""
        fa, fb = self.frames_of(a), self.frames_of(b)
        if len(fa) == 0 or len(fb) == 0:
            return False
        return not (fa.max() < fb.min() or fb.max() < fa.min())

    def table(self) -> pd.DataFrame:
        """The augmented tracks, renumbered from 0 in order of first appearance."""
        out = self.tracks.copy()
        out["x"], out["y"] = self.x, self.y
        if self.signal is not None:
            out["signal"] = self.signal
        if self.x_err is not None:
            out["x_err"], out["y_err"] = self.x_err, self.y_err
        out["particle"] = self.particle
        new = []
        if self.new:
            arr = np.concatenate(self.new)
            new.append(
                pd.DataFrame(
                    {
                        "particle": arr[:, 0].astype(np.int64),
                        "frame": arr[:, 1].astype(np.int64),
                        "x": arr[:, 2],
                        "y": arr[:, 3],
                        "signal": arr[:, 4] * self.to_out,
                        "background": arr[:, 5] * self.to_out,
                        "sigma": self.sigma,
                        "x_err": arr[:, 6],
                        "y_err": arr[:, 7],
                    }
                )
            )
        if self.taken:
            part, src = np.array(self.taken).T
            taken = self.detections.iloc[src].reset_index(drop=True)
            new.append(taken.assign(particle=part))
        if new:
            new = pd.concat(new, ignore_index=True)
            new = new[[c for c in new.columns if c in out.columns]]
            out = pd.concat([out, new], ignore_index=True)
        return renumber_tracks(out)


def guided_detect(
    tracks: pd.DataFrame,
    frames,
    *,
    camera: Camera,
    psf_sigma_px: float,
    pixel_size_um: float,
    frame_interval_s: float,
    config: GuidedConfig = GuidedConfig(),
    link_config: LinkConfig = LinkConfig(),
    spots: pd.DataFrame | None = None,
    flow_config: FlowConfig = FlowConfig(),
) -> pd.DataFrame:
    """Fill the gaps of tracks, extend their ends and join broken pieces by guided detection.

    After a first linking pass, each track predicts where its spot should be in the frames it
    lacks: inside a gap, linear interpolation between the spots around it; beyond an end, the
    last position moved by the track's velocity (constant-velocity model for flowing particles,
    the last position for diffusing ones), one frame at a time. There, a pixel-integrated
    Gaussian is fitted by Poisson MLE (Smith et al., Nat Methods 2010) and accepted at a low
    SNR: confining the search to a few pixels around a prediction keeps false alarms rare, the
    idea of u-track's gap closing (Jaqaman et al., Nat Methods 2008) applied to the image itself
    rather than to the detections (as in tracking-by-detection with track-guided re-detection).
    The light of other spots in the window is a known term of the model. A prediction within
    ``pair_radius_px`` of another track's spot is fitted jointly with it as two emitters
    (multi-emitter MLE, Huang et al., Biomed Opt Express 2011) and kept only if the likelihood
    ratio over one emitter is large, so two merged particles each get a position; the other
    spot's position is replaced by its joint fit. Where the two are closer than the PSF width
    and the spot carries two tracks' light, the two emitters are fitted with the tracks'
    positions as Gaussian priors (``resolve_merged``). An existing spot within
    ``join_radius_px`` of a prediction that belongs to no track is added to the track; one that
    starts (ends) another track when extending forward (backward) joins the two tracks. Before
    each re-link, a track's spot with 2-3 times its track's light (quantum dots keep theirs) is
    split into as many fitted emitters (``split_bright``), so that a particle hidden in a
    neighbour's spot can be linked. Last, a track end and a later track start within
    ``rejoin_radius_px`` across up to ``rejoin_gap_frames`` frames are joined one-to-one
    (u-track's gap closing, Jaqaman et al. 2008, over gaps longer than the linker's): a
    particle hidden among unresolved neighbours keeps one identity; and two tracks that meet
    are exchanged after the meeting when each one's place and brightness before it predict
    the other's after it (``untangle_min_llr``).

    Parameters
    ----------
    tracks : DataFrame
        Linked tracks (:func:`spt.link.link`): ``frame, x, y, particle`` (px) and ``signal``.
    frames : array-like, shape (T, Y, X)
        The raw movie in ADU, indexable by frame slices (NumPy array, memory map or
        :attr:`spt.io.Movie.frames`); at most ``config.chunk_frames`` frames are read at once.
    camera : Camera
        The camera detection used (:func:`spt.detect.resolve_camera_and_psf`).
    psf_sigma_px : float
        PSF s.d. (px) detection used.
    pixel_size_um, frame_interval_s : float
        Calibration (um/px, s), to turn the linker's motion models into pixels.
    config : GuidedConfig
        Guided-detection parameters.
    link_config : LinkConfig
        The linker's parameters (diffusion, longest gap).
    spots : DataFrame, optional
        All detections, including those left out of tracks (their light is modelled and they
        can be added to tracks). Default: the spots of ``tracks``.
    flow_config : FlowConfig
        The flow pass run last (:func:`spt.flow.follow_flow`).

    Returns
    -------
    DataFrame
        ``tracks`` with the guided spots added (``signal``/``background`` in the units of the
        input, ``sigma`` the PSF width), joined tracks sharing one ``particle``, renumbered from
        0 in order of first appearance and sorted by particle then frame.
    """
    if not (pixel_size_um > 0 and frame_interval_s > 0):
        raise SptInputError("guided_detect", "pixel_size_um and frame_interval_s must be > 0")
    missing = [c for c in ("frame", "x", "y", "particle", "signal") if c not in tracks.columns]
    if missing:
        raise SptInputError("tracks", f"missing column(s) {', '.join(missing)}")
    if len(np.shape(frames)) != 3:
        raise SptInputError("frames", f"expected a (T, Y, X) movie, got shape {np.shape(frames)}")
    if not config.enabled or len(tracks) == 0:
        return tracks
    out = tracks
    for again in range(config.relink_passes + 1):
        if again:
            # link again the tracks' spots (guided ones included): with the gaps filled and
            # merged pairs split, frame-to-frame assignment makes fewer identity swaps; then
            # look again. A spot shared by two tracks (a merge) is linked once: two identical
            # candidates would leave the choice of identities after the merge to chance
            points = out.drop(columns="particle").drop_duplicates(["frame", "x", "y"])
            if config.split_bright:
                points, spots = _split_bright(
                    points, out, spots, frames, camera, psf_sigma_px, config
                )
            if spots is not None and len(spots):
                keys = ["frame", "x", "y"]
                rest = spots.merge(points[keys], on=keys, how="left", indicator=True)
                rest = rest[rest["_merge"] == "left_only"].drop(columns="_merge")
                spots = pd.concat([points, rest], ignore_index=True)
            out = link(
                points, link_config, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s
            )
        out = _guided_pass(
            out,
            frames,
            camera,
            psf_sigma_px,
            pixel_size_um,
            frame_interval_s,
            config,
            link_config,
            spots,
        )
    if config.rejoin_gap_frames:
        out = _rejoin(out, config)
    # Flow tracks from unlinked detections, then short dim stubs dropped.
    if flow_config.enabled:
        out = follow_flow(
            out,
            frames,
            camera=camera,
            psf_sigma_px=psf_sigma_px,
            pixel_size_um=pixel_size_um,
            frame_interval_s=frame_interval_s,
            config=flow_config,
            spots=spots,
        )
    out = drop_sparse_tracks(out, link_config)
    if config.untangle_min_llr > 0:
        out = untangle_tracks(
            out,
            min_llr=config.untangle_min_llr,
            contact_px=config.untangle_contact_px,
            window_frames=config.untangle_window_frames,
            flow_contact_px=config.untangle_flow_contact_px,
            brightness_sd=config.untangle_brightness_sd,
            brightness_max_frames=config.untangle_brightness_max_frames,
            isolation_px=config.untangle_isolation_px,
        )
    return out


def _split_bright(points, tracks, spots, frames, camera, psf_sigma_px, config):
    """Split track spots that carry the light of 2-3 emitters into as many spots.

    A quantum dot keeps its brightness while on, so a track's spot with ``k`` = 2 or 3 times
    its track's typical light (:func:`_track_brightness`; at least ``1 +
    config.split_min_excess`` times) holds ``k`` emitters closer than the PSF width, e.g.
    particles accumulated around a nucleus, where only one of them has a track. ``k``
    emitters are fitted in the spot's window (multi-emitter MLE, Huang et al., Biomed Opt
    Express 2011; started along the spot's long axis, other spots' light a known term) and
    kept when each carries one emitter's light (within a factor 1.8): brightness, not the
    spot's shape, is the evidence. Returns ``points`` with the split spots (the one nearest
    the original position replaces it) and ``spots`` without the replaced detections.
    """
    n_frames, ny, nx = np.shape(frames)
    sigma = float(psf_sigma_px)
    half = max(1, min(int(np.ceil(3 * sigma)), (min(ny, nx) - 1) // 2))
    side = 2 * half + 1
    f2 = camera.excess_noise
    to_out = f2 if camera.calibrated else camera.adu_per_photon * f2
    tr = tracks.sort_values(["particle", "frame"], kind="stable", ignore_index=True)
    tf = tr["frame"].to_numpy(np.int64)
    tx, ty = tr["x"].to_numpy(float), tr["y"].to_numpy(float)
    tp = tr["particle"].to_numpy()
    tn = tr["signal"].to_numpy(float) / to_out
    ref = _track_brightness(tn, tp).loc[tp].to_numpy()
    k = np.rint(tn / ref)
    # spot-to-spot spread (log s.d.) of one emitter's light in this track: at low SNR a
    # single spot can be 1.6 times its track's typical light by chance
    lone = tn <= 1.5 * ref
    dev = pd.Series(np.abs(np.log(tn[lone] / ref[lone]))).groupby(tp[lone]).median() * 1.4826
    spread = dev.reindex(tp).fillna(np.inf).to_numpy()
    excess = np.maximum(config.split_min_excess, 4 * spread)
    cand = (tn >= (1 + excess) * ref) & (k >= 2)
    # not in the flow: a blurred streak fits 2-3 emitters poorly, and the linker's velocity
    # model keeps flowing particles apart better than their split spots would
    cand &= step_variance(tp, tf, tx, ty).reindex(tp).fillna(0.0).to_numpy() <= 1.0
    # a spot another one shares (a merge given to two tracks) is not split again
    key = pd.Series(1, index=pd.MultiIndex.from_arrays([tf, tx, ty]))
    cand &= ~key.index.duplicated(keep=False)
    idx = np.flatnonzero(cand)
    if len(idx) == 0:
        return points, spots
    k = np.minimum(k[idx], 3).astype(np.int64)
    ox = np.clip(np.rint(tx[idx]).astype(np.int64) - half, 0, nx - side)
    oy = np.clip(np.rint(ty[idx]).astype(np.int64) - half, 0, ny - side)
    boxes = _read_boxes(frames, tf[idx], ox, oy, side, camera, config.chunk_frames)
    # light of the other track spots reaching the window is known
    tree = cKDTree(np.column_stack([tx, ty, tf * 1e4]))
    lists = tree.query_ball_point(
        np.column_stack([tx[idx], ty[idx], tf[idx] * 1e4]), half * np.sqrt(2) + 4 * sigma
    )
    lens = np.fromiter((len(li) for li in lists), np.int64, len(lists))
    pi = np.repeat(np.arange(len(idx)), lens)
    pj = np.concatenate(lists).astype(np.int64)
    keep = pj != idx[pi]
    extra = np.zeros_like(boxes)
    _render_into(extra, ox, oy, pi[keep], tx[pj[keep]], ty[pj[keep]], tn[pj[keep]], sigma)
    bx = boxes - extra
    edge = np.concatenate([bx[:, 0, :], bx[:, -1, :], bx[:, 1:-1, 0], bx[:, 1:-1, -1]], axis=1)
    b0 = np.maximum(np.median(edge, axis=1), 1e-3)
    # long axis of the background-subtracted window
    w = np.maximum(bx - b0[:, None, None], 0.0)
    ar = np.arange(side)
    tot = np.maximum(w.sum(axis=(1, 2)), 1e-9)
    dx = ar[None, None, :] + ox[:, None, None] - tx[idx, None, None]
    dy = ar[None, :, None] + oy[:, None, None] - ty[idx, None, None]
    sxx, syy = (w * dx * dx).sum((1, 2)) / tot, (w * dy * dy).sum((1, 2)) / tot
    sxy = (w * dx * dy).sum((1, 2)) / tot
    angle = 0.5 * np.arctan2(2 * sxy, sxx - syy)
    rows, old = [], np.zeros(len(idx), bool)
    for kk in (2, 3):
        sel = np.flatnonzero(k == kk)
        if len(sel) == 0:
            continue
        off = 0.75 * sigma * (np.arange(kk) - (kk - 1) / 2) / max(1, (kk - 1) / 2)
        g = idx[sel]
        x0 = tx[g, None] + np.cos(angle[sel])[:, None] * off
        y0 = ty[g, None] + np.sin(angle[sel])[:, None] * off
        fx, fy, fn, fe, fok, _ = fit_groups(
            bx[sel],
            ox[sel],
            oy[sel],
            x0,
            y0,
            np.repeat(tn[g, None] / kk, kk, axis=1),
            b0[sel],
            sigma,
            read_var=camera.read_var_effective,
        )
        r = ref[g, None]
        ok = fok & (fn >= r / _SPLIT_RATIO).all(axis=1) & (fn <= _SPLIT_RATIO * r).all(axis=1)
        ok &= (np.abs(fx - tx[g, None]) <= half).all(axis=1)
        ok &= (np.abs(fy - ty[g, None]) <= half).all(axis=1)
        d = np.hypot(fx[:, :, None] - fx[:, None, :], fy[:, :, None] - fy[:, None, :])
        d[:, np.arange(kk), np.arange(kk)] = np.inf
        ok &= d.min(axis=(1, 2)) >= 0.5
        for j in np.flatnonzero(ok):
            for e in range(kk):
                rows.append(
                    (g[j], fx[j, e], fy[j, e], fn[j, e], b0[sel][j], fe[j, e, 0], fe[j, e, 1])
                )
        old[sel[ok]] = True
    if not rows:
        return points, spots
    new = pd.DataFrame(rows, columns=["_row", "x", "y", "n", "b", "x_err", "y_err"])
    src = tr.iloc[new["_row"].to_numpy()].reset_index(drop=True)
    split = src.assign(
        x=new["x"].to_numpy(),
        y=new["y"].to_numpy(),
        signal=new["n"].to_numpy() * to_out,
        background=new["b"].to_numpy() * to_out,
    )
    if "x_err" in split:
        split["x_err"], split["y_err"] = new["x_err"].to_numpy(), new["y_err"].to_numpy()
    split = split.drop(columns="particle")
    gone = tr.iloc[idx[old]][["frame", "x", "y"]]
    keys = ["frame", "x", "y"]

    def without(table):
        m = table.merge(gone, on=keys, how="left", indicator=True)["_merge"].to_numpy()
        return table[m == "left_only"]

    points = pd.concat([without(points), split[points.columns]], ignore_index=True)
    if spots is not None and len(spots):
        spots = without(spots).reset_index(drop=True)
    return points, spots


def _rejoin(tracks: pd.DataFrame, config: GuidedConfig) -> pd.DataFrame:
    """Join track ends to later track starts at the same place, across gaps of up to
    ``config.rejoin_gap_frames`` frames, one-to-one by least distance (a sparse LAP). A start
    in the very next frame counts too: the linker may have ended a track on a false spot (a
    noise fit during a blink) too far from the particle's next one."""
    g = tracks.groupby("particle", sort=True)
    part = np.asarray(list(g.groups.keys()))
    t0, t1 = g["frame"].min().to_numpy(), g["frame"].max().to_numpy()
    # mean of the first (last) 3 positions: less noise than one localisation
    head = tracks.groupby("particle", sort=True).head(3).groupby("particle", sort=True)
    tail = tracks.groupby("particle", sort=True).tail(3).groupby("particle", sort=True)
    p0 = head[["x", "y"]].mean().to_numpy()
    p1 = tail[["x", "y"]].mean().to_numpy()
    sig = g["signal"].median().to_numpy()
    near = cKDTree(p0).query_ball_point(p1, config.rejoin_radius_px)
    lens = np.fromiter((len(n) for n in near), np.int64, len(near))
    ends = np.repeat(np.arange(len(part)), lens)
    starts = np.concatenate(near).astype(np.int64) if lens.sum() else np.zeros(0, np.int64)
    gap = t0[starts] - t1[ends]
    d = np.hypot(*(p0[starts] - p1[ends]).T)
    ratio = sig[starts] / sig[ends]
    ok = (gap >= 1) & (gap <= config.rejoin_gap_frames) & (d <= config.rejoin_radius_px)
    ok &= (ratio >= 1 / config.brightness_ratio) & (ratio <= config.brightness_ratio)
    ends, starts, d = ends[ok], starts[ok], d[ok]
    if len(ends) == 0:
        return tracks
    r, c = solve_sparse_lap(ends, starts, d / config.rejoin_radius_px - 1.0, len(part), len(part))
    # follow the chains: each start takes the id of the track it continues
    parent = np.arange(len(part))
    parent[c] = r
    for _ in range(len(part)):
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    idx = np.searchsorted(part, tracks["particle"].to_numpy())
    return renumber_tracks(tracks.assign(particle=part[parent[idx]]))


def _guided_pass(
    tracks,
    frames,
    camera,
    psf_sigma_px,
    pixel_size_um,
    frame_interval_s,
    config,
    link_config,
    spots,
) -> pd.DataFrame:
    """One pass of :func:`guided_detect` (gaps, then ends) on linked tracks."""
    tracks = tracks.sort_values(["particle", "frame"], kind="stable", ignore_index=True)
    n_frames, ny, nx = np.shape(frames)
    sigma = float(psf_sigma_px)
    half = max(1, min(int(np.ceil(3 * sigma)), (min(ny, nx) - 1) // 2))
    f2 = camera.excess_noise
    to_out = f2 if camera.calibrated else camera.adu_per_photon * f2
    sd1 = np.sqrt(2 * link_config.diffusion_um2_s * frame_interval_s) / pixel_size_um
    sd_v = config.velocity_noise_um_s * frame_interval_s / pixel_size_um

    tf = tracks["frame"].to_numpy(np.int64)
    tx, ty = tracks["x"].to_numpy(float), tracks["y"].to_numpy(float)
    tp = tracks["particle"].to_numpy()
    tn = tracks["signal"].to_numpy(float) / to_out
    row_of = np.arange(len(tracks))
    if spots is not None and len(spots):
        spots = spots.reset_index(drop=True)
        merged = (
            spots[["frame", "x", "y", "signal"]]
            .assign(_src=np.arange(len(spots)))
            .merge(
                tracks[["frame", "x", "y"]].assign(_row=row_of), on=["frame", "x", "y"], how="left"
            )
        )
        all_spots = _Spots(
            merged["frame"].to_numpy(np.int64, copy=True),
            merged["x"].to_numpy(float, copy=True),
            merged["y"].to_numpy(float, copy=True),
            merged["signal"].to_numpy(float) / to_out,
            merged["_row"].fillna(-1).to_numpy(np.int64),
            merged["_src"].to_numpy(np.int64),
            merged["signal"].to_numpy(float) / to_out,
        )
    else:
        all_spots = _Spots(
            tf.copy(),
            tx.copy(),
            ty.copy(),
            tn.copy(),
            row_of.copy(),
            np.full(len(tf), -1),
            tn.copy(),
        )
    ref_of = _track_brightness(tn, tp)
    in_track = all_spots.row >= 0
    all_spots.ref[in_track] = ref_of.loc[tp[all_spots.row[in_track]]].to_numpy()
    builder = _Builder(tracks, all_spots, spots, to_out, sigma)

    # 1. gaps: every missing frame between two spots of a track, by linear interpolation
    same = tp[1:] == tp[:-1]
    gap = np.where(same, tf[1:] - tf[:-1] - 1, 0)
    gap[gap > link_config.max_gap_frames] = 0
    i = np.repeat(np.arange(len(gap)), gap)
    k = np.arange(len(i)) - np.repeat(np.cumsum(gap) - gap, gap) + 1
    g1 = (gap[i] + 1).astype(float)
    w = k / g1
    probes = _Probes(
        tf[i] + k,
        (1 - w) * tx[i] + w * tx[i + 1],
        (1 - w) * ty[i] + w * ty[i + 1],
        sd1 * np.sqrt(k * (g1 - k) / g1),
        ref_of.loc[tp[i]].to_numpy(),
    )
    res = _probe(frames, (ny, nx), probes, all_spots, camera, sigma, config, half)
    if config.gap_min_hit_fraction > 0:
        # a blink: the dot is off for the whole gap, and the few lone fits that pass are
        # noise (a joint fit with a neighbour's spot is judged by its likelihood ratio)
        lone = res["ok"] & (res["take"] < 0) & (res["partner"] < 0)
        hit = (lone | (res["take"] >= 0)).astype(float)
        share = np.bincount(i, weights=hit, minlength=len(gap)) / np.maximum(gap, 1)
        res["ok"] &= ~(lone & (share < config.gap_min_hit_fraction)[i])
    sel = np.flatnonzero(res["ok"] | (res["take"] >= 0))
    if len(sel):
        ok_take = res["take"][sel] >= 0
        take = res["take"][sel]
        # a taken spot must have the track's brightness too
        ratio = all_spots.n[np.maximum(take, 0)] / probes.ref[sel]
        fine = ~ok_take | (
            (ratio >= 1 / config.brightness_ratio) & (ratio <= config.brightness_ratio)
        )
        builder.accept(tp[i], probes, res, sel[fine])

    # 2. ends: one frame at a time beyond the first and last spot of each track
    if config.extend_frames:
        _extend(frames, tracks, builder, ref_of, sd1, sd_v, config, camera, sigma, half)
    return builder.table()


def _track_brightness(n: np.ndarray, particle: np.ndarray) -> pd.Series:
    """Typical effective photons of each track's emitter (Series indexed by particle).

    A track may carry the spot of 2-3 unresolved particles for part of its frames, so its
    median would take their summed light for one emitter's. Quantum dots' light comes in
    multiples of one emitter's: each track's spots are fitted as a mixture of 1, 2 and 3
    emitters of light ``r`` (weights 0.6, 0.3, 0.1, each with a 25 % s.d.), ``r`` by maximum
    likelihood on a grid from 0.4 to 1.2 times the track's median; for a track alone this is
    its median.
    """
    order = np.argsort(particle, kind="stable")
    part, start = np.unique(particle[order], return_index=True)
    grid = np.linspace(0.4, 1.2, 41)
    k = np.arange(1, 4)
    logw = np.log([0.6, 0.3, 0.1]) - np.log(k * 0.25)  # mixture weight / s.d. (up to r)
    ref = np.empty(len(part))
    for g, v in enumerate(np.split(n[order], start[1:])):
        if len(v) > 150:  # quantiles of a long track: the same distribution, less work
            v = np.sort(v)[np.linspace(0, len(v) - 1, 150).astype(np.int64)]
        med = np.median(v)
        r = med * grid
        # z of every spot under every r and k: (len(v), len(grid), 3)
        z = v[:, None, None] / (0.25 * k * r[None, :, None]) - 1 / 0.25
        ll = logw - np.log(r)[None, :, None] - 0.5 * z**2
        top = ll.max(axis=2, keepdims=True)
        score = (top[..., 0] + np.log(np.exp(ll - top).sum(axis=2))).sum(axis=0)
        ref[g] = r[np.argmax(score)]
    return pd.Series(ref, index=part)


def _end_state(tracks: pd.DataFrame, direction: int):
    """Particle, frame, position and velocity (px/frame) at the last (first) spot of each track
    (``tracks`` sorted by particle then frame); velocity over the last (first) 3 steps."""
    part, start, count = np.unique(
        tracks["particle"].to_numpy(), return_index=True, return_counts=True
    )
    stop = start + count - 1
    if direction > 0:
        end, ref = stop, np.maximum(start, stop - 3)
    else:
        end, ref = start, np.minimum(stop, start + 3)
    f = tracks["frame"].to_numpy(np.int64)
    xy = tracks[["x", "y"]].to_numpy(float)
    df = (f[end] - f[ref]).astype(float)
    vel = (xy[end] - xy[ref]) / np.where(df == 0, np.inf, df)[:, None]
    return part, f[end].copy(), xy[end].copy(), vel


def _extend(frames, tracks, builder, ref_of, sd1, sd_v, config, camera, sigma, half) -> None:
    """Probe beyond both ends of every track, frame by frame, until a frame yields nothing."""
    n_frames, ny, nx = np.shape(frames)
    # first and last frame of the (unjoined) track of each row of ``tracks``
    first = tracks.groupby("particle")["frame"].transform("min").to_numpy()
    last = tracks.groupby("particle")["frame"].transform("max").to_numpy()
    joined: set[int] = set()
    for direction in (1, -1):
        part, frame, pos, vel = _end_state(tracks, direction)
        moving = np.hypot(vel[:, 0], vel[:, 1]) > 3 * sd1
        vel = np.where(moving[:, None], vel, 0.0)
        active = ~np.isin(part, list(joined))
        ref = ref_of.loc[part].to_numpy()
        misses = np.zeros(len(part), np.int64)
        for _ in range(config.extend_frames):
            t = frame + direction
            pred = pos + vel * direction
            active &= (t >= 0) & (t < n_frames)
            active &= (pred[:, 0] > -0.5) & (pred[:, 0] < nx - 0.5)
            active &= (pred[:, 1] > -0.5) & (pred[:, 1] < ny - 0.5)
            idx = np.flatnonzero(active)
            if len(idx) == 0:
                break
            m1 = misses[idx] + 1.0
            sd = np.where(moving[idx], np.hypot(sd1 * np.sqrt(m1), sd_v * m1), sd1 * np.sqrt(m1))
            probes = _Probes(t[idx], pred[idx, 0], pred[idx, 1], sd, ref[idx])
            res = _probe(frames, (ny, nx), probes, builder.spots, camera, sigma, config, half)
            take = res["take"]
            # an existing spot at the prediction: join its track if it starts (ends) there
            join = np.zeros(len(idx), bool)
            for j in np.flatnonzero(res["near"] >= 0):
                k = res["near"][j]
                r = builder.spots.row[k]
                ratio = builder.spots.n[k] / ref[idx[j]]
                if r < 0 or not (1 / config.brightness_ratio <= ratio <= config.brightness_ratio):
                    continue
                other = int(builder.particle[r])
                mine = int(part[idx[j]])
                edge = first[r] if direction > 0 else last[r]
                if other == mine or other in joined or mine in joined or edge != t[idx[j]]:
                    continue
                if builder.overlap(mine, other):
                    continue
                builder.join(other, mine)
                joined.update((other, mine))
                join[j] = True
            sel = np.flatnonzero((res["ok"] | (take >= 0)) & ~join)
            got = np.zeros(len(idx), bool)
            if len(sel):
                ratio = builder.spots.n[np.maximum(take[sel], 0)] / ref[idx[sel]]
                fine = (take[sel] < 0) | (
                    (ratio >= 1 / config.brightness_ratio) & (ratio <= config.brightness_ratio)
                )
                sel = sel[fine]
                kept = builder.accept(part[idx], probes, res, sel)
                got[sel[kept >= 0]] = True
                found = sel[kept >= 0]
                new_xy = np.column_stack(
                    [builder.spots.x[kept[kept >= 0]], builder.spots.y[kept[kept >= 0]]]
                )
                step_xy = (new_xy - pos[idx[found]]) * direction
                vel[idx[found]] = np.where(
                    moving[idx[found], None], 0.5 * vel[idx[found]] + 0.5 * step_xy, 0.0
                )
                pos[idx[found]] = new_xy
                frame[idx[found]] = t[idx[found]]
            # a frame without a spot (blink or missed): go on along the prediction, up to
            # ``max_misses`` frames in a row
            lost = idx[~got]
            misses[lost] += 1
            pos[lost], frame[lost] = pred[lost], t[lost]
            misses[idx[got]] = 0
            active[lost[misses[lost] > config.max_misses]] = False
            active[idx[join]] = False


def guided_detect_movie(
    tracks: pd.DataFrame,
    spots: pd.DataFrame,
    frames,
    *,
    detect_config: DetectConfig,
    link_config: LinkConfig,
    config: GuidedConfig,
    pixel_size_um: float,
    frame_interval_s: float,
    resolved: tuple[Camera, float] | None = None,
    flow_config: FlowConfig = FlowConfig(),
) -> pd.DataFrame:
    """:func:`guided_detect` with the camera and PSF width detection used on this movie.

    ``resolved`` gives them when the caller has them (detection's
    :func:`spt.detect.resolve_camera_and_psf`), which saves estimating them again. Otherwise
    the camera comes from ``detect_config`` when calibrated, else it is estimated from the
    movie's first ``detect_config.chunk_frames`` frames exactly as :func:`spt.detect.locate_movie`
    does; the PSF width from the config, else from the spots' ``sigma`` column (the width
    detection fitted with), else estimated as detection does.

    Parameters
    ----------
    tracks, spots : DataFrame
        Linked tracks and all detections of the movie.
    frames : array-like, shape (T, Y, X)
        The raw movie (ADU), e.g. :attr:`spt.io.Movie.frames`.
    detect_config, link_config, config : DetectConfig, LinkConfig, GuidedConfig
        The run's parameters.
    pixel_size_um, frame_interval_s : float
        Calibration (um/px, s).
    resolved : (Camera, float), optional
        Camera model and PSF s.d. (px) detection used on this movie.
    flow_config : FlowConfig
        The flow pass (:func:`spt.flow.follow_flow`).

    Returns
    -------
    DataFrame
        See :func:`guided_detect`.
    """
    if not config.enabled or len(tracks) == 0:
        return tracks
    camera, sigma = resolved or _resolve_like_detection(spots, frames, detect_config)
    return guided_detect(
        tracks,
        frames,
        camera=camera,
        psf_sigma_px=sigma,
        pixel_size_um=pixel_size_um,
        frame_interval_s=frame_interval_s,
        config=config,
        link_config=link_config,
        spots=spots,
        flow_config=flow_config,
    )


def _resolve_like_detection(spots, frames, detect_config: DetectConfig) -> tuple[Camera, float]:
    """The camera and PSF s.d. (px) detection used, when the caller does not have them."""
    camera = detect_config.calibrated_camera()
    sigma = detect_config.psf_sigma_px
    if sigma is None and not detect_config.fit_sigma and "sigma" in spots and len(spots):
        sigma = float(np.median(spots["sigma"].to_numpy(float)))
    if camera is None or sigma is None:
        first = np.asarray(frames[: detect_config.chunk_frames])
        if sigma is None:
            camera, sigma = resolve_camera_and_psf(first, detect_config)
        else:
            camera = estimate_camera(first, detect_config.camera)
    return camera, sigma
