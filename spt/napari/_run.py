"""The pipeline on a napari layer's frames: spt.pipeline's functions, with progress and cancel.

Qt-free; the Track particles widget runs these in a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.guided import guided_detect_movie
from spt.pipeline import MovieResult, analyze_tracks, array_chunks, track_frames
from spt.schema import MASK_LABELS

#: ``progress(phase, done, total)``: phase "detecting" counts frames; others have total 0.
Progress = Callable[[str, int, int], None]
#: Frames per detection block: small, so progress is smooth and cancel is quick.
CHUNK_FRAMES = 16


class Cancelled(Exception):
    """The user cancelled the run."""


@dataclass
class Outcome:
    """How a run in a worker thread ended: its value, the input error, or cancelled."""

    value: Any = None
    error: SptInputError | None = None
    cancelled: bool = False


def outcome_of(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Outcome:
    """Call ``func`` and wrap what happens; bugs (other exceptions) still propagate.

    Input errors and cancelling are expected ends of a run, not failures of the worker thread,
    so they come back as values instead of tracebacks.
    """
    try:
        return Outcome(value=func(*args, **kwargs))
    except Cancelled:
        return Outcome(cancelled=True)
    except SptInputError as err:
        return Outcome(error=err)


def check_masks(masks: np.ndarray, frame_shape: tuple[int, int], source: str) -> np.ndarray:
    """Validate a mask drawn in napari: the movie's (Y, X), labels 0-3; returned as uint8.

    Raises
    ------
    SptInputError
        Wrong shape or labels outside :data:`spt.schema.MASK_LABELS`.
    """
    masks = np.asarray(masks)
    if masks.shape[-2:] != tuple(frame_shape) or masks.ndim not in (2, 3):
        raise SptInputError(
            source, f"mask shape {masks.shape} does not match the movie's frames {frame_shape}"
        )
    allowed = sorted(MASK_LABELS.values())
    bad = np.setdiff1d(np.unique(masks), allowed)
    if bad.size:
        names = ", ".join(f"{v} {k}" for k, v in MASK_LABELS.items())
        raise SptInputError(source, f"mask labels {bad[:5].tolist()} not allowed; use {names}")
    return masks.astype(np.uint8, copy=False)


def track_layer_frames(
    frames,
    config: PipelineConfig,
    *,
    name: str,
    source: str,
    pixel_size_um: float,
    frame_interval_s: float,
    first_frame: int = 0,
    stop_frame: int | None = None,
    masks: np.ndarray | None = None,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> MovieResult:
    """Detect, link and analyse frames ``first_frame .. stop_frame - 1`` of a ``(T, Y, X)`` array.

    Parameters
    ----------
    frames : array-like, shape (T, Y, X)
        E.g. an Image layer's data (numpy, memmap or a lazy array); read block by block.
    config : PipelineConfig
        Detection, linking, segmentation and stage parameters.
    name, source : str
        Result name and where the frames came from (layer name or file).
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.
    first_frame, stop_frame : int
        Frame range; frame numbers in the tables are those of ``frames``.
    masks : ndarray, optional
        Vessel/cell/nucleus labels, ``(Y, X)`` or ``(T, Y, X)``.
    progress : callable, optional
        ``progress(phase, done, total)``.
    cancelled : callable, optional
        Polled between blocks and stages; when it returns True the run stops with
        :class:`Cancelled`.

    Returns
    -------
    MovieResult
    """
    shape = tuple(getattr(frames, "shape", ()))
    if len(shape) != 3:
        raise SptInputError(source, f"need a movie of shape (T, Y, X), got shape {shape}")
    for what, value in (("pixel size", pixel_size_um), ("frame interval", frame_interval_s)):
        if not (value is not None and np.isfinite(value) and value > 0):
            raise SptInputError(source, f"{what} must be a positive number, got {value}")
    stop = shape[0] if stop_frame is None else min(int(stop_frame), shape[0])
    first = int(first_frame)
    if not 0 <= first < stop:
        raise SptInputError(source, f"empty frame range {first}..{stop - 1}")
    if masks is not None:
        masks = check_masks(masks, shape[1:], f"masks for {source}")
    report = progress or (lambda phase, done, total: None)
    stop_requested = cancelled or (lambda: False)
    projection = np.full(shape[1:], -np.inf, np.float32)

    def chunks() -> Iterator[tuple[int, np.ndarray]]:
        for start in range(first, stop, CHUNK_FRAMES):
            if stop_requested():
                raise Cancelled
            block = np.asarray(frames[start : min(start + CHUNK_FRAMES, stop)], dtype=np.float32)
            for offset, chunk in array_chunks(block, CHUNK_FRAMES):
                np.maximum(projection, chunk.max(axis=0), out=projection)
                yield start + offset, chunk

    def on_chunk(done: int, _total: int | None) -> None:
        report("detecting", done - first, stop - first)
        if done >= stop:
            report("linking", 0, 0)

    t0 = time.perf_counter()
    report("detecting", 0, stop - first)
    spots, tracks = track_frames(
        chunks(),
        config,
        n_frames=stop,
        pixel_size_um=pixel_size_um,
        frame_interval_s=frame_interval_s,
        progress=on_chunk,
    )
    if stop_requested():
        raise Cancelled
    tracks = _guided(frames, spots, tracks, config, first, stop, pixel_size_um, frame_interval_s)
    timings_s = {"detect_link": time.perf_counter() - t0}
    if stop_requested():
        raise Cancelled
    report("analysing", 0, 0)
    movie = (name, source, pixel_size_um, frame_interval_s, stop - first, projection, masks)
    return _analysed(tracks, spots, config, movie, timings_s)


def _guided(
    frames,
    spots: pd.DataFrame,
    tracks: pd.DataFrame,
    config: PipelineConfig,
    first: int,
    stop: int,
    pixel_size_um: float,
    frame_interval_s: float,
) -> pd.DataFrame:
    """Track-guided re-detection (:mod:`spt.guided`), as ``spt run`` does, on frames
    ``first .. stop - 1`` only: frame numbers are shifted so that no probe leaves the range."""

    def shift(table: pd.DataFrame, by: int) -> pd.DataFrame:
        return table.assign(frame=table["frame"] + by) if by else table

    found = guided_detect_movie(
        shift(tracks, -first),
        shift(spots, -first),
        frames[first:stop],
        detect_config=config.detect,
        link_config=config.link,
        config=config.guided,
        flow_config=config.flow,
        pixel_size_um=pixel_size_um,
        frame_interval_s=frame_interval_s,
    )
    return shift(found, first)


def reanalyze(
    tracks: pd.DataFrame,
    spots: pd.DataFrame,
    config: PipelineConfig,
    *,
    name: str,
    source: str,
    pixel_size_um: float,
    frame_interval_s: float,
    projection: np.ndarray,
    n_frames: int,
    masks: np.ndarray | None = None,
) -> MovieResult:
    """Segment and classify existing tracks again (e.g. with edited masks), without re-tracking.

    The previous ``segment``, ``state`` and ``stage`` columns are dropped first.
    """
    if masks is not None:
        masks = check_masks(masks, projection.shape, f"masks for {source}")
    raw = tracks.drop(columns=[c for c in ("segment", "state", "stage") if c in tracks])
    movie = (name, source, pixel_size_um, frame_interval_s, n_frames, projection, masks)
    return _analysed(raw, spots, config, movie, {})


def _analysed(
    tracks: pd.DataFrame,
    spots: pd.DataFrame,
    config: PipelineConfig,
    movie: tuple[str, str, float, float, int, np.ndarray, np.ndarray | None],
    timings_s: dict[str, float],
) -> MovieResult:
    """Segment and classify ``tracks`` (:func:`spt.pipeline.analyze_tracks`) into the result of
    a movie ``(name, source, pixel_size_um, frame_interval_s, n_frames, projection, masks)``
    (masks already checked); the analysis time is added to ``timings_s``."""
    name, source, pixel_size_um, frame_interval_s, n_frames, projection, masks = movie
    t0 = time.perf_counter()
    analysis = analyze_tracks(
        tracks, config, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s, masks=masks
    )
    return MovieResult(
        name=name,
        source=Path(source),
        spots=spots,
        analysis=analysis,
        pixel_size_um=pixel_size_um,
        frame_interval_s=frame_interval_s,
        n_frames=n_frames,
        projection=projection,
        masks=masks,
        timings_s={**timings_s, "analyze": time.perf_counter() - t0},
    )
