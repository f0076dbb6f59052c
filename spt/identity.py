"""Identity repair of linked tracks: undo exchanges of identity where two tracks meet.

Owns :func:`untangle_tracks`, run last by the guided pass (:mod:`spt.guided`), and
:func:`step_variance`, each track's own step spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from spt.detect import spots_with_neighbours
from spt.errors import SptInputError
from spt.link import renumber_tracks

__all__ = ["step_variance", "untangle_tracks"]


def step_variance(particle, frame, x, y) -> pd.Series:
    """Per-axis variance (px^2) of each track's steps per frame, median over steps of at most
    3 frames (robust to the odd swap); rows sorted by particle then frame."""
    same = (particle[1:] == particle[:-1]) & (frame[1:] - frame[:-1] <= 3)
    dt = np.maximum(frame[1:] - frame[:-1], 1)
    step2 = (np.diff(x) ** 2 + np.diff(y) ** 2) / (2 * dt)
    return pd.Series(step2[same]).groupby(particle[1:][same]).median()


def _meetings(p, f, xy, var_of: pd.Series, contact: float, flow_contact: float) -> list[tuple]:
    """Where two tracks may have exchanged identities, in time order: ``(t0, t1, t_swap, row_a,
    row_b)``, the episode's first and last frame, the frame after which the tracks would be
    exchanged and a row of each track.

    Two kinds: (1) the tracks come within ``contact`` px in one frame, or within
    ``flow_contact`` px if both are flowing (per-axis step variance ``var_of`` > 1 px^2;
    contacts up to 5 frames apart are one episode; ``t_swap`` at the closest approach); (2) a
    track steps farther than 3 s.d. of its own steps to where another track was the frame
    before (an exchange across a frame in which one of the two was not detected).
    """
    tree = cKDTree(np.column_stack([xy, f * 1e4]))
    out = []
    pairs = tree.query_pairs(max(contact, flow_contact), output_type="ndarray").reshape(-1, 2)
    i, j = pairs[:, 0], pairs[:, 1]
    keep = (f[i] == f[j]) & (p[i] != p[j])
    flowing = var_of.reindex(p).fillna(0.0).to_numpy() > 1.0
    gap = np.hypot(*(xy[i] - xy[j]).T)
    keep &= (gap <= contact) | (flowing[i] & flowing[j] & (gap <= flow_contact))
    keep &= gap > 0  # a shared (merged) spot is no evidence
    i, j = i[keep], j[keep]
    if len(i):
        lo, hi = np.minimum(p[i], p[j]), np.maximum(p[i], p[j])
        order = np.lexsort((f[i], hi, lo))
        i, j, lo, hi = i[order], j[order], lo[order], hi[order]
        new = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1]) | (np.diff(f[i]) > 5)]
        starts = np.flatnonzero(new)
        for s0, s1 in zip(starts, np.r_[starts[1:], len(i)], strict=True):
            ci, cj = i[s0:s1], j[s0:s1]
            d = np.hypot(*(xy[ci] - xy[cj]).T)
            out.append((f[ci].min(), f[ci].max(), f[ci][np.argmin(d)], ci[0], cj[0]))
    # steps of 3 s.d. or more (of the track's own steps) onto another track's last place
    same = p[1:] == p[:-1]
    dt = np.maximum(np.diff(f), 1)
    var = np.maximum(var_of.reindex(p[1:]).fillna(1.0).to_numpy(), 0.01)
    big = np.flatnonzero(same & (((xy[1:] - xy[:-1]) ** 2).sum(axis=1) > 2 * 9 * var * dt))
    if len(big):
        to = np.column_stack([xy[big + 1], f[big] * 1e4])
        for r, near in zip(big, tree.query_ball_point(to, contact), strict=True):
            for q in near:
                if p[q] != p[r]:
                    out.append((f[r] + 1, f[r + 1] - 1, f[r], r, q))
    out.sort(key=lambda e: (e[0], e[1]))
    return out


def _isolated(rows, f, crowded, lo: int, hi: int, fallback) -> np.ndarray:
    """``rows`` (one track's, in frame order) in frames ``lo`` to ``hi - 1`` that are not
    ``crowded``; ``fallback`` if fewer than 2."""
    fr = f[rows]
    r = rows[np.searchsorted(fr, lo) : np.searchsorted(fr, hi)]
    r = r[~crowded[r]]
    return r if len(r) >= 2 else fallback


def untangle_tracks(
    tracks: pd.DataFrame,
    *,
    min_llr: float = 6.0,
    contact_px: float = 3.0,
    window_frames: int = 10,
    flow_contact_px: float = 6.0,
    brightness_sd: float = 0.04,
    brightness_max_frames: int = 60,
    isolation_px: float = 2.0,
) -> pd.DataFrame:
    """Undo identity swaps where two tracks meet, from where each was before and after.

    Each episode in which two tracks come within ``contact_px`` of each other (contacts up to 5
    frames apart are one episode) is judged from the two tracks' spots in the ``window_frames``
    frames before it and after it: each particle's position before, moved on by its velocity
    over that window, against its position after, with a Brownian spread from the track's own
    steps (median squared step, so a particle that barely moves is held to its place), and its
    mean log brightness before and after (quantum dots keep theirs). The brightness is averaged
    over as many frames either side as bring the mean's s.d. down to ``brightness_sd`` (dim
    spots are noisy: at 150 photons ten frames cannot tell two quantum dots 20 % apart), from
    the spots with no other track's spot within ``isolation_px`` (the fit of two touching spots
    mixes their light). When exchanging the two tracks after the episode's closest approach is
    more likely by a log-likelihood ratio of ``min_llr``, they are exchanged; episodes are taken
    in time order. Two flowing tracks (steps > 1 px^2 per axis and frame) are judged the same
    way with a constant velocity and the spread of their velocity changes (one overtaking the
    other); a flowing and a non-flowing one are left as the linker made them. The frame-to-frame
    linker cannot do this: it has one diffusion coefficient for all particles and forgets where
    a particle was before two unresolved spots merged (u-track's motion propagation, Jaqaman et
    al., Nat Methods 2008, judges one frame at a time).

    Parameters
    ----------
    tracks : DataFrame
        Linked tracks: ``frame, x, y`` (px), ``signal`` and ``particle``.
    min_llr : float
        Smallest log-likelihood ratio of the exchanged over the kept identities.
    contact_px : float
        Distance (px) at which two tracks meet.
    window_frames : int
        Frames before and after a meeting whose spots judge it.
    flow_contact_px : float
        Distance (px) at which two flowing tracks meet: particles moving several px per frame
        pass each other between two frames, so their closest spots in one frame may be this
        far apart.
    brightness_sd : float
        Target s.d. of each side's mean log brightness: a side takes ``(s / brightness_sd)^2``
        frames, ``s`` the larger per-frame s.d. of the two tracks' log brightness, at least
        ``window_frames`` and at most ``brightness_max_frames``.
    brightness_max_frames : int
        Most frames either side whose spots give the brightness.
    isolation_px : float
        Spots with another track's spot within this distance (px) are left out of the
        brightness; a side with fewer than 2 other spots takes the ``window_frames`` spots.

    Returns
    -------
    DataFrame
        ``tracks`` with the exchanged particle ids, renumbered from 0 in order of first
        appearance and sorted by particle then frame.
    """
    missing = [c for c in ("frame", "x", "y", "signal", "particle") if c not in tracks.columns]
    if missing:
        raise SptInputError("tracks", f"missing column(s) {', '.join(missing)}")
    if min_llr < 0 or contact_px <= 0 or flow_contact_px <= 0 or window_frames < 2:
        raise ValueError(
            "min_llr must be >= 0, contact_px and flow_contact_px > 0, window_frames >= 2"
        )
    if brightness_sd <= 0 or brightness_max_frames < window_frames or isolation_px < 0:
        raise ValueError(
            "brightness_sd must be > 0, brightness_max_frames >= window_frames, isolation_px >= 0"
        )
    tracks = tracks.sort_values(["particle", "frame"], kind="stable", ignore_index=True)
    p = tracks["particle"].to_numpy().copy()
    f = tracks["frame"].to_numpy(np.int64)
    xy = tracks[["x", "y"]].to_numpy(float)
    logn = np.log(np.maximum(tracks["signal"].to_numpy(float), 1e-9))
    if len(p) < 4:
        return tracks
    var_of = step_variance(p, f, xy[:, 0], xy[:, 1])
    same = (p[1:] == p[:-1]) & (f[1:] - f[:-1] <= 3)
    lsd_of = pd.Series(np.abs(np.diff(logn))[same]).groupby(p[1:][same]).median() * 1.05
    episodes = _meetings(p, f, xy, var_of, contact_px, flow_contact_px)
    # a track has one spot per frame: a spot with another within reach is another track's
    crowded = spots_with_neighbours(f, xy[:, 0], xy[:, 1], isolation_px)
    w = window_frames
    # rows of each track (rows are sorted by particle then frame), kept up to date on exchanges
    part, start = np.unique(p, return_index=True)
    rows_of = dict(zip(part.tolist(), np.split(np.arange(len(p)), start[1:]), strict=True))
    # flowing tracks: spread of the velocity changes (second differences / 6: for pure noise
    # the same scale as the step variance)
    two = (p[2:] == p[:-2]) & (f[2:] - f[:-2] == 2)
    acc2 = ((xy[2:] - 2 * xy[1:-1] + xy[:-2]) ** 2).sum(axis=1) / 6
    acc_of = pd.Series(acc2[two]).groupby(p[2:][two]).median().to_dict()
    var_of, lsd_of = var_of.to_dict(), lsd_of.to_dict()
    for t0, t1, t_swap, ra0, rb0 in episodes:
        a, b = p[ra0], p[rb0]
        if a == b or (var_of.get(a, 0.0) > 1.0) != (var_of.get(b, 0.0) > 1.0):
            continue  # one flowing, one not (e.g. stopping at the wall): the linker judges
        ra, rb = rows_of[a], rows_of[b]  # in frame order
        fa, fb = f[ra], f[rb]
        pre_a = ra[np.searchsorted(fa, t0 - w) : np.searchsorted(fa, t0)]
        pre_b = rb[np.searchsorted(fb, t0 - w) : np.searchsorted(fb, t0)]
        post_a = ra[np.searchsorted(fa, t1, "right") : np.searchsorted(fa, t1 + w, "right")]
        post_b = rb[np.searchsorted(fb, t1, "right") : np.searchsorted(fb, t1 + w, "right")]
        if min(len(pre_a), len(pre_b), len(post_a), len(post_b)) < 2:
            continue
        ll = np.zeros(2)  # keep, swap
        s = max(lsd_of.get(a, 0.1), lsd_of.get(b, 0.1), 0.03)
        n_lit = int(np.clip(np.ceil((s / brightness_sd) ** 2), w, brightness_max_frames))
        lit_pre = {
            owner: _isolated(rows, f, crowded, t0 - n_lit, t0, window)
            for owner, rows, window in ((a, ra, pre_a), (b, rb, pre_b))
        }
        lit_post = {
            owner: _isolated(rows, f, crowded, t1 + 1, t1 + 1 + n_lit, window)
            for owner, rows, window in ((a, ra, post_a), (b, rb, post_b))
        }
        for pre, owner in ((pre_a, a), (pre_b, b)):
            t_pre = f[pre].mean()
            m0 = xy[pre].mean(axis=0)
            var = max(var_of.get(owner, 0.1), 0.01)
            # a drift only where the window shows one beyond its noise (a run): extrapolating
            # two particles' slow approach would carry each onto the other
            tc = f[pre] - t_pre
            span2 = float(tc @ tc)
            vel = tc @ (xy[pre] - m0) / span2 if span2 > 0 else np.zeros(2)
            flow = var > 1.0 and len(pre) >= 3
            if flow:
                # carried by the flow: constant velocity, spread from its velocity changes
                var = max(acc_of.get(owner, var), 0.05)
            elif (vel**2).sum() * span2 <= 9 * 2 * var * (1 + len(pre) / 2):
                vel = np.zeros(2)
            lsd = max(lsd_of.get(owner, 0.1), 0.03)
            after = (a, b) if owner == a else (b, a)
            for h, post in enumerate((post_a, post_b) if owner == a else (post_b, post_a)):
                t_post = f[post].mean()
                pred = m0 + vel * (t_post - t_pre)
                v = var * (t_post - t_pre) + var * (1 / len(pre) + 1 / len(post))
                if flow:  # the velocity's own error, carried over the gap
                    v += var * (t_post - t_pre) ** 2 / max(span2, 1.0)
                ll[h] -= ((xy[post].mean(axis=0) - pred) ** 2).sum() / (2 * v)
                lit0, lit1 = lit_pre[owner], lit_post[after[h]]
                vb = lsd**2 * (1 / len(lit0) + 1 / len(lit1))
                ll[h] -= (logn[lit1].mean() - logn[lit0].mean()) ** 2 / (2 * vb)
        if ll[1] - ll[0] >= min_llr:
            cut_a, cut_b = (
                np.searchsorted(fa, t_swap, "right"),
                np.searchsorted(fb, t_swap, "right"),
            )
            p[ra[cut_a:]], p[rb[cut_b:]] = b, a
            rows_of[a] = np.concatenate([ra[:cut_a], rb[cut_b:]])
            rows_of[b] = np.concatenate([rb[:cut_b], ra[cut_a:]])
    return renumber_tracks(tracks.assign(particle=p))
