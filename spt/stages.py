"""Delivery-stage classification: a stage for every track point and every segment.

Each point gets a cost (negative log-likelihood, nats) per stage, from its place in the tissue
masks and its motion, or from a trained classifier; the stage sequence of each track is then
decoded jointly (Viterbi over a left-to-right model), so stages only advance in delivery order
and single noisy points cannot flip a stage back and forth.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from spt.errors import SptInputError
from spt.schema import MASK_LABELS, STAGES, STATES

__all__ = [
    "MOTION_CLASSES",
    "MOTION_COSTS",
    "StageClassifier",
    "StageConfig",
    "classify_stages",
    "decode_stages",
    "location_features",
    "mask_distances",
    "motion_features",
    "rule_costs",
    "stage_features",
]

#: Half-widths (frames) of the rolling windows of the per-point motion features.
FEATURE_WINDOWS: tuple[int, ...] = (3, 8, 25, 60)

#: Motion classes of a point for the rule-based costs, from its own windowed motion (see
#: :class:`StageConfig`); ``unknown`` for a lone point (a one-point track), whose place decides.
MOTION_CLASSES: tuple[str, ...] = ("fast", "directed", "free", "confined", "immobile", "unknown")

#: Cost (nats) of each stage (rows, :data:`STAGES` order) for a point of each motion class
#: (columns, :data:`MOTION_CLASSES` order). 0 means "typical", larger "unlikely". Documented
#: defaults after the stage descriptions of Tada et al., Cancer Res. 67:1138 (2007): flow is fast
#: and directed; crossing the wall and runs toward the nucleus are slow directed motion; the
#: interstitium is free diffusion; membrane-bound and perinuclear particles are confined (a
#: membrane-bound QD keeps diffusing within its confinement, so "immobile" costs it 2); stops
#: between internalisation runs are immobile. A point of unknown motion costs nothing, except a
#: slight preference for flow over extravasation inside the lumen (most particles there flow).
MOTION_COSTS: np.ndarray = np.array(
    [
        # fast directed free confined immobile unknown
        [0.0, 6.0, 8.0, 10.0, 10.0, 0.0],  # circulation
        [8.0, 0.0, 3.0, 3.0, 4.0, 1.0],  # extravasation
        [8.0, 3.0, 0.0, 2.0, 4.0, 0.0],  # extracellular
        [8.0, 4.0, 3.0, 0.0, 2.0, 0.0],  # membrane_binding
        [8.0, 0.0, 3.0, 1.5, 0.0, 0.0],  # internalization
        [8.0, 4.0, 2.0, 0.0, 1.0, 0.0],  # perinuclear
    ]
)
MOTION_COSTS.setflags(write=False)

_FAR_UM = 1e3  # stands for "no such compartment in the mask" in distance features
_STAGE_INDEX = {s: i for i, s in enumerate(STAGES)}


@dataclass(frozen=True)
class StageConfig:
    """Stage classification parameters (distances in um, speeds in um/s, costs in nats).

    Attributes
    ----------
    flow_speed_um_s : float
        A point whose net speed over +-3 frames exceeds this is carried by blood flow.
    free_min_D_um2_s : float
        ...otherwise it diffuses freely if its local D over +-25 frames (covariance-based
        estimator, free of localisation noise; Vestergaard et al., PRE 89, 022726, 2014)
        exceeds this;
    directed_min_speed_um_s : float
        ...otherwise it is directed if its net speed over +-25 frames exceeds this
    directed_min_displacement_um : float
        ...and its net displacement over that window exceeds this (a short window of a
        confined particle can show a high "speed" from a small, noisy displacement);
    immobile_max_radius_um : float
        ...otherwise it is immobile if its noise-corrected radius of gyration over +-25 frames,
        ``sqrt(rg^2 - 2 sigma^2)``, is below this, and confined if not.
    confined_segment_min_points : int
        A point of a segment of at least this many points that the segmenter called
        ``confined`` is never directed or free: over a long segment the confinement is
        established, and its +-25-frame windows only show the particle wandering inside it.
        0 turns this rule off.
    wall_distance_um : float
        Points in the vessel lumen or outside it within this distance of the wall may be
        extravasating (a particle that stopped flowing is crossing, wherever it is in the lumen).
    membrane_distance_um : float
        Points within this distance of a cell boundary (either side) may be membrane-bound.
    perinuclear_distance_um : float
        Internalisation ends, and the perinuclear stage starts, when a particle inside a cell
        first comes within this distance of a nucleus.
    perinuclear_reach_um : float
        Once arrived, a perinuclear particle may wander up to this much farther from the
        nucleus (its confinement region) and stays perinuclear (hysteresis).
    membrane_max_radius_um : float
        Confined points whose confinement radius (noise-corrected spread over +-60 frames) is
        below this look membrane-bound, above it perinuclear.
    location_tolerance_um : float
        Width of the soft edge of every location rule: a point this far on the wrong side of a
        boundary pays the full :attr:`location_cost` (half of it on the boundary itself).
    location_cost : float
        Cost of a point that is clearly in the wrong place for a stage.
    switch_cost : float
        Cost of moving to the next stage along a track.
    skip_cost : float
        Extra cost per stage skipped in one move (e.g. extracellular -> internalization).
    backward_cost : float
        Cost of moving back to an earlier stage; ``inf`` (default) makes the model strictly
        left-to-right (delivery order).
    classifier_path : str or None
        A trained :class:`StageClassifier` file; when set, its costs replace the rules.
    """

    flow_speed_um_s: float = 5.0
    free_min_D_um2_s: float = 0.1
    directed_min_speed_um_s: float = 0.3
    directed_min_displacement_um: float = 0.3
    immobile_max_radius_um: float = 0.07
    confined_segment_min_points: int = 60
    wall_distance_um: float = 1.0
    membrane_distance_um: float = 0.5
    perinuclear_distance_um: float = 1.0
    perinuclear_reach_um: float = 0.4
    membrane_max_radius_um: float = 0.18
    location_tolerance_um: float = 0.2
    location_cost: float = 12.0
    switch_cost: float = 8.0
    skip_cost: float = 2.0
    backward_cost: float = float("inf")
    classifier_path: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "flow_speed_um_s",
            "free_min_D_um2_s",
            "directed_min_speed_um_s",
            "directed_min_displacement_um",
            "immobile_max_radius_um",
            "wall_distance_um",
            "membrane_distance_um",
            "perinuclear_distance_um",
            "perinuclear_reach_um",
            "membrane_max_radius_um",
            "location_tolerance_um",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in (
            "confined_segment_min_points",
            "location_cost",
            "switch_cost",
            "skip_cost",
            "backward_cost",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def transition_costs(self) -> np.ndarray:
        """Cost (nats) of moving from stage i (row) to stage j (column) between two points."""
        i, j = np.indices((len(STAGES), len(STAGES)))
        forward = self.switch_cost + self.skip_cost * np.maximum(j - i - 1, 0)
        return np.where(i == j, 0.0, np.where(j > i, forward, self.backward_cost))


# ----------------------------------------------------------------------------- mask features


def _signed_distance_px(region: np.ndarray) -> np.ndarray:
    """Distance to the region's edge (px): positive inside, negative outside."""
    if not region.any():
        return np.full(region.shape, -np.inf)
    if region.all():
        return np.full(region.shape, np.inf)
    inside = ndimage.distance_transform_edt(region) - 0.5
    outside = ndimage.distance_transform_edt(~region) - 0.5
    return np.where(region, inside, -outside)


def mask_distances(plane: np.ndarray, *, pixel_size_um: float) -> dict[str, np.ndarray]:
    """Distance maps (um) of one label plane (0 background, 1 vessel, 2 cell, 3 nucleus).

    Euclidean distance transforms (scipy.ndimage.distance_transform_edt) measured to the edge
    between pixel centres, so distances are in um whatever the pixel size.

    Returns
    -------
    dict of ndarray, shape (Y, X)
        ``vessel_depth_um`` (signed distance to the vessel wall, positive in the lumen),
        ``cell_depth_um`` (signed distance to the cell boundary, positive inside a cell, nucleus
        included) and ``nucleus_distance_um`` (distance to the nearest nucleus, 0 inside one);
        infinite when the plane has no such compartment.
    """
    nucleus = plane == MASK_LABELS["nucleus"]
    cell = (plane == MASK_LABELS["cell"]) | nucleus
    return {
        "vessel_depth_um": _signed_distance_px(plane == MASK_LABELS["vessel"]) * pixel_size_um,
        "cell_depth_um": _signed_distance_px(cell) * pixel_size_um,
        "nucleus_distance_um": np.maximum(-_signed_distance_px(nucleus), 0.0) * pixel_size_um,
    }


def _check_masks(masks: np.ndarray, tracks: pd.DataFrame) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim not in (2, 3) or masks.size == 0:
        raise SptInputError(
            "masks", f"expected a (Y, X) or (T, Y, X) label image, got {masks.shape}"
        )
    if not np.issubdtype(masks.dtype, np.integer):
        raise SptInputError("masks", f"labels must be integers, got dtype {masks.dtype}")
    if masks.ndim == 3 and len(tracks) and tracks["frame"].max() >= len(masks):
        raise SptInputError(
            "masks",
            f"per-frame masks have {len(masks)} planes but tracks reach frame "
            f"{int(tracks['frame'].max())}",
        )
    return masks


def location_features(
    tracks: pd.DataFrame, masks: np.ndarray, *, pixel_size_um: float
) -> pd.DataFrame:
    """Where each track point is in the tissue, in um (see :func:`mask_distances`).

    Parameters
    ----------
    tracks : DataFrame
        ``frame, x, y`` (px).
    masks : ndarray, shape (Y, X) or (T, Y, X)
        Static labels, or one plane per frame (point at frame ``f`` uses plane ``f``).
    pixel_size_um : float
        Pixel size, um.

    Returns
    -------
    DataFrame
        Same index as ``tracks``: ``vessel_depth_um, cell_depth_um, nucleus_distance_um``
        (bilinear interpolation between pixel centres) and ``label`` (nearest pixel).
    """
    return _location_features(tracks, _check_masks(masks, tracks), pixel_size_um, {})


def _location_features(
    tracks: pd.DataFrame, masks: np.ndarray, pixel_size_um: float, cache: dict
) -> pd.DataFrame:
    """:func:`location_features` with a cache of distance maps (shared between calls)."""
    planes = masks[None] if masks.ndim == 2 else masks
    plane_of_point = (
        np.zeros(len(tracks), np.int64) if masks.ndim == 2 else tracks["frame"].to_numpy(np.int64)
    )
    # Identical planes (a static scene stored per frame) share one set of distance maps.
    out = {k: np.empty(len(tracks)) for k in ("vessel_depth_um", "cell_depth_um")}
    out["nucleus_distance_um"] = np.empty(len(tracks))
    label = np.empty(len(tracks), np.int64)
    x, y = tracks["x"].to_numpy(float), tracks["y"].to_numpy(float)
    h, w = planes.shape[1:]
    for p in np.unique(plane_of_point):
        sel = np.flatnonzero(plane_of_point == p)
        plane = planes[p]
        key = plane.tobytes()
        if key not in cache:
            cache[key] = {
                name: np.where(np.isfinite(image), image, np.sign(image) * _FAR_UM)
                for name, image in mask_distances(plane, pixel_size_um=pixel_size_um).items()
            }
        coords = np.vstack([np.clip(y[sel], 0, h - 1), np.clip(x[sel], 0, w - 1)])
        for name, image in cache[key].items():
            out[name][sel] = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
        label[sel] = plane[
            np.clip(np.round(y[sel]).astype(int), 0, h - 1),
            np.clip(np.round(x[sel]).astype(int), 0, w - 1),
        ]
    return pd.DataFrame({**out, "label": label}, index=tracks.index)


# ----------------------------------------------------------------------------- motion features


def _window_bounds(codes: np.ndarray, frames: np.ndarray, half: int) -> tuple[np.ndarray, ...]:
    """Row range [lo, hi) of the points of the same track within +-half frames of each point."""
    span = int(frames.max() - frames.min()) + 2 * half + 2
    key = codes * span + (frames - frames.min())
    return np.searchsorted(key, key - half, "left"), np.searchsorted(key, key + half, "right")


def _sorted_by_track(tracks: pd.DataFrame) -> bool:
    """True when the rows are in ``particle, frame`` order."""
    p = tracks["particle"].to_numpy()
    f = tracks["frame"].to_numpy()
    dp, df = np.diff(p), np.diff(f)
    return bool(np.all((dp > 0) | ((dp == 0) & (df > 0))))


def estimate_localization_error_um(tracks: pd.DataFrame, *, pixel_size_um: float) -> float:
    """Static localisation error (s.d. per axis, um) measured from the tracks themselves.

    Successive steps of a particle seen with static error sigma are anti-correlated:
    ``cov(dx_k, dx_k+1) = -sigma^2`` (+ ``2 D dt R`` with motion blur; Michalet & Berglund,
    PRE 85, 061916, 2012). The covariance of consecutive one-frame steps is computed per track
    (segment, if segmented) about its mean step, which removes steady drift such as blood flow,
    and the median over tracks with at least 10 step pairs is taken; with motion blur it slightly
    underestimates sigma. Falls back to the median of ``x_err, y_err`` (px); NaN if neither.
    """
    keys = ["particle", "segment"] if "segment" in tracks else ["particle"]
    t = tracks[list(dict.fromkeys([*keys, "frame", "x", "y"]))]
    if not _sorted_by_track(t):
        t = t.sort_values(["particle", "frame"])
    g = t.groupby(keys, sort=False).ngroup().to_numpy()
    f = t["frame"].to_numpy()
    xy = t[["x", "y"]].to_numpy(float)
    ok = (g[1:] == g[:-1]) & (f[1:] - f[:-1] == 1)
    d = np.diff(xy, axis=0)
    mean_step = pd.DataFrame(np.where(ok[:, None], d, np.nan)).groupby(g[1:]).transform("mean")
    d = d - mean_step.to_numpy()
    pair = ok[1:] & ok[:-1]
    if pair.any():
        products = pd.Series(np.sum(d[1:] * d[:-1], axis=1)[pair] / 2)
        per_group = products.groupby(g[2:][pair]).agg(["mean", "size"])
        per_group = per_group[per_group["size"] >= 10]
        if len(per_group) >= 3 and -per_group["mean"].median() > 0:
            return float(np.sqrt(-per_group["mean"].median()) * pixel_size_um)
    if {"x_err", "y_err"} <= set(tracks.columns):
        err = tracks[["x_err", "y_err"]].to_numpy(float)
        err = err[np.isfinite(err)]
        if err.size:
            return float(np.median(err) * pixel_size_um)
    return float("nan")


def motion_features(
    tracks: pd.DataFrame,
    segments: pd.DataFrame,
    *,
    pixel_size_um: float,
    frame_interval_s: float | None,
    loc_error_um: float | None = None,
) -> pd.DataFrame:
    """Motion of each track point: rolling-window and segment features, in um and s.

    Windows are in frames (gap-aware): the window of a point holds the points of its segment
    within +-h frames, for h in :data:`FEATURE_WINDOWS`. Stopping windows at the segmenter's
    change points keeps the motion of one phase out of the features of the next.

    Parameters
    ----------
    tracks : DataFrame
        Sorted by ``particle, frame``; ``x, y`` (px), ``segment`` and ``state``.
    segments : DataFrame
        ``particle, segment, speed_um_s, D_um2_s, alpha`` (+ optional ``confinement_radius_um``).
    pixel_size_um : float
        Pixel size, um.
    frame_interval_s : float or None
        Frame interval, s; without it the speed and D features are NaN.
    loc_error_um : float, optional
        Localisation error (s.d. per axis, um); estimated from ``tracks`` when not given.

    Returns
    -------
    DataFrame
        Same index as ``tracks``: for each h ``speed_net_h_um_s`` (net displacement over the
        window / its duration), ``rg_h_um`` (radius of gyration), ``straightness_h`` (net /
        path length, 0-1); ``net_25_um`` (net displacement over +-25 frames);
        ``D_local_um2_s`` and ``D_25_um2_s``, local diffusion coefficients over +-8 and +-25
        frames from the covariance-based estimator ``<dr_k^2> / (4 dt) + <dr_k . dr_k+1> /
        (2 dt)`` over one-frame steps (Vestergaard, Blainey & Flyvbjerg, PRE 89, 022726, 2014),
        which needs no estimate of the localisation error; the segment's ``seg_speed_um_s,
        seg_D_um2_s, seg_alpha, seg_radius_um`` (confinement radius if given, else sqrt(2) x
        radius of gyration), ``seg_n_points``, one-hot ``state_<state>`` columns, and
        ``loc_error_um`` (``loc_error_um`` if given, else
        :func:`estimate_localization_error_um`; the same for every point).
    """
    px = float(pixel_size_um)
    dt = float(frame_interval_s) if frame_interval_s is not None else np.nan
    codes = tracks.groupby(["particle", "segment"], sort=False).ngroup().to_numpy(np.int64)
    frames = tracks["frame"].to_numpy(np.int64)
    xy = tracks[["x", "y"]].to_numpy(float)
    n = len(tracks)
    first = np.r_[True, codes[1:] != codes[:-1]] if n else np.zeros(0, bool)
    # centre each track on its mean so cumulative sums of squares keep their precision
    xy_c = xy - pd.DataFrame(xy).groupby(codes).transform("mean").to_numpy()
    step = np.r_[0.0, np.hypot(*np.diff(xy, axis=0).T)] if n else np.zeros(0)
    step[first] = 0.0
    unit = np.r_[False, np.diff(frames) == 1] & ~first if n else np.zeros(0, bool)
    zero = np.zeros((1, 2))
    c1 = np.concatenate([zero, np.cumsum(xy_c, axis=0)])
    c2 = np.concatenate([zero, np.cumsum(xy_c**2, axis=0)])
    cpath = np.r_[0.0, np.cumsum(step)]
    c_unit_sq = np.r_[0.0, np.cumsum(np.where(unit, step**2, 0.0))]
    c_unit = np.r_[0, np.cumsum(unit)]
    # products of consecutive one-frame steps (covariance-based D, Vestergaard et al. 2014)
    d_xy = np.r_[zero, np.diff(xy, axis=0)] if n else np.zeros((0, 2))
    pair = unit & np.r_[False, unit[:-1]] if n else np.zeros(0, bool)
    prod = np.r_[0.0, np.sum(d_xy[1:] * d_xy[:-1], axis=1)] if n else np.zeros(0)
    c_pair = np.r_[0.0, np.cumsum(np.where(pair, prod, 0.0))]
    c_npair = np.r_[0, np.cumsum(pair)]
    feats: dict[str, np.ndarray] = {}
    for h in FEATURE_WINDOWS:
        lo, hi = _window_bounds(codes, frames, h) if n else (np.zeros(0, int),) * 2
        count = (hi - lo).astype(float)
        mean = (c1[hi] - c1[lo]) / count[:, None]
        var = np.clip((c2[hi] - c2[lo]) / count[:, None] - mean**2, 0, None).sum(axis=1)
        net = np.hypot(*(xy[hi - 1] - xy[lo]).T) * px
        path = (cpath[hi] - cpath[lo + 1]) * px
        duration = (frames[hi - 1] - frames[lo]).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            feats[f"speed_net_{h}_um_s"] = np.where(duration > 0, net / (duration * dt), np.nan)
            feats[f"rg_{h}_um"] = np.sqrt(var) * px
            feats[f"straightness_{h}"] = np.where(path > 0, net / path, np.nan)
            if h == 25:
                feats["net_25_um"] = net
            if h in (8, 25):
                # steps lo+1..hi-1 lie in the window; pairs of steps lo+2..hi-1
                n_unit = c_unit[hi] - c_unit[lo + 1]
                msd1 = (c_unit_sq[hi] - c_unit_sq[lo + 1]) * px**2 / n_unit
                p0 = np.minimum(lo + 2, hi)
                cov1 = (c_pair[hi] - c_pair[p0]) * px**2 / (c_npair[hi] - c_npair[p0])
                name = "D_local_um2_s" if h == 8 else f"D_{h}_um2_s"
                feats[name] = msd1 / (4 * dt) + cov1 / (2 * dt)
    sigma = loc_error_um
    if sigma is None:
        sigma = estimate_localization_error_um(tracks, pixel_size_um=px) if n else np.nan
    feats["loc_error_um"] = np.full(n, sigma)
    out = pd.DataFrame(feats, index=tracks.index)
    seg = _segment_features(tracks, segments, px)
    for column in seg.columns:
        out[column] = seg[column].to_numpy()
    state = tracks["state"].astype(object).to_numpy() if "state" in tracks else np.full(n, None)
    for s in STATES:
        out[f"state_{s}"] = (state == s).astype(float)
    return out


def _segment_features(tracks: pd.DataFrame, segments: pd.DataFrame, px: float) -> pd.DataFrame:
    keys = ["particle", "segment"]
    g = tracks.groupby(keys, sort=False)
    spread = np.sqrt(g["x"].transform("var", ddof=0) + g["y"].transform("var", ddof=0)) * px
    seg_cols = {
        "speed_um_s": "seg_speed_um_s",
        "D_um2_s": "seg_D_um2_s",
        "alpha": "seg_alpha",
        "confinement_radius_um": "seg_radius_um",
    }
    have = [c for c in seg_cols if c in segments.columns]
    merged = (
        tracks[keys]
        .merge(segments[keys + have].drop_duplicates(keys), on=keys, how="left")
        .rename(columns=seg_cols)
    )
    for column in seg_cols.values():
        if column not in merged:
            merged[column] = np.nan
    radius = merged["seg_radius_um"].to_numpy(float)
    merged["seg_radius_um"] = np.where(np.isfinite(radius), radius, np.sqrt(2) * spread.to_numpy())
    merged["seg_n_points"] = g["x"].transform("size").to_numpy(float)
    return merged[[*seg_cols.values(), "seg_n_points"]]


def stage_features(
    tracks: pd.DataFrame,
    segments: pd.DataFrame,
    *,
    pixel_size_um: float,
    frame_interval_s: float | None = None,
    masks: np.ndarray | None = None,
    loc_error_um: float | None = None,
    _distance_cache: dict | None = None,
) -> pd.DataFrame:
    """All per-point features used to classify stages (motion, and location if ``masks``).

    With masks this also gives ``nucleus_approach_um_s``: how fast the point closes in on the
    nearest nucleus over +-8 frames (positive = toward the nucleus), and
    ``nucleus_closest_um``: the closest the track has come to a nucleus up to this point
    (running minimum of the 3-point median distance, so one stray localisation does not count).

    ``tracks`` must be sorted by ``particle, frame``; see :func:`motion_features` and
    :func:`location_features` for the columns. Use it with :meth:`StageClassifier.fit` to train
    a classifier from labelled tracks.
    """
    feats = motion_features(
        tracks,
        segments,
        pixel_size_um=pixel_size_um,
        frame_interval_s=frame_interval_s,
        loc_error_um=loc_error_um,
    )
    if masks is None:
        return feats
    loc = _location_features(
        tracks, masks, pixel_size_um, {} if _distance_cache is None else _distance_cache
    )
    codes = pd.factorize(tracks["particle"])[0].astype(np.int64)
    frames = tracks["frame"].to_numpy(np.int64)
    lo, hi = _window_bounds(codes, frames, 8)
    d = loc["nucleus_distance_um"].to_numpy()
    duration = (frames[hi - 1] - frames[lo]).astype(float)
    dt = frame_interval_s if frame_interval_s is not None else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        approach = np.where(duration > 0, (d[lo] - d[hi - 1]) / (duration * dt), 0.0)
    loc["nucleus_approach_um_s"] = approach
    loc["nucleus_closest_um"] = _closest_so_far(codes, d)
    return pd.concat([feats, loc], axis=1)


def _closest_so_far(codes: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Running minimum along each track of the distance, median-filtered over 3 points.

    The median filter keeps one stray localisation (or a mislinked point) from counting as an
    arrival.
    """
    n = len(distance)
    prev = np.r_[distance[:1], distance[:-1]]
    nxt = np.r_[distance[1:], distance[-1:]]
    first = np.r_[True, codes[1:] != codes[:-1]]
    last = np.r_[codes[1:] != codes[:-1], True]
    prev = np.where(first, distance, prev)
    nxt = np.where(last, distance, nxt)
    smooth = np.median(np.stack([prev, distance, nxt]), axis=0) if n else distance
    return pd.Series(smooth).groupby(codes).cummin().to_numpy()


# ----------------------------------------------------------------------------- rule-based costs


def _ramp(violation_um: np.ndarray, tolerance_um: float) -> np.ndarray:
    """0 well inside a rule, 1 well outside, 0.5 on its edge (linear over one tolerance)."""
    return np.clip(violation_um / tolerance_um + 0.5, 0.0, 1.0)


def _motion_class(features: pd.DataFrame, config: StageConfig) -> np.ndarray:
    """Index into :data:`MOTION_CLASSES` of each point, from its own windowed motion.

    The point's rolling-window features are used rather than its segment's state so that one
    mis-segmented stretch cannot give tens of points the same wrong motion. Without a frame
    interval (speed features NaN) the segment's state and speed are used instead.
    """
    c = config
    cls = np.full(len(features), MOTION_CLASSES.index("confined"))
    fast_speed = features["speed_net_3_um_s"].to_numpy()
    # no frame interval: no speed anywhere although some windows span time
    if np.isnan(fast_speed).all() and np.isfinite(features["straightness_3"].to_numpy()).any():
        for state in ("directed", "free", "immobile"):
            cls[features[f"state_{state}"].to_numpy() > 0] = MOTION_CLASSES.index(state)
        fast_speed = features["seg_speed_um_s"].to_numpy()
    else:
        sigma = np.nan_to_num(features["loc_error_um"].to_numpy())
        rg2 = features["rg_25_um"].to_numpy() ** 2 - 2 * sigma**2
        with np.errstate(invalid="ignore"):
            immobile = rg2 < c.immobile_max_radius_um**2
            directed = (features["speed_net_25_um_s"].to_numpy() > c.directed_min_speed_um_s) & (
                features["net_25_um"].to_numpy() > c.directed_min_displacement_um
            )
            free = features["D_25_um2_s"].to_numpy() > c.free_min_D_um2_s
            if c.confined_segment_min_points > 0 and "state_confined" in features:
                long_confined = (features["state_confined"].to_numpy() > 0) & (
                    features["seg_n_points"].to_numpy() >= c.confined_segment_min_points
                )
                directed &= ~long_confined
                free &= ~long_confined
        cls[immobile] = MOTION_CLASSES.index("immobile")
        cls[directed] = MOTION_CLASSES.index("directed")
        cls[free] = MOTION_CLASSES.index("free")
    with np.errstate(invalid="ignore"):
        cls[fast_speed > c.flow_speed_um_s] = MOTION_CLASSES.index("fast")
    cls[np.isnan(fast_speed)] = MOTION_CLASSES.index("unknown")  # a lone point: no motion seen
    return cls


def _confinement_radius_um(features: pd.DataFrame) -> np.ndarray:
    """Radius of a uniformly filled disc with the point's noise-corrected spread over +-60 frames.

    A disc of radius r has a radius of gyration r / sqrt(2); localisation noise adds 2 sigma^2
    to rg^2.
    """
    sigma = np.nan_to_num(features["loc_error_um"].to_numpy())
    rg2 = features["rg_60_um"].to_numpy() ** 2 - 2 * sigma**2
    return np.sqrt(2 * np.clip(rg2, 0, None))


def rule_costs(features: pd.DataFrame, config: StageConfig = StageConfig()) -> np.ndarray:
    """Cost (nats) of each stage for each point from documented rules.

    Motion: the cost table :data:`MOTION_COSTS` indexed by the point's motion class (see
    :class:`StageConfig` for the thresholds). Without masks, confined points also pay up to 3
    nats that separate membrane binding (confinement radius below ``membrane_max_radius_um``)
    from perinuclear confinement (above it). Location (when the
    features carry mask distances): each stage has a place, and a point on the wrong side of it
    pays up to ``location_cost``:

    - circulation: in the vessel lumen;
    - extravasation: in the lumen, or outside it within ``wall_distance_um`` of the wall;
    - extracellular: outside the vessel and outside cells;
    - membrane_binding: within ``membrane_distance_um`` of a cell boundary, either side;
    - internalization: inside a cell (its edge included: internalisation starts where the
      particle was bound) and not yet arrived at a nucleus, i.e. never closer than
      ``perinuclear_distance_um`` so far along its track (``nucleus_closest_um``);
    - perinuclear: inside a cell, arrived (closest approach so far within
      ``perinuclear_distance_um``) and now within ``perinuclear_distance_um +
      perinuclear_reach_um`` of the nucleus: entering needs the short distance, staying only
      the longer one (hysteresis).

    The soft edge of every rule (``location_tolerance_um``) absorbs the localisation error
    (~0.04-0.09 um at 400-150 photons) and the pixelation of the masks.

    Returns
    -------
    ndarray, shape (n_points, 6)
        Columns in :data:`spt.schema.STAGES` order.
    """
    c = config
    cls = _motion_class(features, c)
    costs = MOTION_COSTS[:, cls].T.copy()
    if "vessel_depth_um" not in features:
        confined = cls == MOTION_CLASSES.index("confined")
        excess = np.nan_to_num(_confinement_radius_um(features) - c.membrane_max_radius_um)
        costs[confined, _STAGE_INDEX["membrane_binding"]] += 3.0 * _ramp(excess[confined], 0.1)
        costs[confined, _STAGE_INDEX["perinuclear"]] += 3.0 * _ramp(-excess[confined], 0.1)
        return costs
    vessel = features["vessel_depth_um"].to_numpy()
    cell = features["cell_depth_um"].to_numpy()
    nucleus = features["nucleus_distance_um"].to_numpy()
    closest = features["nucleus_closest_um"].to_numpy()
    # Internalisation starts where the particle was bound: its place includes the cell edge.
    edge = c.location_tolerance_um / 2
    violations = np.column_stack(
        [
            -vessel,
            -vessel - c.wall_distance_um,
            np.maximum(vessel, cell),
            np.abs(cell) - c.membrane_distance_um,
            np.maximum(-cell - edge, c.perinuclear_distance_um - closest),
            np.maximum.reduce(
                [
                    -cell,
                    nucleus - c.perinuclear_distance_um - c.perinuclear_reach_um,
                    closest - c.perinuclear_distance_um,
                ]
            ),
        ]
    )
    return costs + c.location_cost * _ramp(violations, c.location_tolerance_um)


# ----------------------------------------------------------------------------- decoding


def decode_stages(
    particle: np.ndarray, costs: np.ndarray, config: StageConfig = StageConfig()
) -> np.ndarray:
    """Most likely stage sequence of every track (Viterbi over a left-to-right model).

    The total cost of a track is the sum of its points' stage costs plus
    :meth:`StageConfig.transition_costs` for every change of stage; the minimum is found exactly
    by dynamic programming (Viterbi 1967; Rabiner, Proc. IEEE 77:257, 1989), all tracks at once.

    Parameters
    ----------
    particle : ndarray
        Track id of each point; the points of a track must be contiguous and in frame order.
    costs : ndarray, shape (n_points, n_stages)
        Cost (nats) of each stage at each point.
    config : StageConfig
        Transition costs.

    Returns
    -------
    ndarray of int
        Index into :data:`spt.schema.STAGES` of each point.
    """
    costs = np.asarray(costs, float)
    n, k = costs.shape
    if n == 0:
        return np.zeros(0, np.int64)
    trans = config.transition_costs()
    particle = np.asarray(particle)
    starts = np.flatnonzero(np.r_[True, particle[1:] != particle[:-1]])
    lengths = np.diff(np.r_[starts, n])
    delta = costs[starts].copy()  # best cost of each track ending in each stage so far
    back = np.zeros((n, k), np.int8)
    for step in range(1, int(lengths.max())):
        live = np.flatnonzero(lengths > step)
        rows = starts[live] + step
        total = delta[live][:, :, None] + trans[None]
        back[rows] = np.argmin(total, axis=1)
        delta[live] = np.min(total, axis=1) + costs[rows]
    path = np.empty(n, np.int64)
    state = np.argmin(delta, axis=1)
    last = starts + lengths - 1
    path[last] = state
    for step in range(int(lengths.max()) - 1, 0, -1):
        live = np.flatnonzero(lengths > step)
        rows = starts[live] + step
        path[rows - 1] = back[rows, path[rows]]
    return path


# ----------------------------------------------------------------------------- trained classifier


class StageClassifier:
    """A trainable per-point stage classifier (scikit-learn), decoded like the rules.

    Trained on labelled tracks (simulator ground truth or hand-labelled tracks) from the
    features of :func:`stage_features`; its class probabilities ``p`` become costs ``-log p``
    for :func:`decode_stages`. Classes are weighted to balance, so the probabilities are free
    of the training set's stage frequencies. Requires the ``ml`` extra (scikit-learn).

    Parameters
    ----------
    use_masks : bool
        Train on location features too (then masks are needed to classify).
    max_iter : int
        Boosting iterations of the histogram gradient-boosting model. Trees are kept small
        (15 leaves, >= 100 points per leaf) because the points of one track are strongly
        correlated: deep trees learn individual tracks, not stages.
    random_state : int
        Seed of the model.
    """

    FORMAT = "spt-stage-classifier-1"

    def __init__(self, *, use_masks: bool = False, max_iter: int = 60, random_state: int = 0):
        self.use_masks = use_masks
        self.max_iter = max_iter
        self.random_state = random_state
        self.model: Any = None
        self.features: list[str] = []

    def _columns(self, features: pd.DataFrame) -> list[str]:
        location = {"vessel_depth_um", "cell_depth_um", "nucleus_distance_um", "label"}
        location |= {"nucleus_approach_um_s", "nucleus_closest_um"}
        return [c for c in features.columns if self.use_masks or c not in location]

    def fit(self, features: pd.DataFrame, stages: Any) -> StageClassifier:
        """Train on per-point ``features`` (:func:`stage_features`) and their true ``stages``."""
        try:
            from sklearn.ensemble import HistGradientBoostingClassifier
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError(
                "training a stage classifier needs scikit-learn: pip install 'spt[ml]'"
            ) from None
        stages = np.asarray(stages, dtype=object)
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise SptInputError("stages", f"unknown stage label(s) {unknown}; known: {STAGES}")
        if self.use_masks and "vessel_depth_um" not in features:
            raise SptInputError("features", "use_masks=True but the features carry no masks")
        self.features = self._columns(features)
        self.model = HistGradientBoostingClassifier(
            max_iter=self.max_iter,
            max_leaf_nodes=15,
            min_samples_leaf=100,
            learning_rate=0.1,
            class_weight="balanced",
            random_state=self.random_state,
        )
        self.model.fit(features[self.features].to_numpy(float), stages)
        return self

    def costs(self, features: pd.DataFrame) -> np.ndarray:
        """Cost ``-log p`` (nats) of each stage (:data:`STAGES` order) at each point."""
        if self.model is None:
            raise RuntimeError("the classifier is not trained: call fit() or load()")
        missing = [c for c in self.features if c not in features]
        if missing:
            hint = " (it was trained with masks)" if self.use_masks else ""
            raise SptInputError("features", f"missing {missing[:4]}{hint}")
        proba = self.model.predict_proba(features[self.features].to_numpy(float))
        full = np.full((len(features), len(STAGES)), 1e-4)
        for column, stage in enumerate(self.model.classes_):
            full[:, _STAGE_INDEX[stage]] = np.maximum(proba[:, column], 1e-4)
        return -np.log(full)

    def save(self, path: str | os.PathLike) -> Path:
        """Save the trained model (joblib pickle) with its feature list and versions."""
        import joblib
        import sklearn

        import spt

        if self.model is None:
            raise RuntimeError("nothing to save: the classifier is not trained")
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        joblib.dump(
            {
                "format": self.FORMAT,
                "spt_version": spt.__version__,
                "sklearn_version": sklearn.__version__,
                "use_masks": self.use_masks,
                "features": self.features,
                "model": self.model,
            },
            tmp,
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> StageClassifier:
        """Load a classifier saved by :meth:`save`. Only load files you trust (pickle)."""
        import joblib
        import sklearn

        try:
            data = joblib.load(path)
        except FileNotFoundError:
            raise SptInputError(path, "classifier file not found") from None
        except Exception as err:
            raise SptInputError(path, f"not a stage classifier file ({err})") from None
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise SptInputError(path, "not a stage classifier file saved by spt")
        if data["sklearn_version"] != sklearn.__version__:
            warnings.warn(
                f"{path}: trained with scikit-learn {data['sklearn_version']}, "
                f"running {sklearn.__version__}",
                stacklevel=2,
            )
        obj = cls(use_masks=data["use_masks"])
        obj.model, obj.features = data["model"], list(data["features"])
        return obj


# ----------------------------------------------------------------------------- entry point


def classify_stages(
    tracks: pd.DataFrame,
    segments: pd.DataFrame,
    config: StageConfig = StageConfig(),
    *,
    masks: np.ndarray | None = None,
    pixel_size_um: float,
    frame_interval_s: float | None = None,
    classifier: StageClassifier | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add a delivery ``stage`` to every track point and every segment.

    Point costs come from the rules (:func:`rule_costs`: masks and motion, or motion alone) or
    from a trained :class:`StageClassifier`; each track's stage sequence is then decoded in
    delivery order (:func:`decode_stages`). A segment takes the most common stage of its points.

    Parameters
    ----------
    tracks : DataFrame
        Output of :func:`spt.segment.segment_tracks`: ``frame, x, y`` (px), ``particle``,
        ``segment``, ``state``.
    segments : DataFrame
        Segments table from the same call (``particle, segment, speed_um_s, D_um2_s, alpha``;
        ``confinement_radius_um`` is used when present).
    config : StageConfig
        Thresholds and decoding costs.
    masks : ndarray, optional
        Label image, static (Y, X) or one plane per frame (T, Y, X): 0 background, 1 vessel,
        2 cell, 3 nucleus. Without masks, stages come from motion alone.
    pixel_size_um : float
        Pixel size, um.
    frame_interval_s : float, optional
        Frame interval, s. Always pass it: the rolling-window motion features need it, and a
        trained classifier requires it. Without it (a warning is issued) the rules fall back
        to the segments' states and speeds, which is markedly less accurate.
    classifier : StageClassifier, optional
        Trained classifier; defaults to the one at ``config.classifier_path`` if set.

    Returns
    -------
    tracks, segments : DataFrame
        Copies sorted by ``particle, frame`` (``particle, segment``), with a ``stage`` column.
    """
    if not pixel_size_um > 0:
        raise SptInputError("pixel_size_um", f"must be > 0, got {pixel_size_um!r}")
    missing = [c for c in ("frame", "x", "y", "particle", "segment", "state") if c not in tracks]
    if missing:
        raise SptInputError("tracks", f"missing column(s) {missing}; run segment_tracks first")
    tracks = tracks.sort_values(["particle", "frame"], kind="stable", ignore_index=True)
    segments = segments.drop(columns=["stage"], errors="ignore")
    if tracks.empty:
        tracks["stage"] = pd.Series(dtype=object)
        return tracks, segments.assign(stage=pd.Series(dtype=object))
    if masks is not None:
        masks = _check_masks(masks, tracks)
    if classifier is None and config.classifier_path:
        classifier = StageClassifier.load(config.classifier_path)
    if frame_interval_s is None:
        warnings.warn(
            "classify_stages without frame_interval_s: motion comes from the segment states "
            "only, which is markedly less accurate (see docs/stages.md)",
            stacklevel=2,
        )
        if classifier is not None:
            raise SptInputError("frame_interval_s", "a trained classifier needs the frame interval")
    sigma = estimate_localization_error_um(tracks, pixel_size_um=pixel_size_um)
    # Whole tracks are classified a chunk at a time, so the features (tens of float columns)
    # never exist for the whole table at once: memory stays flat on movies of 10^5-10^6 points.
    particle = tracks["particle"].to_numpy()
    codes = np.empty(len(tracks), np.int8)
    cache: dict = {}
    for lo, hi in _track_chunks(particle, _CHUNK_POINTS):
        chunk = tracks.iloc[lo:hi]
        features = stage_features(
            chunk,
            segments,
            pixel_size_um=pixel_size_um,
            frame_interval_s=frame_interval_s,
            masks=masks,
            loc_error_um=sigma,
            _distance_cache=cache,
        )
        costs = (
            classifier.costs(features) if classifier is not None else rule_costs(features, config)
        )
        codes[lo:hi] = decode_stages(particle[lo:hi], costs, config)
        del features, costs
    tracks["stage"] = np.asarray(STAGES, dtype=object)[codes]
    keys = tracks[["particle", "segment"]].assign(code=codes)
    counts = keys.groupby(["particle", "segment", "code"], sort=False).size().reset_index(name="n")
    # majority stage; ties go to the earlier stage (the first in delivery order)
    counts = counts.sort_values(
        ["particle", "segment", "n", "code"], ascending=[True, True, False, True]
    )
    majority = counts.drop_duplicates(["particle", "segment"])
    majority = majority.assign(stage=np.asarray(STAGES, dtype=object)[majority["code"].to_numpy()])
    segments = segments.merge(
        majority[["particle", "segment", "stage"]], on=["particle", "segment"], how="left"
    )
    segments = segments.sort_values(["particle", "segment"], ignore_index=True)
    return tracks, segments


#: Points per chunk of whole tracks in :func:`classify_stages` (bounds its memory).
_CHUNK_POINTS = 50_000


def _track_chunks(particle: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Row ranges [lo, hi) of about ``size`` points that never split a track."""
    n = len(particle)
    starts = np.flatnonzero(np.r_[True, particle[1:] != particle[:-1]])
    bounds = [0]
    while bounds[-1] < n:
        k = np.searchsorted(starts, bounds[-1] + size, "left")
        bounds.append(int(starts[k]) if k < len(starts) and starts[k] > bounds[-1] else n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))
