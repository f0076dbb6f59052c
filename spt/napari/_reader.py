"""napari readers: TIFF movies and masks, spt result folders and track tables.

``get_*_reader(path)`` returns ``None`` for anything it cannot read, so napari can offer the
file to another plugin; the returned function builds the layers (see :mod:`spt.napari._layers`).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.io import Movie, read_masks, read_movie, read_track_table, tiff_plane_shape
from spt.napari._layers import (
    LayerDataTuple,
    Run,
    masks_layer,
    movie_layer,
    spots_layer,
    tracks_layer,
)
from spt.pipeline import Analysis, MovieResult, masks_for, movie_name
from spt.schema import SEGMENT_COLUMNS, SPOT_COLUMNS, STAGE_VELOCITY_COLUMNS, empty_table

ReaderFunction = Callable[[object], list[LayerDataTuple]]
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]
TIFF_SUFFIXES = (".tif", ".tiff")
#: Largest movie (bytes) whose maximum projection is computed when a result folder is opened.
PROJECTION_MAX_BYTES = 1 << 30


def _single(path: PathOrPaths) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)


# --------------------------------------------------------------------------- movies and masks


def get_movie_reader(path: PathOrPaths) -> ReaderFunction | None:
    """Reader for a TIFF/OME-TIFF movie, or a ``*_masks.tif`` label image; else ``None``."""
    p = _single(path)
    if p is None or p.suffix.lower() not in TIFF_SUFFIXES or not p.is_file():
        return None
    if movie_name(p).endswith("_masks"):
        return partial(_read_masks_file, p) if _tiff_plane_shape(p) else None
    opened = _open_movie(p)
    if opened is None:
        return None
    movie, calibrated = opened
    return partial(_read_movie_file, movie, calibrated)


def _open_movie(path: Path) -> tuple[Movie, bool] | None:
    """The movie and whether the file holds its calibration; ``None`` if it is not a movie."""
    try:
        return read_movie(path), True
    except SptInputError:
        pass
    try:  # a movie without calibration is shown in pixels and frames
        return read_movie(path, pixel_size_um=1.0, frame_interval_s=1.0), False
    except SptInputError:
        return None


def _read_movie_file(movie: Movie, calibrated: bool, _path: object = None) -> list[LayerDataTuple]:
    name = movie_name(movie.path)
    if not calibrated:
        warnings.warn(
            f"{movie.path}: no pixel size and/or frame interval in the file's metadata; shown in "
            "pixels and frames. Enter the calibration in 'Track particles' before tracking.",
            stacklevel=2,
        )
    layers = [movie_layer(movie, name, calibrated=calibrated)]
    masks_path = masks_for(movie.path, None)
    if masks_path is not None:
        masks = read_masks(masks_path, shape=movie.shape, n_frames=movie.n_frames)
        px, dt = (movie.pixel_size_um, movie.frame_interval_s) if calibrated else (None, None)
        layers.append(masks_layer(masks, px, dt, name=f"{name} masks"))
    return layers


def _tiff_plane_shape(path: Path) -> tuple[int, int] | None:
    try:
        return tiff_plane_shape(path)
    except SptInputError:  # not a TIFF we can open: another plugin may
        return None


def _read_masks_file(path: Path, _path: object = None) -> list[LayerDataTuple]:
    """A ``<movie>_masks.tif`` label image, calibrated from its movie when that lies beside it."""
    shape = _tiff_plane_shape(path)
    masks = read_masks(path, shape=shape)
    stem = movie_name(path)[: -len("_masks")]
    px = dt = None
    for suffix in (".ome.tif", ".ome.tiff", ".tif", ".tiff"):
        movie_path = path.with_name(stem + suffix)
        if movie_path.is_file():
            try:
                movie = read_movie(movie_path)
            except SptInputError:
                continue
            px, dt = movie.pixel_size_um, movie.frame_interval_s
            break
    return [masks_layer(masks, px, dt, name=movie_name(path))]


# --------------------------------------------------------------------------- results


def is_result_folder(folder: Path) -> bool:
    """Whether ``folder`` holds one movie's results as ``spt run`` writes them."""
    return (folder / "tracks.csv").is_file() and (folder / "config.toml").is_file()


def get_results_reader(path: PathOrPaths) -> ReaderFunction | None:
    """Reader for an spt result folder (or a batch folder of them) or a track/spots CSV."""
    p = _single(path)
    if p is None:
        return None
    if p.is_dir():
        folders = (
            [p]
            if is_result_folder(p)
            else sorted(f for f in p.iterdir() if f.is_dir() and is_result_folder(f))
        )
        return partial(_read_result_folders, folders) if folders else None
    if p.suffix.lower() != ".csv" or not p.is_file():
        return None
    if p.name == "tracks.csv" and is_result_folder(p.parent):
        return partial(_read_result_folders, [p.parent])
    kind = table_kind(p)
    if kind is None:
        return None
    return partial(_read_table, p, kind)


def table_kind(path: Path) -> str | None:
    """``"tracks"``, ``"spots"`` or ``None`` from a CSV's header line."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = fh.readline()
    except (OSError, UnicodeDecodeError):
        return None
    sep = max([",", ";", "\t"], key=header.count)
    columns = {c.strip().strip('"') for c in header.strip().split(sep)}
    if {"frame", "x", "y", "particle"} <= columns or {
        "TRACK_ID",
        "POSITION_X",
        "POSITION_Y",
    } <= columns:
        return "tracks"
    if {"frame", "x", "y"} <= columns:
        return "spots"
    return None


def _read_table(path: Path, kind: str, _path: object = None) -> list[LayerDataTuple]:
    px, dt = _calibration_beside(path)
    if kind == "tracks":
        tracks = read_track_table(path, pixel_size_um=px, frame_interval_s=dt)
        spots = tracks[[c for c in SPOT_COLUMNS if c in tracks]]
    else:
        spots = _read_csv(path, SPOT_COLUMNS)
        tracks = empty_table(("frame", "x", "y", "particle"))
    run = Run(tracks=tracks, spots=spots, pixel_size_um=px, frame_interval_s=dt)
    name = path.stem if path.stem not in ("tracks", "spots") else path.parent.name
    if kind == "spots":
        return [spots_layer(run, name)]
    layers = [spots_layer(run, f"{name} spots")]
    if len(tracks):
        layers.append(tracks_layer(run, f"{name} tracks"))
    return layers


def _calibration_beside(path: Path) -> tuple[float | None, float | None]:
    config = path.parent / "config.toml"
    return _header(config)[1:] if config.is_file() else (None, None)


def _header(config: Path) -> tuple[str | None, float | None, float | None]:
    """Source movie and calibration from the comment lines ``write_results`` puts in config.toml."""
    text = config.read_text(errors="replace").splitlines()[:5]
    source = px = dt = None
    for line in text:
        m = re.match(r"#\s*spt \S+ on (.+)$", line)
        if m:
            source = m.group(1).strip()
        m = re.search(r"pixel_size_um = ([^,\s]+), frame_interval_s = ([^,\s]+)", line)
        if m:
            px, dt = (float(v) for v in m.groups())
    ok = px is not None and math.isfinite(px) and px > 0 and dt is not None and dt > 0
    return source, (px if ok else None), (dt if ok else None)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        return empty_table(columns)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return empty_table(columns)


def _find_source(source: str | None, folder: Path) -> Path | None:
    if not source:
        return None
    p = Path(source)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, folder.parent / p, folder / p]
    return next((c for c in candidates if c.is_file()), None)


def read_result_folder(folder: Path) -> tuple[MovieResult, PipelineConfig | None, Movie | None]:
    """One movie's results (and its movie, when the file named in config.toml is found).

    Raises
    ------
    SptInputError
        No calibration in config.toml, or an unreadable table.
    """
    source, px, dt = _header(folder / "config.toml")
    if px is None or dt is None:
        raise SptInputError(folder / "config.toml", "no pixel_size_um/frame_interval_s header line")
    try:
        config = PipelineConfig.from_toml(folder / "config.toml")
    except SptInputError:  # written by another spt version: the tables still show
        config = None
    tracks_raw = _read_csv(folder / "tracks.csv", (*SPOT_COLUMNS, "particle"))
    tracks = read_track_table(folder / "tracks.csv") if len(tracks_raw) else tracks_raw
    segments = _read_csv(folder / "segments.csv", SEGMENT_COLUMNS)
    velocities = _read_csv(folder / "stage_velocities.csv", STAGE_VELOCITY_COLUMNS)
    spots = _read_csv(folder / "spots.csv", SPOT_COLUMNS)
    if not len(spots) and len(tracks):
        spots = tracks[[c for c in SPOT_COLUMNS if c in tracks]]
    movie_path = _find_source(source, folder)
    movie = masks = None
    if movie_path is not None:
        try:
            movie = read_movie(movie_path, pixel_size_um=px, frame_interval_s=dt)
        except SptInputError:
            movie = None
    n_frames = movie.n_frames if movie else int(tracks["frame"].max()) + 1 if len(tracks) else 0
    if movie is not None:
        masks_path = folder / "masks.tif"
        masks_path = masks_path if masks_path.is_file() else masks_for(movie.path, None)
        if masks_path is not None:
            masks = read_masks(masks_path, shape=movie.shape, n_frames=movie.n_frames)
        big = movie.n_frames * movie.shape[0] * movie.shape[1] * 4 > PROJECTION_MAX_BYTES
        projection = np.zeros(movie.shape, np.float32) if big else movie.max_projection()
    else:
        h = int(np.ceil(tracks["y"].max())) + 1 if len(tracks) else 1
        w = int(np.ceil(tracks["x"].max())) + 1 if len(tracks) else 1
        projection = np.zeros((h, w), np.float32)
    result = MovieResult(
        name=folder.name,
        source=movie_path or Path(source or folder),
        spots=spots,
        analysis=Analysis(tracks, segments, velocities),
        pixel_size_um=px,
        frame_interval_s=dt,
        n_frames=n_frames,
        projection=projection,
        masks=masks,
    )
    return result, config, movie


def _read_result_folders(folders: list[Path], _path: object = None) -> list[LayerDataTuple]:
    layers: list[LayerDataTuple] = []
    for folder in folders:
        result, config, movie = read_result_folder(folder)
        name = result.name
        if movie is not None:
            layers.append(movie_layer(movie, name))
        if result.masks is not None:
            layers.append(
                masks_layer(
                    result.masks, result.pixel_size_um, result.frame_interval_s, f"{name} masks"
                )
            )
        run = Run.from_result(result, config)
        layers.append(spots_layer(run, f"{name} spots"))
        if len(run.tracks):  # napari cannot show an empty Tracks layer
            layers.append(tracks_layer(run, f"{name} tracks"))
    return layers
