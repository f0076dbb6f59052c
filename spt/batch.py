"""Batch runs: many movies, resumable, on one machine's cores or on a Dask cluster.

Finds the movies (files, folders, glob patterns, list files), skips those whose results are
complete and up to date, runs :func:`spt.pipeline.process_movie` on the rest (in this process,
in a local process pool, or through ``dask.distributed``) and writes a batch summary.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import spt
from spt._helpers import HELPER_MODULES, THREAD_VARIABLES, warm_up
from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.io import write_table
from spt.pipeline import (
    OLD_MARK,
    TEMP_MARK,
    Analysis,
    MovieResult,
    masks_for,
    movie_name,
    process_movie,
    write_results,
)
from spt.progress import BatchProgress
from spt.provenance import (
    PROVENANCE_FILE,
    now_utc,
    read_provenance,
    read_provenance_file,
    sha256_file,
    up_to_date,
)
from spt.schema import SPOT_COLUMNS, empty_table
from spt.summary import MovieStages, stage_summary

__all__ = [
    "BatchOutcome",
    "MovieJob",
    "SUMMARY_COLUMNS",
    "find_movies",
    "process_one",
    "read_results",
    "run_batch",
    "write_batch_outputs",
]

MOVIE_SUFFIXES = (".tif", ".tiff")
#: A file with one input (file, folder or glob pattern) per line.
LIST_SUFFIXES = (".txt", ".lst", ".list")
#: Columns of ``batch_summary.csv``; status is ``ok`` (processed now), ``skipped`` (results
#: already complete for this input and configuration) or ``failed``.
SUMMARY_COLUMNS = (
    "movie",
    "output",
    "status",
    "error",
    "n_frames",
    "n_spots",
    "n_tracks",
    "n_segments",
    "seconds",
)
ReportFrames = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class MovieJob:
    """One movie of a batch.

    Attributes
    ----------
    path : Path
        The movie file.
    folder : str
        Its result folder relative to the output folder (``/``-separated): the movie's name,
        under the sub-folders it had inside an input folder or below a glob pattern's root.
    masks : Path or None
        Its mask image, if any.
    """

    path: Path
    folder: str
    masks: Path | None = None


# ----------------------------------------------------------------------------- finding movies


def _is_movie(path: Path) -> bool:
    return (
        path.suffix.lower() in MOVIE_SUFFIXES
        and not movie_name(path).endswith("_masks")
        and not path.name.startswith(".")
        and path.is_file()
    )


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _expand(item: Path, depth: int = 0) -> list[tuple[Path, str]]:
    """``(movie, result folder)`` pairs for one input: file, folder, glob pattern or list file."""
    text = str(item)
    if not item.exists() and _has_magic(text):
        parts = item.parts
        fixed = next(i for i, p in enumerate(parts) if _has_magic(p))
        root = Path(*parts[:fixed]) if fixed else Path(".")
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        movies = [p for p in found if _is_movie(p)]
        if not movies:
            raise SptInputError(item, "pattern matches no .tif/.tiff movies")
        return [(p, _relative_folder(p, root)) for p in movies]
    if item.is_dir():
        movies = sorted(
            p
            for p in item.rglob("*")
            if _is_movie(p) and not any(part.startswith(".") for part in p.relative_to(item).parts)
        )
        if not movies:
            raise SptInputError(item, "folder contains no .tif/.tiff movies")
        return [(p, _relative_folder(p, item)) for p in movies]
    if item.is_file() and item.suffix.lower() in LIST_SUFFIXES:
        if depth > 0:
            raise SptInputError(item, "a list file may not name another list file")
        pairs = []
        for line in item.read_text(encoding="utf-8").splitlines():
            entry = line.split("#", 1)[0].strip()
            if entry:
                path = Path(entry).expanduser()
                pairs.extend(_expand(path if path.is_absolute() else item.parent / path, 1))
        if not pairs:
            raise SptInputError(item, "list file names no movies")
        return pairs
    if item.exists():
        return [(item, movie_name(item))]
    raise SptInputError(item, "no such file or folder")


def _relative_folder(movie: Path, root: Path) -> str:
    parent = movie.parent.relative_to(root).as_posix()
    return movie_name(movie) if parent in ("", ".") else f"{parent}/{movie_name(movie)}"


def find_movies(
    inputs: Sequence[str | os.PathLike], *, masks_path: str | os.PathLike | None = None
) -> list[MovieJob]:
    """Expand inputs into the batch's movies, in input order.

    Parameters
    ----------
    inputs : sequence of path-like
        Movie files; folders (searched recursively, hidden folders skipped); glob patterns such
        as ``data/**/*.tif`` (quoted, so that spt expands them); list files (``.txt``, ``.lst``,
        ``.list``) naming one input per line (relative to the list file; ``#`` starts a comment).
        Files named ``*_masks.tif`` are masks, not movies.
    masks_path : path-like, optional
        One mask image for every movie; by default ``<movie>_masks.tif`` beside each movie.

    Returns
    -------
    list of MovieJob
        Each movie once. Movies inside a folder (or below a pattern's fixed root) keep their
        sub-folders in the result folder name, so ``day1/cell.tif`` and ``day2/cell.tif`` do not
        collide.

    Raises
    ------
    SptInputError
        A missing input, an empty folder or pattern, or two movies that would share a result
        folder.
    """
    jobs: list[MovieJob] = []
    seen: dict[Path, None] = {}
    owner: dict[str, Path] = {}
    for item in inputs:
        for path, folder in _expand(Path(item).expanduser()):
            key = path.resolve()
            if key in seen:
                continue
            seen[key] = None
            if folder in owner:
                raise SptInputError(
                    path,
                    f"would write its results to the same folder {folder}/ as {owner[folder]}; "
                    "rename one, or give their common parent folder as input",
                )
            owner[folder] = path
            jobs.append(MovieJob(path, folder, masks_for(path, masks_path)))
    return jobs


# ----------------------------------------------------------------------------- one movie


def process_one(
    job: MovieJob,
    out_dir: str | os.PathLike,
    config: PipelineConfig,
    *,
    report: ReportFrames | None = None,
    executor: Any = None,
    n_parts: int | None = None,
    split_frames: bool = True,
    detect_threads: int | None = None,
    keep_result: bool = False,
) -> dict[str, Any]:
    """Process one movie and write its results; never raises for a bad movie.

    This is the unit of work sent to local workers and Dask workers (only paths and the
    configuration travel, never frames). ``executor``, ``n_parts``, ``split_frames`` and
    ``detect_threads`` are passed to :func:`spt.pipeline.process_movie` (``executor`` also
    draws the figures, :func:`spt.pipeline.write_results`).

    Returns
    -------
    dict
        A row of the batch summary (:data:`SUMMARY_COLUMNS`), plus ``traceback`` for an
        unexpected error and, with ``keep_result``, ``result`` (the :class:`MovieResult`).
    """
    t0 = time.perf_counter()
    folder = Path(out_dir) / job.folder
    row: dict[str, Any] = {"movie": str(job.path), "output": str(folder), "error": ""}

    def progress(done: int, total: int | None) -> None:
        if report is not None:
            report(job.folder, done, total)

    try:
        result = process_movie(
            job.path,
            config,
            masks_path=job.masks,
            progress=progress,
            executor=executor,
            n_parts=n_parts,
            split_frames=split_frames,
            detect_threads=detect_threads,
        )
        write_results(result, folder.parent, config, executor=executor)
    except SptInputError as err:
        return {**row, "status": "failed", "error": _one_line(str(err)), "seconds": _since(t0)}
    except OSError as err:  # unwritable output, disk full, a file vanishing mid-run
        where = f"{err.filename}: " if err.filename else f"{job.path}: "
        error = _one_line(f"{where}{err.strerror or err}")
        return {**row, "status": "failed", "error": error, "seconds": _since(t0)}
    except Exception as err:  # noqa: BLE001 - one movie's bug must not end a batch of hundreds
        return {
            **row,
            "status": "failed",
            "error": _one_line(f"{job.path}: internal error: {type(err).__name__}: {err}"),
            "traceback": traceback.format_exc(),
            "seconds": _since(t0),
        }
    tracks = result.analysis.tracks
    return {
        **row,
        "status": "ok",
        "n_frames": result.n_frames,
        "n_spots": len(result.spots),
        "n_tracks": int(tracks["particle"].nunique()) if len(tracks) else 0,
        "n_segments": len(result.analysis.segments),
        "seconds": _since(t0),
        **({"result": result} if keep_result else {}),
    }


def _one_line(text: str) -> str:
    """Error messages are one line: the summary CSV and the console stay one row per movie."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def _skipped_row(job: MovieJob, folder: Path) -> dict[str, Any]:
    prov = read_provenance(folder) or {}
    return {
        "movie": str(job.path),
        "output": str(folder),
        "status": "skipped",
        "error": "",
        "n_frames": prov.get("n_frames"),
        **prov.get("counts", {}),
        "seconds": 0.0,
    }


# ----------------------------------------------------------------------------- the batch


@dataclass
class BatchOutcome:
    """What a batch did: one summary row per movie, and where the results are."""

    summary: pd.DataFrame
    out_dir: Path
    #: In-memory results of the movies processed in this run, with ``keep_results=True``.
    results: list[MovieResult] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        """Movies that failed."""
        return int((self.summary["status"] == "failed").sum()) if len(self.summary) else 0

    @property
    def folders(self) -> list[Path]:
        """Result folders of the movies that have results (processed now or skipped)."""
        done = self.summary[self.summary["status"] != "failed"]
        return [Path(p) for p in done["output"]]

    def read_table(self, movie: str | os.PathLike, table: str) -> pd.DataFrame:
        """Read a result table (CSV or Parquet), e.g. ``read_table("sample", "tracks")``.

        ``movie`` is a result folder, relative to the output folder or as in :attr:`folders`.
        """
        path = Path(movie)
        folder = path if path.is_relative_to(self.out_dir) else self.out_dir / path
        return _read_table(folder / table)


def _read_table(stem: Path) -> pd.DataFrame:
    for suffix in (".csv", ".parquet"):
        path = stem.with_name(stem.name + suffix)
        if path.exists():
            return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    raise SptInputError(stem, "no such result table (.csv or .parquet)")


def run_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: PipelineConfig = PipelineConfig(),
    *,
    masks_path: str | os.PathLike | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    force: bool = False,
    progress: BatchProgress | None = None,
    on_error: Callable[[str], None] | None = None,
    keep_results: bool = False,
    mp_context: Any = None,
) -> BatchOutcome:
    """Process a batch of movies; resumable, and one bad movie does not stop the others.

    Parameters
    ----------
    inputs : sequence of path-like
        Files, folders, glob patterns or list files (see :func:`find_movies`).
    out_dir : path-like
        Results go to ``out_dir/<movie folder>/``; batch tables to ``out_dir``.
    config : PipelineConfig
        All parameters.
    masks_path : path-like, optional
        One mask image for all movies (default: ``<movie>_masks.tif`` beside each movie).
    workers : int, optional
        Cores of this machine the run may use (default: all that this process may run on,
        :func:`available_cores`). 1 runs everything here, one thread. N > 1 with at least N
        movies to process runs N worker processes, one movie each at a time, each detecting in
        one thread; with fewer movies (or ``keep_results``) the movies are processed here one
        after the other, detected in N threads, while N (at most :data:`MAX_HELPERS`) helper
        processes segment parts of the tracks and draw the figures. The results are the same in
        every case.
    scheduler : str, optional
        Address of a Dask distributed scheduler (e.g. ``tcp://10.0.0.5:8786``); the work is sent
        there instead. Workers must see the same paths (shared file system) and have spt
        installed.
    force : bool
        Recompute movies whose results are already complete and up to date.
    progress : BatchProgress, optional
        Progress display (its movie count is set to the batch's).
    on_error : callable, optional
        Called with the message of each failed movie.
    keep_results : bool
        Also return the in-memory results of the movies processed (not with ``scheduler``; for
        small batches and notebooks, as they are all held in memory): the movies are then
        processed in this process.
    mp_context : multiprocessing context, optional
        How the local worker or helper processes start (default: forked from this process when
        it runs a single thread, else from a forkserver), e.g. the forkserver of
        :func:`spt._helpers.start_helper_server`, which the ``spt`` command launches as it
        starts when given one movie.

    Returns
    -------
    BatchOutcome
        The summary. When at least one movie has results, also written in ``out_dir``:
        ``batch_summary.csv`` and the per-stage table pooled over the batch
        ``stage_velocities.<fmt>``; with two or more, the batch report too
        (:func:`write_batch_outputs`).
    """
    cores = available_cores() if workers is None else workers
    if cores < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if keep_results and scheduler is not None:
        raise ValueError("keep_results needs a local run (no scheduler)")
    if config.output.table_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise SptInputError(
                "--format", "parquet tables need pyarrow: pip install 'spt[parquet]'"
            ) from None
    jobs = find_movies(inputs, masks_path=masks_path)
    out = Path(out_dir)
    if out.exists():
        remove_stale_temporaries(out)
    if progress is None:
        progress = BatchProgress(len(jobs), enabled=False)
    progress.n_movies = len(jobs)
    digest = config.digest()
    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    todo: list[int] = []
    for i, job in enumerate(jobs):
        folder = out / job.folder
        if not force and up_to_date(folder, job.path, job.masks, digest)[0]:
            rows[i] = _skipped_row(job, folder)
            progress.movie_done(job.folder, "skipped: results up to date (--force to redo)")
        else:
            todo.append(i)

    kept: dict[int, MovieResult] = {}
    read_back: dict[Path, tuple[MovieResult, MovieStages]] = {}

    def finished(i: int, row: dict[str, Any]) -> None:
        tb = row.pop("traceback", None)
        if "result" in row:
            kept[i] = row.pop("result")
        rows[i] = row
        if read_ahead and row["status"] == "ok":
            # This process only waits for the workers: it reads each movie's results back as
            # it finishes, for the batch outputs (which then start from the pooling itself).
            with contextlib.suppress(Exception):  # read again, and any error raised, later
                read_back[Path(row["output"])] = _read_back(Path(row["output"]), out)
        if row["status"] == "ok":
            message = (
                f"ok, {row['n_frames']} frames, {row['n_spots']} spots, "
                f"{row['n_tracks']} tracks, {row['seconds']:.1f} s"
            )
        else:
            message = "failed"
            if on_error is not None:
                on_error(row["error"])
            if tb:
                _log_traceback(out, row["error"], tb)
        progress.movie_done(jobs[i].folder, message)

    todo_jobs = [jobs[i] for i in todo]
    local = bool(todo_jobs) and scheduler is None and cores > 1
    if not todo_jobs or (scheduler is None and cores == 1):
        runner = functools.partial(_run_serial, keep=keep_results)
    elif scheduler is not None:
        runner = _run_dask
    elif keep_results or len(todo_jobs) < cores:
        runner = functools.partial(_run_here, keep=keep_results)
    else:
        runner = _run_pool
    read_ahead = runner in (_run_pool, _run_dask) and len(todo_jobs) > 1
    n_workers = min(cores, MAX_HELPERS) if runner is not _run_pool else cores
    # Helpers forked here for a movie processed here yield the cores to its detection threads
    # while they warm up (their work comes later, while this process waits for it); those of a
    # given context (the ``spt`` command's helper server) are forked warm, when needed.
    niceness = 10 if runner is not _run_pool and mp_context is None else 0
    if local:
        pool_context = _worker_pool(n_workers, progress, niceness, mp_context)
    elif runner is _run_dask:
        pool_context = _dask_client(scheduler)
    else:
        pool_context = contextlib.nullcontext()
    with contextlib.ExitStack() as stack:
        try:  # the progress bar closes even when the pool or the cluster cannot start
            pool = stack.enter_context(pool_context)
            runner(
                todo_jobs,
                out,
                config,
                cores,
                scheduler,
                progress,
                lambda k, r: finished(todo[k], r),
                pool,
            )
        finally:
            progress.close()

        summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
        for column in SUMMARY_COLUMNS[4:8]:
            summary[column] = summary[column].astype("Int64")
        outcome = BatchOutcome(summary, out, [kept[i] for i in sorted(kept)])
        if outcome.folders:
            write_table(summary, out / "batch_summary.csv")
            # The workers (local or Dask's), idle now, draw the batch report's figures.
            write_batch_outputs(outcome, config, force=force, executor=pool, read_back=read_back)
    return outcome


#: Written last among the batch-level outputs: which movie results they were computed from.
BATCH_PROVENANCE_FILE = "batch_provenance.json"


def write_batch_outputs(
    outcome: BatchOutcome,
    config: PipelineConfig,
    *,
    force: bool = False,
    executor: Any = None,
    read_back: Mapping[Path, tuple[MovieResult, MovieStages]] | None = None,
) -> bool:
    """Write the per-stage table pooled over the batch and, for two or more movies, the report.

    The batch report (:func:`spt.report.write_batch_report`: ``batch_report.html``, pooled dwell
    and transition tables and figures) pools the movies; for a single movie it would repeat the
    movie's own report, so it is not drawn (an older one is removed) and the pooled table is
    the movie's own (the same computation on the same tracks).

    Skipped (returns False) when ``batch_provenance.json`` shows they were computed from exactly
    the current movie results and failures, so that re-running a finished batch is quick.
    ``executor`` (e.g. a process pool) draws the report's figures in parallel. ``read_back``
    holds movies already read back from their result folders (``{folder: (result, stages)}``,
    :func:`_read_back`); the others are read here.
    """
    out = outcome.out_dir
    fmt = config.output.table_format
    failed = outcome.summary[outcome.summary["status"] == "failed"]
    movies = [
        {
            "folder": folder.relative_to(out).as_posix(),
            "provenance_sha256": sha256_file(folder / PROVENANCE_FILE),
        }
        for folder in outcome.folders
    ]
    record = {
        "outputs": {"table_format": fmt, "report": config.output.report},
        "movies": movies,
        "failed": failed[["movie", "error"]].to_dict("records"),
    }
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    previous = read_provenance_file(out / BATCH_PROVENANCE_FILE)
    report = config.output.report and len(movies) > 1
    expected = [out / f"stage_velocities.{fmt}"]
    if report:
        expected.append(out / "batch_report.html")
    if not force and previous.get("key") == key and all(p.exists() for p in expected):
        return False
    finish_report = None
    if len(movies) == 1:
        [folder] = outcome.folders
        pooled = _read_table(folder / "stage_velocities")
        remove_batch_report(out)
    else:
        read_back = read_back or {}
        pairs = [read_back.get(f) or _read_back(f, out) for f in outcome.folders]
        stages = [m for _, m in pairs]
        if report:
            from spt.report import start_batch_report  # matplotlib: imported when needed

            # the figures need no confidence intervals: drawn while the bootstrap runs here
            finish_report = start_batch_report(
                [r for r, _ in pairs],
                out,
                summary_table=failed,
                summary=stage_summary(stages, intervals=False),
                executor=executor,
            )
        summary = stage_summary(stages)
        pooled = summary.velocities
    write_table(pooled, expected[0])
    if finish_report is not None:
        finish_report(summary)
    text = json.dumps({"key": key, "created_utc": now_utc(), "spt": spt.__version__, **record})
    tmp = out / f".{BATCH_PROVENANCE_FILE}.tmp"
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, out / BATCH_PROVENANCE_FILE)
    return True


#: Files of the batch report in the output folder (besides ``stage_velocities.<fmt>``).
BATCH_REPORT_FILES = (
    "batch_report.html",
    "stage_velocities.parquet",
    *(f"{n}.{f}" for n in ("stage_dwells", "stage_transitions") for f in ("csv", "parquet")),
    *(f"{n}.{f}" for n in ("speed_by_stage", "stage_transitions") for f in ("png", "svg")),
)


def remove_batch_report(out: Path) -> None:
    """Delete a batch report left by an earlier run, which would describe other movies."""
    for name in BATCH_REPORT_FILES:
        (out / name).unlink(missing_ok=True)


def _log_traceback(out: Path, error: str, tb: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "batch_errors.log", "a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {error}\n{tb}\n")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete temporary folders left in ``out`` by killed runs on this machine.

    A temporary folder is named ``.<movie>.partial-<host>-<pid>`` (or ``.old-``); it is stale
    when it was made on this host by a process that no longer runs.
    """
    host = socket.gethostname()
    removed = []
    for path in out.rglob(".*"):
        mark = TEMP_MARK if TEMP_MARK in path.name else OLD_MARK if OLD_MARK in path.name else None
        if mark is None or not path.is_dir():
            continue
        owner_host, _, pid = path.name.rsplit(mark, 1)[1].rpartition("-")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a killed worker whose parent died too may linger as a
    zombie until it is reaped: it counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (macOS): kill() said it exists
        return True
    return state not in ("Z", "X")


def _read_back(folder: Path, out: Path) -> tuple[MovieResult, MovieStages]:
    """A movie's results read back, with its share of the pooled stage tables computed."""
    [result] = read_results([folder], out)
    return result, result.stages().prepare()


def read_results(folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list:
    """Read movies' analysed results back from their result folders.

    Parameters
    ----------
    folders : sequence of path-like
        Result folders written by :func:`spt.pipeline.write_results`.
    out_dir : path-like
        The batch output folder; each result is named by its folder relative to it
        (``day1/cell_03``), which tells movies apart and links the batch report to their reports.

    Returns
    -------
    list of spt.pipeline.MovieResult
        Tracks, segments and stage table with calibration and frame count from the provenance;
        the spots and the projection are not loaded (empty).
    """
    results = []
    for folder in map(Path, folders):
        prov = read_provenance(folder) or {}
        cal = prov.get("calibration", {})
        tracks = _read_table(folder / "tracks")
        results.append(
            MovieResult(
                name=folder.relative_to(out_dir).as_posix(),
                source=Path(prov.get("inputs", {}).get("movie", {}).get("path", folder)),
                spots=empty_table(SPOT_COLUMNS),
                analysis=Analysis(
                    tracks,
                    _read_table(folder / "segments"),
                    _read_table(folder / "stage_velocities"),
                ),
                pixel_size_um=cal["pixel_size_um"],
                frame_interval_s=cal["frame_interval_s"],
                n_frames=prov.get("n_frames", 0),
                projection=np.zeros((0, 0), np.float32),
            )
        )
    return results


# ----------------------------------------------------------------------------- backends
# Each runs ``process_one`` for every job and calls ``done(k, row)`` for job k as it finishes.


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a cluster job's share)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _run_serial(jobs, out, config, cores, scheduler, progress, done, pool, keep=False) -> None:
    """One core: every movie here, one after the other, detected in one thread."""
    for k, job in enumerate(jobs):
        row = process_one(
            job, out, config, report=progress.frames, detect_threads=1, keep_result=keep
        )
        done(k, row)


#: Most helper processes for movies processed here: they draw 4 figures and segment track
#: parts, which gain little from more on a movie of ordinary size.
MAX_HELPERS = 8


def _run_here(jobs, out, config, cores, scheduler, progress, done, pool, keep=False) -> None:
    """Fewer movies than cores: each movie here, detected in one thread per core, while the
    ``pool`` of helper processes (at most :data:`MAX_HELPERS`) segments parts of its tracks
    and draws its figures."""
    for k, job in enumerate(jobs):
        row = process_one(
            job,
            out,
            config,
            report=progress.frames,
            executor=pool,
            n_parts=4 * min(cores, MAX_HELPERS),
            split_frames=False,
            detect_threads=cores,
            keep_result=keep,
        )
        done(k, row)


def _run_pool(jobs, out, config, cores, scheduler, progress, done, pool) -> None:
    """At least as many movies as cores: the ``pool``'s worker processes, one per core, each
    process one movie at a time (detected in one thread), as Dask runs them. The largest files
    go first, so that no worker is left with a long movie at the end."""
    order = sorted(range(len(jobs)), key=lambda k: -_file_size(jobs[k].path))
    futures = {pool.submit(_pool_task, jobs[k], out, config): k for k in order}
    for future in as_completed(futures):
        k = futures[future]
        done(k, _result_or_failure(future, jobs[k], out))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # reported as the movie's failure when it is processed
        return 0


_WORKER_QUEUE: Any = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: Imported once in a forkserver (when workers cannot be forked from this process).
_PRELOAD = ["spt.batch", *HELPER_MODULES]


def _mp_context() -> Any:
    """How worker processes start: forked from this process when that is safe, else through a
    forkserver.

    A fork starts at once with spt and its libraries already imported (a forkserver first
    imports them, ~1-2 s); it is safe only while this process runs a single thread (a lock
    held by another thread would stay locked in the child) and on Linux.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


@contextlib.contextmanager
def _worker_pool(
    n: int, progress: BatchProgress, niceness: int = 0, ctx: Any = None
) -> Iterator[ProcessPoolExecutor]:
    """``n`` single-threaded worker processes whose frame counts go to ``progress`` (their
    numerical libraries use one thread each, as Dask's nanny sets them: N threads per worker on
    N cores would oversubscribe the machine), ``niceness`` below this process's priority.

    ``ctx`` is a multiprocessing context (default :func:`_mp_context`). Forked workers are
    started now and warm up while this process goes on; a forkserver's (e.g. one that
    :func:`spt._helpers.start_helper_server` launched, warming up already) when first needed.
    """
    ctx = ctx or _mp_context()
    queue = ctx.Queue()
    priority = os.getpriority(os.PRIO_PROCESS, 0) + niceness if hasattr(os, "getpriority") else 0
    saved = dict(os.environ)
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    try:
        pool = ProcessPoolExecutor(
            n, mp_context=ctx, initializer=_init_worker, initargs=(queue, priority)
        )
        if ctx.get_start_method() == "fork":
            # Start the workers now, while this process has a single thread; they import
            # matplotlib while this process goes on.
            for _ in range(n):
                pool.submit(warm_up)
        else:
            # A forkserver's workers start once it is ready (a submit waits for it): from a
            # thread, so that they are up when the first task comes (~0.1 s each) but this
            # process does not wait.
            threading.Thread(target=_start_workers, args=(pool, n), daemon=True).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)

    def relay() -> None:
        while (msg := queue.get()) is not None:
            progress.frames(*msg)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        queue.put(None)
        reader.join(timeout=5)
        queue.close()


def _start_workers(pool: ProcessPoolExecutor, n: int) -> None:
    """Make ``pool`` start ``n`` workers (one per task submitted while none is idle)."""
    with contextlib.suppress(RuntimeError):  # the pool was shut down first
        for _ in range(n):
            pool.submit(os.getpid)


def _init_worker(queue: Any, priority: int = 0) -> None:
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue
    if hasattr(os, "setpriority") and os.getpriority(os.PRIO_PROCESS, 0) < priority:
        os.setpriority(os.PRIO_PROCESS, 0, min(priority, 19))
    # A forked worker inherits libraries already loaded with one thread per core.
    threadpool_limits(limits=1)
    _die_with_parent()


def _die_with_parent() -> None:
    """Have Linux kill this worker when the process that started it dies (e.g. ``kill -9`` of
    ``spt``), rather than let it finish its movie unseen while a re-run redoes it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None).prctl  # the C library's, already loaded
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


def _queue_report(movie: str, done: int, total: int | None) -> None:
    if _WORKER_QUEUE is not None:
        _WORKER_QUEUE.put((movie, done, total))


def _pool_task(job: MovieJob, out: Path, config: PipelineConfig) -> dict[str, Any]:
    return process_one(job, out, config, report=_queue_report, detect_threads=1)


def _result_or_failure(future: Any, job: MovieJob, out: Path) -> dict[str, Any]:
    """The row a worker returned, or a failed row if the worker itself died."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - e.g. a worker killed for lack of memory
        return {
            "movie": str(job.path),
            "output": str(out / job.folder),
            "status": "failed",
            "error": f"{job.path}: worker failed: {type(err).__name__}: {err}",
        }


#: One movie at a time per process: parts of the pipeline may keep module-level state (trackpy's
#: linker numbered particles with class-level counters), which threads would mix up.
_MOVIE_LOCK = threading.Lock()


def _dask_task(job: MovieJob, out: Path, config: PipelineConfig, topic: str) -> dict[str, Any]:
    from distributed import get_worker

    worker = get_worker()

    def report(movie: str, done: int, total: int | None) -> None:
        worker.log_event(topic, (movie, done, total))

    with _MOVIE_LOCK:  # one movie at a time: it may detect in all the worker's threads
        threads = getattr(worker, "nthreads", None)
        return process_one(job, out, config, report=report, detect_threads=threads)


@contextlib.contextmanager
def _dask_client(scheduler: str) -> Iterator[Any]:
    """A ``dask.distributed.Client`` of the cluster at ``scheduler``, closed on exit."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - depends on the installation
        raise SptInputError(
            "--scheduler", "needs dask.distributed: pip install 'spt[dask]'"
        ) from None
    try:
        client = Client(scheduler, timeout="20s", set_as_default=False)
    except OSError as err:
        raise SptInputError(scheduler, f"cannot reach the Dask scheduler ({err})") from None
    try:
        yield client
    finally:
        client.close()


def _run_dask(jobs, out, config, cores, scheduler, progress, done, pool) -> None:
    """A Dask distributed cluster (``pool``: its client): the same tasks as the local pool,
    scheduled by Dask."""
    from distributed import as_completed as dask_as_completed

    client = pool
    # Workers may run elsewhere, in another working directory: send absolute paths.
    out = out.resolve()
    jobs = [
        MovieJob(j.path.resolve(), j.folder, None if j.masks is None else j.masks.resolve())
        for j in jobs
    ]
    run_id = uuid.uuid4().hex[:8]
    topic = f"spt-progress-{run_id}"
    client.subscribe_topic(topic, lambda event: progress.frames(*event[1]))
    try:
        slots = max(sum(client.nthreads().values()), 1)
        if len(jobs) < slots:
            for k, job in enumerate(jobs):
                row = process_one(
                    job, out, config, report=progress.frames, executor=client, n_parts=4 * slots
                )
                done(k, row)
        else:
            futures = {
                client.submit(
                    _dask_task, job, out, config, topic, pure=False, key=f"spt-{run_id}-{k}"
                ): k
                for k, job in enumerate(jobs)
            }
            for future in dask_as_completed(futures, loop=client.loop):
                k = futures[future]
                done(k, _result_or_failure(future, jobs[k], out))
    finally:
        client.unsubscribe_topic(topic)
