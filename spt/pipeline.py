"""The straight line from movie to results: read -> detect -> link -> segment -> classify -> export.

The CLI, the batch runner (:mod:`spt.batch`) and the napari widget all call these functions.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import spt
from spt._helpers import segment_part
from spt.camera import Camera
from spt.config import PipelineConfig
from spt.detect import MIN_DETECT_FRAME_PX, locate_chunks, resolve_camera_and_psf
from spt.errors import SptInputError
from spt.guided import guided_detect_movie
from spt.io import (
    Movie,
    check_float_frames,
    check_track_table,
    read_masks,
    read_movie,
    release_mapped_pages,
    write_table,
)
from spt.link import link
from spt.provenance import PROVENANCE_FILE, environment, file_record, now_utc
from spt.schema import SPOT_COLUMNS, TRACK_COLUMNS, empty_table
from spt.segment import pool_confinement
from spt.stages import classify_stages
from spt.summary import MovieStages, stage_velocities

ProgressCallback = Callable[[int, int | None], None]


@dataclass
class Analysis:
    """Tracks analysed into motion segments and delivery stages."""

    tracks: pd.DataFrame
    segments: pd.DataFrame
    stage_velocities: pd.DataFrame


@dataclass
class MovieResult:
    """Everything the pipeline produced for one movie."""

    name: str
    source: Path
    spots: pd.DataFrame
    analysis: Analysis
    pixel_size_um: float
    frame_interval_s: float
    n_frames: int
    projection: np.ndarray
    masks: np.ndarray | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    masks_path: Path | None = None
    metadata_source: dict[str, str] = field(default_factory=dict)
    #: Size and hash of the input files (:func:`input_records`), when already computed.
    inputs: dict[str, Any] | None = None

    def stages(self) -> MovieStages:
        """The movie's classified tracks and segments with its calibration (:mod:`spt.summary`)."""
        a = self.analysis
        return MovieStages(
            a.tracks, a.segments, self.pixel_size_um, self.frame_interval_s, name=self.name
        )


def movie_name(path: str | os.PathLike) -> str:
    """Name of a movie's result folder: the file name without ``.tif``/``.ome.tif``."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def masks_for(movie_path: Path, masks_path: str | os.PathLike | None) -> Path | None:
    """The mask file for a movie: the one given, else ``<name>_masks.tif`` beside it, if any."""
    if masks_path is not None:
        return Path(masks_path)
    for suffix in (".tif", ".tiff"):
        candidate = Path(movie_path).with_name(f"{movie_name(movie_path)}_masks{suffix}")
        if candidate.exists():
            return candidate
    return None


#: Smallest frame side (px) the pipeline accepts: below it no pixel has neighbours on both sides.
MIN_FRAME_PX = 3


def check_frame_shape(shape: tuple[int, ...], source: str | os.PathLike | None) -> None:
    """Refuse frames smaller than :data:`MIN_FRAME_PX` on a side (nothing can be detected)."""
    if min(shape) < MIN_FRAME_PX:
        raise SptInputError(
            source,
            f"frames of {' x '.join(map(str, shape))} px are too small to detect spots "
            f"(need at least {MIN_FRAME_PX} x {MIN_FRAME_PX})",
        )


def array_chunks(frames: np.ndarray, chunk_frames: int = 64) -> Iterator[tuple[int, np.ndarray]]:
    """Split an in-memory (T, Y, X) array into ``(first frame, chunk)`` pairs.

    Raises
    ------
    SptInputError
        Not 3-D, not integer or float pixels, or (float) NaN, infinite or beyond float32 range.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise SptInputError(None, f"expected a movie of shape (T, Y, X), got shape {frames.shape}")
    if frames.dtype.kind not in "uif":
        raise SptInputError(None, f"unsupported pixel type {frames.dtype}; need integer or float")
    check_frame_shape(frames.shape[1:], None)
    for start in range(0, len(frames), chunk_frames):
        chunk = frames[start : start + chunk_frames]
        if chunk.dtype.kind == "f":
            check_float_frames(chunk, None, start)
        yield start, chunk


def detect_chunks(
    chunks: Iterable[tuple[int, np.ndarray]],
    config: PipelineConfig,
    *,
    n_frames: int | None = None,
    progress: ProgressCallback | None = None,
    resolved: tuple[Camera, float] | None = None,
) -> pd.DataFrame:
    """Detect spots in consecutive ``(first frame, frames)`` chunks, as one pass over a movie.

    The camera model and PSF width are estimated once (from the first frames) unless
    ``resolved`` gives them, so the spots do not depend on how the frames were cut into chunks.
    """
    report = None if progress is None else (lambda done, _total: progress(done, n_frames))
    return locate_chunks(chunks, config.detect, progress=report, resolved=resolved)


def track_frames(
    chunks: Iterable[tuple[int, np.ndarray]],
    config: PipelineConfig,
    *,
    n_frames: int,
    pixel_size_um: float,
    frame_interval_s: float,
    progress: ProgressCallback | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect spots chunk by chunk and link them into tracks.

    Parameters
    ----------
    chunks : iterable of (int, ndarray)
        ``(first frame index, frames (n, Y, X))`` pairs, e.g. :meth:`spt.io.Movie.iter_chunks`
        or :func:`array_chunks`.
    config : PipelineConfig
        Detection and linking parameters are used.
    n_frames : int
        Total frames, for progress reports.
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.
    progress : callable, optional
        Called as ``progress(frames_done, n_frames)`` after each chunk; it may raise to cancel.

    Returns
    -------
    spots, tracks : DataFrame
    """
    spots = detect_chunks(chunks, config, n_frames=n_frames, progress=progress)
    tracks = link(
        spots, config.link, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s
    )
    return spots, tracks


def analyze_tracks(
    tracks: pd.DataFrame,
    config: PipelineConfig,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    masks: np.ndarray | None = None,
    executor: Any = None,
    n_parts: int | None = None,
) -> Analysis:
    """Segment tracks into motion states, classify delivery stages and summarise per stage.

    ``tracks`` is validated first (:func:`spt.io.check_track_table`): bad tables raise
    :class:`~spt.errors.SptInputError`; an empty table gives empty, headed results.

    Parameters
    ----------
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Segment parts of the track table in parallel on it. Each part holds whole tracks and
        each track is segmented on its own, so the results equal a serial run; the stage
        classification (which pools all tracks for the localisation error) runs here.
    n_parts : int, optional
        Number of parts for ``executor`` (default: 4 per CPU of this machine).
    """
    tracks = check_track_table(tracks, "tracks")
    # Analysis solves many tiny linear systems: multi-threaded BLAS only adds overhead (3x
    # slower on 2 cores), so it runs single-threaded.
    with threadpool_limits(limits=1, user_api="blas"):
        if executor is None or tracks["particle"].nunique() < 2:
            segmented, segments = segment_part(
                tracks,
                config.segment,
                pixel_size_um=pixel_size_um,
                frame_interval_s=frame_interval_s,
            )
        else:
            segmented, segments = _segment_parallel(
                tracks,
                config,
                executor,
                n_parts or 4 * (os.cpu_count() or 1),
                pixel_size_um=pixel_size_um,
                frame_interval_s=frame_interval_s,
            )
        del tracks  # this function's validated copy: each table is freed once it is used
        release_free_memory()
        staged, segments = classify_stages(
            segmented,
            segments,
            config.stages,
            masks=masks,
            pixel_size_um=pixel_size_um,
            frame_interval_s=frame_interval_s,
        )
        del segmented
        release_free_memory()
        columns = [c for c in TRACK_COLUMNS if c in staged] + [
            c for c in staged if c not in TRACK_COLUMNS
        ]
        if list(staged.columns) != columns:
            staged = staged[columns]
        velocities = stage_velocities(
            staged, segments, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s
        )
        return Analysis(staged, segments, velocities)


def track_parts(particle: np.ndarray, n_parts: int) -> list[slice]:
    """Split rows sorted by particle into at most ``n_parts`` row ranges of whole tracks.

    The ranges hold about equal numbers of rows (segmentation time grows with track length).
    """
    starts = np.flatnonzero(np.r_[True, particle[1:] != particle[:-1]])
    n_parts = max(1, min(n_parts, len(starts)))
    targets = np.arange(1, n_parts) * len(particle) / n_parts
    cuts = np.unique(starts[np.clip(np.searchsorted(starts, targets), 0, len(starts) - 1)])
    bounds = [0, *[int(c) for c in cuts if c > 0], len(particle)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _segment_parallel(
    tracks: pd.DataFrame,
    config: PipelineConfig,
    executor: Any,
    n_parts: int,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segment parts of whole tracks on ``executor``, then decide confinement on the whole table
    (:func:`spt.segment.pool_confinement`): the same result as one serial call."""
    ordered = tracks.sort_values(["particle", "frame"], kind="stable", ignore_index=True)
    parts = track_parts(ordered["particle"].to_numpy(), n_parts)
    unpooled = dataclasses.replace(config.segment, pool_D_factor=0.0)
    futures = [
        executor.submit(
            segment_part,
            ordered.iloc[part],
            unpooled,
            pixel_size_um=pixel_size_um,
            frame_interval_s=frame_interval_s,
        )
        for part in parts
    ]
    outcomes = [future.result() for future in futures]
    segmented = pd.concat([o[0] for o in outcomes], ignore_index=True)
    segments = pd.concat([o[1] for o in outcomes], ignore_index=True)
    return pool_confinement(segmented, segments, config.segment)


def open_movie(path: str | os.PathLike, config: PipelineConfig) -> Movie:
    """Open a movie lazily with the calibration overrides and channel/plane of ``config.movie``."""
    mc = config.movie
    return read_movie(
        path,
        pixel_size_um=mc.pixel_size_um,
        frame_interval_s=mc.frame_interval_s,
        channel=mc.channel,
        z=mc.z,
    )


def process_movie(
    path: str | os.PathLike,
    config: PipelineConfig = PipelineConfig(),
    *,
    masks_path: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    executor: Any = None,
    n_parts: int | None = None,
    split_frames: bool = True,
    detect_threads: int | None = None,
) -> MovieResult:
    """Run the whole pipeline on one movie file and return its results (nothing is written).

    The movie is read once, ``config.movie.chunk_frames`` frames at a time, so memory stays
    bounded however long it is.

    Parameters
    ----------
    path : path-like
        TIFF / OME-TIFF movie.
    config : PipelineConfig
        All parameters.
    masks_path : path-like, optional
        Label image (see :func:`spt.io.read_masks`); stages then follow location.
    progress : callable, optional
        ``progress(frames_done, n_frames)`` after each block of frames.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Detect frame ranges of this movie, and segment parts of its tracks, in parallel on it
        (anything with ``submit(fn, *args, **kwargs)`` returning futures with ``result()``).
        Ranges follow the same chunk boundaries as a serial run and parts hold whole tracks, so
        the results are identical; linking and stage classification run here.
    n_parts : int, optional
        Number of frame ranges and track parts for ``executor`` (default: 4 per CPU of this
        machine).
    split_frames : bool
        Detect frame ranges on ``executor``. False detects here, in threads (one per core, as
        without executor), which is quicker when the executor's workers share this machine's
        cores: the executor then only segments the tracks.
    detect_threads : int, optional
        Threads that detect here when ``config.detect.n_threads`` is 0 (automatic): e.g. 1 in
        each of N worker processes sharing N cores. Default: one per core. The spots do not
        depend on it, and the configuration recorded with the results is ``config`` as given.
    """
    t0 = time.perf_counter()
    movie = open_movie(path, config)
    check_frame_shape(movie.shape, path)
    masks = None
    if masks_path is not None:
        masks = read_masks(masks_path, shape=movie.shape, n_frames=movie.n_frames)
    # The input files are hashed (for the provenance) in a thread while the tracks are linked,
    # when detection no longer needs every core: file reads and SHA-256 release the GIL.
    hasher = ThreadPoolExecutor(1, thread_name_prefix="spt-hash")
    try:
        t1 = time.perf_counter()
        resolved = None
        if executor is None or not split_frames:
            # resolved here (as detection would) so guided re-detection need not estimate it;
            # smaller frames give no spots
            first = next(movie.iter_chunks(config.detect.chunk_frames), None)
            if first is not None and min(movie.shape) >= MIN_DETECT_FRAME_PX:
                resolved = resolve_camera_and_psf(first[1], config.detect)
            del first
            projection = np.full(movie.shape, -np.inf, dtype=np.float32)
            spots = detect_chunks(
                _stream(movie, config.movie.chunk_frames, projection),
                _with_detect_threads(config, detect_threads),
                n_frames=movie.n_frames,
                progress=progress,
                resolved=resolved,
            )
        else:
            parts = n_parts or 4 * (os.cpu_count() or 1)
            spots, projection = _detect_parallel(movie, config, executor, parts, progress)
        release_free_memory()
        t2 = time.perf_counter()
        records = hasher.submit(input_records, path, masks_path)
        tracks = link(
            spots,
            config.link,
            pixel_size_um=movie.pixel_size_um,
            frame_interval_s=movie.frame_interval_s,
        )
        # -- track-guided re-detection (spt.guided): re-reads frames in bounded chunks --
        tracks = guided_detect_movie(
            tracks,
            spots,
            movie.frames,
            detect_config=config.detect,
            link_config=config.link,
            config=config.guided,
            flow_config=config.flow,
            pixel_size_um=movie.pixel_size_um,
            frame_interval_s=movie.frame_interval_s,
            resolved=resolved,
        )
        # -- end of guided re-detection --
        release_free_memory()
        t3 = time.perf_counter()
        analysis = analyze_tracks(
            tracks,
            config,
            pixel_size_um=movie.pixel_size_um,
            frame_interval_s=movie.frame_interval_s,
            masks=masks,
            executor=executor,
            n_parts=n_parts,
        )
        release_free_memory()
        t4 = time.perf_counter()
        inputs = records.result()
        t5 = time.perf_counter()
    finally:
        hasher.shutdown(wait=False, cancel_futures=True)
    return MovieResult(
        name=movie_name(path),
        source=Path(path),
        spots=spots,
        analysis=analysis,
        pixel_size_um=movie.pixel_size_um,
        frame_interval_s=movie.frame_interval_s,
        n_frames=movie.n_frames,
        projection=projection,
        masks=masks,
        timings_s=dict(
            read=t1 - t0, detect=t2 - t1, link=t3 - t2, analyze=t4 - t3, hash_inputs=t5 - t4
        ),
        masks_path=None if masks_path is None else Path(masks_path),
        metadata_source=dict(movie.metadata_source),
        inputs=inputs,
    )


def _with_detect_threads(config: PipelineConfig, threads: int | None) -> PipelineConfig:
    """``config`` with ``threads`` detection threads, unless they are fixed in it already."""
    if threads is None or config.detect.n_threads:
        return config
    return dataclasses.replace(config, detect=dataclasses.replace(config.detect, n_threads=threads))


def input_records(
    movie: str | os.PathLike, masks: str | os.PathLike | None
) -> dict[str, dict[str, Any] | None]:
    """Provenance records (path, size, SHA-256) of a movie and its masks."""
    return {
        "movie": file_record(movie),
        "masks": None if masks is None else file_record(masks),
    }


def frame_ranges(n_frames: int, chunk_frames: int, n_parts: int) -> list[tuple[int, int]]:
    """Split ``n_frames`` into at most ``n_parts`` ranges ``[start, stop)`` of whole chunks."""
    n_chunks = -(-n_frames // chunk_frames)
    n_parts = max(1, min(n_parts, n_chunks))
    bounds = np.linspace(0, n_chunks, n_parts + 1).round().astype(int) * chunk_frames
    bounds[-1] = n_frames
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _stream(movie: Movie, chunk_frames: int, projection: np.ndarray):
    """Yield the movie's chunks, updating the max ``projection`` and releasing mapped pages."""
    for start, block in movie.iter_chunks(chunk_frames):
        np.maximum(projection, block.max(axis=0), out=projection)
        yield start, block
        release_mapped_pages(movie.frames)


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, Windows, musl)
        return None


def release_free_memory() -> None:
    """Hand memory that Python has freed back to the operating system (glibc only).

    glibc keeps freed blocks (e.g. detection's per-chunk buffers, made in several threads)
    in its heaps for reuse; between pipeline phases that would only inflate the resident size
    of the next phase, so it is trimmed.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class _FrameRange:
    """Frames ``[start, stop)`` of a lazy ``(T, Y, X)`` array, still lazy."""

    ndim = 3

    def __init__(self, frames: Any, start: int, stop: int):
        self._frames, self._start = frames, start
        self.dtype = frames.dtype
        self.shape = (stop - start, *frames.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, step = key.indices(self.shape[0])
        return self._frames[self._start + a : self._start + b : step]


@dataclass(frozen=True)
class _RangeFailure:
    """An input error raised in a worker, returned as a value (it pickles reliably)."""

    source: str | None
    problem: str


def _detect_range(
    path: str | os.PathLike,
    config: PipelineConfig,
    start: int,
    stop: int,
    resolved: tuple[Camera, float],
) -> tuple[pd.DataFrame, np.ndarray] | _RangeFailure:
    """Spots and max projection of frames ``[start, stop)`` of a movie (a worker task)."""
    try:
        movie = open_movie(path, config)
        part = dataclasses.replace(movie, frames=_FrameRange(movie.frames, start, stop))
        projection = np.full(movie.shape, -np.inf, dtype=np.float32)
        chunks = (
            (start + s, block) for s, block in _stream(part, config.movie.chunk_frames, projection)
        )
        spots = detect_chunks(chunks, config, resolved=resolved)
        release_mapped_pages(movie.frames)
    except SptInputError as err:
        return _RangeFailure(err.source, err.problem)
    return spots, projection


def _detect_parallel(
    movie: Movie,
    config: PipelineConfig,
    executor: Any,
    n_parts: int,
    progress: ProgressCallback | None,
) -> tuple[pd.DataFrame, np.ndarray]:
    # Parts start on the detector's internal chunk boundaries and share the camera and PSF
    # estimated from the movie's first frames: the spots equal those of a single pass.
    detect_chunk = config.detect.chunk_frames
    first = next(movie.iter_chunks(detect_chunk))[1]
    resolved = resolve_camera_and_psf(first, config.detect)
    ranges = frame_ranges(movie.n_frames, detect_chunk, n_parts)
    futures = [
        executor.submit(_detect_range, movie.path, config, a, b, resolved) for a, b in ranges
    ]
    tables, projection = [], np.full(movie.shape, -np.inf, dtype=np.float32)
    for (_, stop), future in zip(ranges, futures, strict=True):
        outcome = future.result()
        if isinstance(outcome, _RangeFailure):
            raise SptInputError(outcome.source, outcome.problem)
        spots, part = outcome
        tables.append(spots)
        np.maximum(projection, part, out=projection)
        if progress is not None:
            progress(stop, movie.n_frames)
    tables = [t for t in tables if len(t)]
    spots = pd.concat(tables, ignore_index=True) if tables else empty_table(SPOT_COLUMNS)
    return spots, projection


def write_results(
    result: MovieResult,
    out_dir: str | os.PathLike,
    config: PipelineConfig,
    *,
    timings_s: dict[str, float] | None = None,
    executor: Any = None,
) -> Path:
    """Write one movie's tables, figure, config and provenance to ``out_dir/<name>/``, atomically.

    Everything is written into a hidden temporary folder that is renamed into place when
    complete, so an interrupted run never leaves a partial result folder. ``provenance.json``
    (input size and hash, configuration, versions, timings, outputs) is written last.

    Parameters
    ----------
    result : MovieResult
        What :func:`process_movie` returned.
    out_dir : path-like
        Parent folder; the results go to ``out_dir/<result.name>/``.
    config : PipelineConfig
        The configuration used (tables are written as ``config.output.table_format``).
    timings_s : dict, optional
        Extra timings (s) to record besides ``result.timings_s``.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Draw the report's figures on it while the tables are written here (its workers must
        see ``out_dir``).
    """
    t0 = time.perf_counter()
    inputs = result.inputs or input_records(result.source, result.masks_path)
    t_hash = time.perf_counter() - t0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / result.name
    tmp = out / f".{result.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    finish_report = None
    try:
        if config.output.report:
            from spt.report import start_movie_report

            finish_report = start_movie_report(
                result, tmp, config_toml=config.to_toml(), executor=executor
            )
        ext = "." + config.output.table_format
        a = result.analysis
        write_table(result.spots, tmp / f"spots{ext}")
        write_table(a.tracks, tmp / f"tracks{ext}")
        write_table(a.segments, tmp / f"segments{ext}")
        write_table(a.stage_velocities, tmp / f"stage_velocities{ext}")
        if finish_report is not None:
            finish_report()
        (tmp / "config.toml").write_text(
            f"# spt {spt.__version__} on {result.source}\n"
            f"# pixel_size_um = {result.pixel_size_um}, "
            f"frame_interval_s = {result.frame_interval_s}\n" + config.to_toml()
        )
        timings = {"hash_inputs": 0.0, **result.timings_s, **(timings_s or {})}
        timings["hash_inputs"] += t_hash  # time spent waiting for the hashes
        timings["write"] = time.perf_counter() - t0 - t_hash
        _write_provenance(tmp, result, config, inputs, timings)
        if final.exists():
            old = out / f".{result.name}{OLD_MARK}{socket.gethostname()}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if finish_report is not None:  # figures still being drawn into tmp on the executor
            finish_report.cancel()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def run(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: PipelineConfig = PipelineConfig(),
    *,
    masks_path: str | os.PathLike | None = None,
) -> Any:
    """Process and write a few movies in this process and keep their results in memory.

    For notebooks and tests: :func:`spt.batch.run_batch` with ``keep_results=True`` (its
    ``BatchOutcome.results`` holds each processed movie's :class:`MovieResult`). Large batches
    should use :func:`spt.batch.run_batch` (``spt run``) directly, which holds no results.
    """
    from spt.batch import run_batch  # spt.batch builds on this module

    return run_batch(inputs, out_dir, config, masks_path=masks_path, keep_results=True)


#: Markers in the names of hidden temporary folders (``.<name><mark><host>-<pid>``).
TEMP_MARK, OLD_MARK = ".partial-", ".old-"


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (JSON)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _write_provenance(
    folder: Path,
    result: MovieResult,
    config: PipelineConfig,
    inputs: dict[str, Any],
    timings: dict[str, float],
) -> None:
    a = result.analysis
    outputs = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    record = {
        "movie": result.name,
        "created_utc": now_utc(),
        "inputs": inputs,
        "calibration": {
            "pixel_size_um": result.pixel_size_um,
            "frame_interval_s": result.frame_interval_s,
            "source": result.metadata_source,
        },
        "n_frames": result.n_frames,
        "frame_shape": list(result.projection.shape),
        "counts": {
            "n_spots": len(result.spots),
            "n_tracks": int(a.tracks["particle"].nunique()) if len(a.tracks) else 0,
            "n_segments": len(a.segments),
        },
        "config_digest": config.digest(),
        "config": config.to_dict(),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "environment": environment(),
        "outputs": outputs,
    }
    text = json.dumps(_json_safe(record), indent=2, allow_nan=False, default=str)
    tmp = folder / f".{PROVENANCE_FILE}.tmp"
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, folder / PROVENANCE_FILE)
