"""The straight line from movie to results: read -> detect -> link -> segment -> classify -> export.

The CLI, the batch runner and the napari widget all call these functions.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import spt
from spt.config import PipelineConfig
from spt.detect import locate_chunks
from spt.errors import SptInputError
from spt.io import read_masks, read_movie, write_table
from spt.link import link
from spt.report import write_movie_report
from spt.schema import TRACK_COLUMNS
from spt.segment import segment_tracks
from spt.stages import classify_stages
from spt.summary import MovieStages, stage_velocities
from spt.summary import pooled_stage_velocities as pool_stage_velocities

ProgressCallback = Callable[[int, int | None], None]
MOVIE_SUFFIXES = (".tif", ".tiff")


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


def movie_name(path: str | os.PathLike) -> str:
    """Name of a movie's result folder: the file name without ``.tif``/``.ome.tif``."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def find_movies(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of TIFF movies.

    Mask files (``*_masks.tif``) inside folders are not movies and are skipped.
    """
    movies: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in MOVIE_SUFFIXES
                and not movie_name(p).endswith("_masks")
                and p.is_file()
            )
            if not found:
                raise SptInputError(path, "folder contains no .tif/.tiff movies")
            movies.extend(found)
        elif path.exists():
            movies.append(path)
        else:
            raise SptInputError(path, "no such file or folder")
    return list(dict.fromkeys(movies))


def masks_for(movie_path: Path, masks_path: str | os.PathLike | None) -> Path | None:
    """The mask file for a movie: the one given, else ``<name>_masks.tif`` beside it, if any."""
    if masks_path is not None:
        return Path(masks_path)
    for suffix in (".tif", ".tiff"):
        candidate = movie_path.with_name(f"{movie_name(movie_path)}_masks{suffix}")
        if candidate.exists():
            return candidate
    return None


def array_chunks(frames: np.ndarray, chunk_frames: int = 64) -> Iterator[tuple[int, np.ndarray]]:
    """Split an in-memory (T, Y, X) array into ``(first frame, chunk)`` pairs."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise SptInputError(None, f"expected a movie of shape (T, Y, X), got shape {frames.shape}")
    for start in range(0, len(frames), chunk_frames):
        chunk = frames[start : start + chunk_frames]
        if np.issubdtype(chunk.dtype, np.floating) and not np.isfinite(chunk).all():
            raise SptInputError(None, f"frames {start}-{start + len(chunk) - 1} contain NaN or inf")
        yield start, chunk


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
    # One detection pass over all chunks: camera, PSF and temporal estimates do not depend on
    # how the movie was cut into chunks.
    report = None if progress is None else (lambda done, _total: progress(done, n_frames))
    spots = locate_chunks(chunks, config.detect, progress=report)
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
) -> Analysis:
    """Segment tracks into motion states, classify delivery stages and summarise per stage."""
    # Analysis solves many tiny linear systems: multi-threaded BLAS only adds overhead (3x
    # slower on 2 cores), so it runs single-threaded.
    with threadpool_limits(limits=1, user_api="blas"):
        segmented, segments = segment_tracks(
            tracks, config.segment, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s
        )
        staged, segments = classify_stages(
            segmented,
            segments,
            config.stages,
            masks=masks,
            pixel_size_um=pixel_size_um,
            frame_interval_s=frame_interval_s,
        )
        velocities = stage_velocities(
            staged, segments, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s
        )
        columns = [c for c in TRACK_COLUMNS if c in staged] + [
            c for c in staged if c not in TRACK_COLUMNS
        ]
        return Analysis(staged[columns], segments, velocities)


def process_movie(
    path: str | os.PathLike,
    config: PipelineConfig = PipelineConfig(),
    *,
    masks_path: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> MovieResult:
    """Run the whole pipeline on one movie file and return its results (nothing is written)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mc = config.movie
    movie = read_movie(
        path,
        pixel_size_um=mc.pixel_size_um,
        frame_interval_s=mc.frame_interval_s,
        channel=mc.channel,
        z=mc.z,
    )
    masks = None
    if masks_path is not None:
        masks = read_masks(masks_path, shape=movie.shape, n_frames=movie.n_frames)
    t1 = time.perf_counter()
    spots, tracks = track_frames(
        movie.iter_chunks(),
        config,
        n_frames=movie.n_frames,
        pixel_size_um=movie.pixel_size_um,
        frame_interval_s=movie.frame_interval_s,
        progress=progress,
    )
    t2 = time.perf_counter()
    analysis = analyze_tracks(
        tracks,
        config,
        pixel_size_um=movie.pixel_size_um,
        frame_interval_s=movie.frame_interval_s,
        masks=masks,
    )
    t3 = time.perf_counter()
    timings.update(read=t1 - t0, detect_link=t2 - t1, analyze=t3 - t2)
    return MovieResult(
        name=movie_name(path),
        source=Path(path),
        spots=spots,
        analysis=analysis,
        pixel_size_um=movie.pixel_size_um,
        frame_interval_s=movie.frame_interval_s,
        n_frames=movie.n_frames,
        projection=movie.max_projection(),
        masks=masks,
        timings_s=timings,
    )


def write_results(result: MovieResult, out_dir: str | os.PathLike, config: PipelineConfig) -> Path:
    """Write one movie's tables, figure and config to ``out_dir/<name>/``, all or nothing.

    Everything is written into a hidden temporary folder that is renamed into place when
    complete, so an interrupted run never leaves a partial result folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / result.name
    tmp = out / f".{result.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        a = result.analysis
        write_table(result.spots, tmp / "spots.csv")
        write_table(a.tracks, tmp / "tracks.csv")
        write_table(a.segments, tmp / "segments.csv")
        write_table(a.stage_velocities, tmp / "stage_velocities.csv")
        write_movie_report(result, tmp, config_toml=config.to_toml())
        (tmp / "config.toml").write_text(
            f"# spt {spt.__version__} on {result.source}\n"
            f"# pixel_size_um = {result.pixel_size_um}, "
            f"frame_interval_s = {result.frame_interval_s}\n" + config.to_toml()
        )
        if final.exists():
            old = out / f".{result.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass
class BatchOutcome:
    """Per-movie status of a batch run and the results that succeeded."""

    summary: pd.DataFrame
    results: list[MovieResult]

    @property
    def n_failed(self) -> int:
        return int((self.summary["status"] != "ok").sum()) if len(self.summary) else 0


def run(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: PipelineConfig = PipelineConfig(),
    *,
    masks_path: str | os.PathLike | None = None,
    progress_factory: Callable[[str, int], ProgressCallback] | None = None,
    on_error: Callable[[Path, Exception], None] | None = None,
) -> BatchOutcome:
    """Process movies and write their results; one bad movie does not stop the others.

    Writes ``out_dir/<movie>/`` per movie, and when at least one movie succeeded, the batch
    tables ``out_dir/stage_velocities.csv`` (all movies pooled) and ``out_dir/batch_summary.csv``.
    """
    movies = find_movies(inputs)
    rows, results = [], []
    for path in movies:
        t0 = time.perf_counter()
        try:
            progress = progress_factory(movie_name(path), 0) if progress_factory else None
            result = process_movie(
                path, config, masks_path=masks_for(path, masks_path), progress=progress
            )
            folder = write_results(result, out_dir, config)
        except (SptInputError, OSError) as err:
            if on_error is not None:
                on_error(path, err)
            rows.append(dict(movie=str(path), status="failed", error=str(err)))
            continue
        results.append(result)
        a = result.analysis
        rows.append(
            dict(
                movie=str(path),
                status="ok",
                error="",
                output=str(folder),
                n_frames=result.n_frames,
                n_spots=len(result.spots),
                n_tracks=int(a.tracks["particle"].nunique()) if len(a.tracks) else 0,
                n_segments=len(a.segments),
                seconds=round(time.perf_counter() - t0, 3),
            )
        )
    summary = pd.DataFrame(rows)
    if results:
        write_table(pooled_stage_velocities(results), Path(out_dir) / "stage_velocities.csv")
        write_table(summary, Path(out_dir) / "batch_summary.csv")
    return BatchOutcome(summary, results)


def pooled_stage_velocities(results: Sequence[MovieResult]) -> pd.DataFrame:
    """Per-stage table over several movies: steps and tracks pooled, told apart by movie."""
    return pool_stage_velocities(
        [
            MovieStages(
                r.analysis.tracks,
                r.analysis.segments,
                r.pixel_size_um,
                r.frame_interval_s,
                name=r.name,
            )
            for r in results
        ]
    )
