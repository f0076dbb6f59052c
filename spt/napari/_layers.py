"""spt tables as napari layers: movie -> Image, masks -> Labels, spots -> Points, tracks -> Tracks.

Qt-free. The reader, the sample data and the widgets all build their layers here, so a track
table looks the same in the viewer however it got there; the writers use the inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spt.config import PipelineConfig
from spt.io import Movie
from spt.pipeline import MovieResult
from spt.plot import STAGE_COLORS
from spt.schema import MASK_LABELS, SPOT_COLUMNS, STAGES, STATES, TRACK_COLUMNS
from spt.summary import step_speeds

#: Key of the :class:`Run` in the ``metadata`` of the layers that show it.
META_KEY = "spt"
#: Colour of points with no stage or state (not linked, or not analysed yet).
UNASSIGNED_COLOR = "#808080"
#: One colour per motion state (Okabe-Ito, distinct from neighbours on screen).
STATE_COLORS: dict[str, str] = dict(
    zip(STATES, ("#BBBBBB", "#56B4E9", "#009E73", "#F0E442"), strict=True)
)
#: Mask label colours, as the outlines in :func:`spt.plot.plot_tracks_by_stage`.
MASK_COLORS: dict[int, str] = {
    MASK_LABELS["vessel"]: "#ff6666",
    MASK_LABELS["cell"]: "#66ccff",
    MASK_LABELS["nucleus"]: "#ccccff",
}
#: Colour-by choices offered to users -> (Tracks property, Points feature).
COLOR_BY: dict[str, tuple[str, str]] = {
    "stage": ("stage_id", "stage"),
    "state": ("state_id", "state"),
    "speed": ("speed_um_s", "speed_um_s"),
    "particle": ("track_id", "particle"),
}
#: Feature columns that exist only for display; they are not written back to tables.
DISPLAY_COLUMNS: tuple[str, ...] = ("track_id", "stage_id", "state_id", "speed_um_s")

LayerDataTuple = tuple[Any, dict[str, Any], str]


@dataclass
class Run:
    """The tables behind a Tracks layer and its Points layer (which may show a filtered subset).

    Attributes
    ----------
    tracks : DataFrame
        Every track point (``frame, x, y, particle`` in px and frames, + ``state, stage, ...``).
    spots : DataFrame
        Every detection, linked or not.
    pixel_size_um, frame_interval_s : float or None
        Calibration, um/px and s; ``None`` for a table opened without one.
    result : MovieResult or None
        The full pipeline result (segments, stage velocities, projection) when the tracks were
        analysed with a known calibration.
    config : PipelineConfig or None
        The configuration that produced ``result``.
    """

    tracks: pd.DataFrame
    spots: pd.DataFrame
    pixel_size_um: float | None = None
    frame_interval_s: float | None = None
    result: MovieResult | None = None
    config: PipelineConfig | None = None

    @classmethod
    def from_result(cls, result: MovieResult, config: PipelineConfig | None = None) -> Run:
        return cls(
            tracks=result.analysis.tracks,
            spots=result.spots,
            pixel_size_um=result.pixel_size_um,
            frame_interval_s=result.frame_interval_s,
            result=result,
            config=config,
        )

    @property
    def calibrated(self) -> bool:
        return self.pixel_size_um is not None and self.frame_interval_s is not None


def geometry(
    pixel_size_um: float | None, frame_interval_s: float | None, ndim: int = 3
) -> dict[str, Any]:
    """Layer ``scale``, ``units`` and ``axis_labels`` for ``(t, y, x)`` or ``(y, x)`` data.

    Data stay in pixels and frames (the table contract); the scale shows them in um and s.
    An axis without calibration stays in pixels (frames), and then no units are set.
    """
    px = (pixel_size_um, pixel_size_um) if pixel_size_um else (1.0, 1.0)
    if ndim == 2:
        out: dict[str, Any] = {"scale": px, "axis_labels": ("y", "x")}
        if pixel_size_um:
            out["units"] = ("µm", "µm")
        return out
    out = {"scale": (frame_interval_s or 1.0, *px), "axis_labels": ("t", "y", "x")}
    if pixel_size_um and frame_interval_s:
        out["units"] = ("s", "µm", "µm")
    return out


# --------------------------------------------------------------------------- images


def movie_layer(movie: Movie, name: str, *, calibrated: bool = True) -> LayerDataTuple:
    """Image layer of a lazily opened movie in um and s (in pixels and frames if uncalibrated)."""
    first = np.asarray(movie.frames[0 : min(10, movie.n_frames)], dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(first, [0.5, 99.9]))
    px, dt = (movie.pixel_size_um, movie.frame_interval_s) if calibrated else (None, None)
    meta = {
        "pixel_size_um": px,
        "frame_interval_s": dt,
        "source": str(movie.path),
        "calibration_source": dict(movie.metadata_source),
    }
    kwargs = {
        "name": name,
        "colormap": "gray",
        "contrast_limits": (lo, hi if hi > lo else lo + 1),
        "metadata": {META_KEY: meta},
        **geometry(px, dt),
    }
    return movie.frames, kwargs, "image"


def masks_layer(
    masks: np.ndarray,
    pixel_size_um: float | None,
    frame_interval_s: float | None = None,
    name: str = "masks",
) -> LayerDataTuple:
    """Labels layer of a vessel/cell/nucleus mask, ``(Y, X)`` or one plane per frame."""
    masks = np.asarray(masks)
    geo = geometry(pixel_size_um, frame_interval_s, ndim=masks.ndim)
    regions = {v: k for k, v in MASK_LABELS.items()}
    kwargs = {
        "name": name,
        "opacity": 0.3,
        "colormap": mask_colormap(),
        "features": pd.DataFrame({"index": list(regions), "region": [regions[v] for v in regions]}),
        **geo,
    }
    return masks.astype(np.uint8, copy=False), kwargs, "labels"


def mask_colormap():
    """Fixed colours for mask labels (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
    colors.update(MASK_COLORS)
    return DirectLabelColormap(color_dict=colors)


# --------------------------------------------------------------------------- tracks


def point_speeds(
    tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> np.ndarray:
    """Speed at each track point, um/s: the step arriving at it (the first point: the first step).

    Rows follow ``tracks``; a track of one point has speed 0.
    """
    if tracks.empty:
        return np.zeros(0)
    t = tracks if "stage" in tracks else tracks.assign(stage="")
    steps = step_speeds(t, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s)
    keyed = t[["particle", "frame"]].merge(steps, on=["particle", "frame"], how="left")
    speed = keyed["speed_um_s"].groupby(keyed["particle"].to_numpy()).bfill()
    return speed.fillna(0.0).to_numpy(dtype=float)


def _codes(values: pd.Series, names: tuple[str, ...]) -> np.ndarray:
    """1-based position of each value in ``names``; 0 for anything else (missing, unknown)."""
    lookup = {name: i + 1 for i, name in enumerate(names)}
    return values.map(lookup).fillna(0).to_numpy(dtype=np.int64)


def code_colormap(name: str, names: tuple[str, ...], colors: dict[str, str]):
    """A colormap taking the integer codes of :func:`_codes` (0 = unassigned) to fixed colours.

    napari's Tracks layer maps property values with a colormap whose controls span [0, 1]; this
    one maps code ``k`` to bin ``k`` of ``len(names) + 1`` equal bins, so a stage keeps its
    colour whatever stages are present.
    """
    from napari.utils.colormaps import Colormap

    class _CodeColormap(Colormap):
        def map(self, values):
            values = np.asarray(values, dtype=float)
            return super().map((values + 0.5) / len(self.colors))

    palette = [UNASSIGNED_COLOR] + [colors[n] for n in names]
    return _CodeColormap(
        colors=palette,
        controls=np.linspace(0.0, 1.0, len(palette) + 1),
        interpolation="zero",
        name=name,
    )


def tracks_features(run: Run, tracks: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-point features of a Tracks layer: the table's columns plus display codes and speed."""
    t = run.tracks if tracks is None else tracks
    features = t.reset_index(drop=True).copy()
    if "stage" in features:
        features["stage_id"] = _codes(features["stage"], STAGES)
    if "state" in features:
        features["state_id"] = _codes(features["state"], STATES)
    if run.calibrated and len(features):
        features["speed_um_s"] = point_speeds(
            features, pixel_size_um=run.pixel_size_um, frame_interval_s=run.frame_interval_s
        )
    return features


def tracks_layer(
    run: Run, name: str, *, extra: dict[str, Any] | None = None, color_by: str = "stage"
) -> LayerDataTuple:
    """Tracks layer of ``run``: data ``(particle, frame, y, x)``, features per point.

    ``extra`` overrides layer keyword arguments (e.g. the scale of the image tracked).
    """
    t = run.tracks.sort_values(["particle", "frame"], kind="stable")
    features = tracks_features(run, t)
    data = t[["particle", "frame", "y", "x"]].to_numpy(dtype=float)
    kwargs: dict[str, Any] = {
        "name": name,
        "features": features,
        "colormaps_dict": {
            "stage_id": code_colormap("stage", STAGES, STAGE_COLORS),
            "state_id": code_colormap("state", STATES, STATE_COLORS),
        },
        "tail_width": 3,
        "tail_length": int(min(max(t["frame"].max() + 1, 1), 300)) if len(t) else 30,
        "blending": "translucent",
        "metadata": {META_KEY: run},
        **geometry(run.pixel_size_um, run.frame_interval_s),
        **(extra or {}),
    }
    available = tracks_color_options(features)
    if color_by in available:
        kwargs["color_by"] = COLOR_BY[color_by][0]
    return data, kwargs, "tracks"


def tracks_color_options(features: pd.DataFrame) -> list[str]:
    """The colour-by choices that ``features`` can show (``particle`` always)."""
    return [k for k, (prop, _) in COLOR_BY.items() if prop in features or k == "particle"]


def spots_features(run: Run) -> pd.DataFrame:
    """Every detection, with the track columns of the linked ones (``particle`` -1 if none)."""
    spots = run.spots.reset_index(drop=True)
    extra = [c for c in ("particle", "segment", "state", "stage") if c in run.tracks]
    tracked = run.tracks[["frame", "x", "y", *extra]].copy()
    if run.calibrated and len(tracked):
        tracked["speed_um_s"] = point_speeds(
            run.tracks, pixel_size_um=run.pixel_size_um, frame_interval_s=run.frame_interval_s
        )
    features = spots.merge(tracked, on=["frame", "x", "y"], how="left")
    for col in ("particle", "segment"):
        if col in features:
            features[col] = features[col].fillna(-1).astype(np.int64)
    for col in ("state", "stage"):
        if col in features:
            features[col] = features[col].fillna("").astype(str)
    return features


def spots_layer(
    run: Run, name: str, *, extra: dict[str, Any] | None = None, color_by: str = "stage"
) -> LayerDataTuple:
    """Points layer of every detection, ``(frame, y, x)``, ringed in the colour of its stage."""
    features = spots_features(run)
    data = features[["frame", "y", "x"]].to_numpy(dtype=float)
    kwargs: dict[str, Any] = {
        "name": name,
        "features": features,
        "symbol": "ring",
        "size": 4,
        "border_width": 0,
        "face_color": UNASSIGNED_COLOR,
        "blending": "translucent",
        "metadata": {META_KEY: run},
        **geometry(run.pixel_size_um, run.frame_interval_s),
        **(extra or {}),
    }
    kwargs.update(points_color_kwargs(features, color_by))
    return data, kwargs, "points"


def points_color_kwargs(features: pd.DataFrame, color_by: str) -> dict[str, Any]:
    """``face_color`` settings of a Points layer showing ``color_by`` (see :data:`COLOR_BY`)."""
    column = COLOR_BY[color_by][1]
    if column not in features or not len(features):
        return {"face_color": UNASSIGNED_COLOR}
    if color_by in ("stage", "state"):
        palette = STAGE_COLORS if color_by == "stage" else STATE_COLORS
        return {"face_color": column, "face_color_cycle": {"": UNASSIGNED_COLOR, **palette}}
    return {"face_color": column, "face_colormap": "turbo"}


def track_lengths(tracks: pd.DataFrame) -> pd.Series:
    """Number of points of each particle."""
    return tracks.groupby("particle")["frame"].size()


def track_filter(
    tracks: pd.DataFrame, *, min_points: int = 1, stage: str | None = None
) -> np.ndarray:
    """Rows of ``tracks`` kept by the display filters.

    Parameters
    ----------
    min_points : int
        Keep tracks with at least this many points (detections).
    stage : str, optional
        Keep tracks that pass through this delivery stage (all their points are kept).

    Returns
    -------
    ndarray of bool, one per row.
    """
    lengths = track_lengths(tracks)
    keep = set(lengths.index[lengths >= min_points])
    if stage:
        if "stage" not in tracks:
            return np.zeros(len(tracks), bool)
        keep &= set(tracks.loc[tracks["stage"] == stage, "particle"])
    return tracks["particle"].isin(keep).to_numpy()


# --------------------------------------------------------------------------- back to tables


def tracks_table(data: np.ndarray, features: pd.DataFrame | None) -> pd.DataFrame:
    """Track table (DESIGN columns) from a Tracks layer's ``data`` and ``features``.

    ``data`` rows are ``(track_id, t, y, x)`` in the layer's data coordinates (pixels and frames);
    the display-only feature columns (:data:`DISPLAY_COLUMNS`) are dropped.
    """
    data = np.asarray(data, dtype=float)
    if data.ndim != 2 or data.shape[1] != 4:
        raise ValueError(
            f"spt tracks are 2-D: need Tracks data (track_id, t, y, x), got shape {data.shape}"
        )
    table = pd.DataFrame(
        {
            "frame": np.round(data[:, 1]).astype(np.int64),
            "x": data[:, 3],
            "y": data[:, 2],
            "particle": data[:, 0].astype(np.int64),
        }
    )
    if features is not None and len(features) == len(table):
        f = pd.DataFrame(features).reset_index(drop=True)
        skip = {"frame", "x", "y", "particle", *DISPLAY_COLUMNS}
        for col in f.columns:
            if col not in skip:
                table[col] = f[col].to_numpy()
    ordered = [c for c in TRACK_COLUMNS if c in table]
    return table[ordered + [c for c in table if c not in ordered]]


def spots_table(data: np.ndarray, features: pd.DataFrame | None) -> pd.DataFrame:
    """Spots table (DESIGN columns) from a Points layer's ``(frame, y, x)`` data and features."""
    data = np.asarray(data, dtype=float)
    if data.ndim != 2 or data.shape[1] != 3:
        raise ValueError(f"spt spots are 2-D movies: need Points data (t, y, x), got {data.shape}")
    table = pd.DataFrame(
        {"frame": np.round(data[:, 0]).astype(np.int64), "x": data[:, 2], "y": data[:, 1]}
    )
    if features is not None and len(features) == len(table):
        f = pd.DataFrame(features).reset_index(drop=True)
        for col in SPOT_COLUMNS:
            if col in f and col not in table:
                table[col] = f[col].to_numpy()
    return table[[c for c in SPOT_COLUMNS if c in table]]
