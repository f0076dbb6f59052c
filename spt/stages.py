"""Delivery-stage classification: a stage for every track point and segment.

With a mask (1 vessel, 2 cell, 3 nucleus), location and motion decide; without one, motion alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from spt.schema import MASK_LABELS, STAGES


@dataclass(frozen=True)
class StageConfig:
    """Stage classification parameters.

    Attributes
    ----------
    wall_distance_um : float
        Points this close to the vessel wall that are not flowing are extravasating, um.
    flow_speed_um_s : float
        Segments faster than this are carried by blood flow, um/s.
    membrane_distance_um : float
        Restricted points inside a cell this close to its boundary are membrane-bound, um.
    perinuclear_distance_um : float
        Points inside a cell this close to the nucleus are perinuclear, um.
    """

    wall_distance_um: float = 1.0
    flow_speed_um_s: float = 5.0
    membrane_distance_um: float = 1.0
    perinuclear_distance_um: float = 1.5


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = image.shape
    return image[
        np.clip(np.round(y).astype(int), 0, h - 1), np.clip(np.round(x).astype(int), 0, w - 1)
    ]


def point_stages_from_masks(
    tracks: pd.DataFrame,
    segments: pd.DataFrame,
    masks: np.ndarray,
    config: StageConfig,
    *,
    pixel_size_um: float,
) -> np.ndarray:
    """Stage of each track point from its place in a static label mask and its motion."""
    vessel = masks == MASK_LABELS["vessel"]
    inside_cell = np.isin(masks, (MASK_LABELS["cell"], MASK_LABELS["nucleus"]))
    px = pixel_size_um
    d_wall = (
        np.where(
            vessel, ndimage.distance_transform_edt(vessel), ndimage.distance_transform_edt(~vessel)
        )
        * px
    )
    d_membrane = ndimage.distance_transform_edt(inside_cell) * px
    nucleus = masks == MASK_LABELS["nucleus"]
    d_nucleus = (
        ndimage.distance_transform_edt(~nucleus) * px
        if nucleus.any()
        else np.full(masks.shape, np.inf)
    )
    x, y = tracks["x"].to_numpy(), tracks["y"].to_numpy()
    speed = (
        tracks[["particle", "segment"]]
        .merge(segments, on=["particle", "segment"], how="left")["speed_um_s"]
        .to_numpy()
    )
    restricted = tracks["state"].isin(["immobile", "confined"]).to_numpy()
    in_vessel, in_cell = _sample(vessel, x, y), _sample(inside_cell, x, y)
    fast = speed > config.flow_speed_um_s
    stage = np.full(len(tracks), "extracellular", dtype=object)
    near_wall = _sample(d_wall, x, y) <= config.wall_distance_um
    stage[in_vessel] = "circulation"
    stage[near_wall & ~fast] = "extravasation"
    stage[in_cell] = "internalization"
    stage[in_cell & restricted & (_sample(d_membrane, x, y) <= config.membrane_distance_um)] = (
        "membrane_binding"
    )
    stage[in_cell & (_sample(d_nucleus, x, y) <= config.perinuclear_distance_um)] = "perinuclear"
    return stage


def point_stages_from_motion(
    tracks: pd.DataFrame, segments: pd.DataFrame, config: StageConfig
) -> np.ndarray:
    """Stage of each track point from motion alone.

    Fast directed segments are ``circulation``, slower directed ones ``internalization``, free
    diffusion ``extracellular``, restricted motion ``membrane_binding`` before any directed run of
    the same track and ``perinuclear`` after one.
    """
    merged = tracks[["particle", "segment", "state"]].merge(
        segments[["particle", "segment", "speed_um_s"]], on=["particle", "segment"], how="left"
    )
    state, speed = merged["state"].to_numpy(), merged["speed_um_s"].to_numpy()
    stage = np.full(len(tracks), "extracellular", dtype=object)
    directed = state == "directed"
    stage[directed & (speed > config.flow_speed_um_s)] = "circulation"
    stage[directed & (speed <= config.flow_speed_um_s)] = "internalization"
    restricted = np.isin(state, ["immobile", "confined"])
    ran_before = (
        pd.Series(directed & (speed <= config.flow_speed_um_s))
        .groupby(tracks["particle"].to_numpy())
        .cummax()
        .to_numpy()
    )
    stage[restricted & ~ran_before] = "membrane_binding"
    stage[restricted & ran_before] = "perinuclear"
    return stage


def classify_stages(
    tracks: pd.DataFrame,
    segments: pd.DataFrame,
    config: StageConfig = StageConfig(),
    *,
    masks: np.ndarray | None = None,
    pixel_size_um: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add a ``stage`` to every track point and every segment.

    A segment takes the most common stage of its points, and its points take the segment's
    stage, so that stages change only at motion-state change points.

    Parameters
    ----------
    tracks : DataFrame
        Output of :func:`spt.segment.segment_tracks`.
    segments : DataFrame
        Segments table from the same call.
    config : StageConfig
        Thresholds.
    masks : ndarray, optional
        Static label image (Y, X) or per-frame labels (T, Y, X); the first plane is used for
        per-frame masks in this version.
    pixel_size_um : float
        Pixel size, um.
    """
    tracks = tracks.copy()
    segments = segments.copy()
    if tracks.empty:
        tracks["stage"] = pd.Series(dtype=object)
        segments["stage"] = pd.Series(dtype=object)
        return tracks, segments
    if masks is not None:
        static = masks if masks.ndim == 2 else masks[0]
        point_stage = point_stages_from_masks(
            tracks, segments, static, config, pixel_size_um=pixel_size_um
        )
    else:
        point_stage = point_stages_from_motion(tracks, segments, config)
    tracks["stage"] = point_stage
    order = {s: i for i, s in enumerate(STAGES)}
    majority = (
        tracks.groupby(["particle", "segment"])["stage"]
        .agg(lambda s: s.value_counts().sort_index(key=lambda i: i.map(order)).idxmax())
        .rename("stage")
        .reset_index()
    )
    segments = segments.drop(columns=["stage"], errors="ignore").merge(
        majority, on=["particle", "segment"], how="left"
    )
    tracks = tracks.drop(columns=["stage"]).merge(majority, on=["particle", "segment"], how="left")
    return tracks, segments
