"""Batch runs on real files: discovery, provenance, resume, failures, workers and Dask agree."""

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from spt.batch import _worker_pool, find_movies, read_results, run_batch
from spt.cli import main
from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.progress import BatchProgress
from spt.summary import MovieStages, pooled_stage_velocities, stage_summary

TABLES = ("spots", "tracks", "segments", "stage_velocities")
# Figures and HTML reports (tested in test_report.py) are left out where they only cost time;
# test_parquet_tables_... runs with the defaults and checks them.
CONFIG = PipelineConfig().with_overrides(["output.report=false"])
NO_REPORT = ("--set", "output.report=false")
FOLDERS = ("day1/m1", "day1/m2", "day2/m1", "m3")


def _simulate(folder: Path, name: str, seed: int, n_frames: int = 40) -> None:
    from spt.simulate import SimulationConfig, simulate, write_simulation

    cfg = SimulationConfig(shape=(64, 64), n_frames=n_frames, n_particles=6, n_cells=1, seed=seed)
    write_simulation(simulate(cfg), folder, name)


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    """Four small simulated movies (with masks) in sub-folders; two share the name m1."""
    root = tmp_path_factory.mktemp("movies")
    for seed, folder in enumerate(FOLDERS):
        sub, name = os.path.split(folder)
        _simulate(root / sub, name, seed)
    return root


@pytest.fixture(scope="module")
def reference(movies, tmp_path_factory):
    """The serial, in-process run of the set that the other modes must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    outcome = run_batch([movies], out, CONFIG, workers=1)
    assert list(outcome.summary["status"]) == ["ok"] * 4
    return out


def _assert_same_results(out: Path, reference: Path, folders=FOLDERS, suffix=".csv") -> None:
    for folder in folders:
        for table in TABLES:
            got = _read(out / folder / f"{table}{suffix}")
            want = pd.read_csv(reference / folder / f"{table}.csv")
            pd.testing.assert_frame_equal(got, want, obj=f"{folder}/{table}")
    if suffix == ".csv" and set(folders) == set(FOLDERS):
        pd.testing.assert_frame_equal(
            pd.read_csv(out / "stage_velocities.csv"),
            pd.read_csv(reference / "stage_velocities.csv"),
        )


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def _statuses(out: Path) -> dict[str, str]:
    summary = pd.read_csv(out / "batch_summary.csv", keep_default_na=False)
    return {
        Path(o).relative_to(out).as_posix(): s
        for o, s in zip(summary["output"], summary["status"], strict=True)
    }


def _hidden(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*")]


# ----------------------------------------------------------------------------- finding movies


def test_inputs_may_be_files_folders_globs_and_list_files(tmp_path):
    for name in ("a/x/m1.tif", "a/y/m1.ome.tif", "a/y/m1_masks.tif", "a/.hidden/m9.tif", "b.tiff"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    folder = find_movies([tmp_path / "a"])
    assert [j.folder for j in folder] == ["x/m1", "y/m1"]  # sub-folders keep names apart
    assert folder[1].masks == tmp_path / "a/y/m1_masks.tif" and folder[0].masks is None
    pattern = find_movies([str(tmp_path / "a" / "**" / "*.tif")])
    assert [j.folder for j in pattern] == ["x/m1", "y/m1"]
    listing = tmp_path / "movies.txt"
    listing.write_text("# my movies\nb.tiff\n\na/x/m1.tif  # first cell\n")
    listed = find_movies([listing])
    assert [(j.path.name, j.folder) for j in listed] == [("b.tiff", "b"), ("m1.tif", "m1")]
    both = find_movies([tmp_path / "b.tiff", listing])
    assert len(both) == 2  # the same file twice is one movie
    with pytest.raises(SptInputError, match="same folder m1/"):
        find_movies([tmp_path / "a/x/m1.tif", tmp_path / "a/y/m1.ome.tif"])
    with pytest.raises(SptInputError, match="no such file"):
        find_movies([tmp_path / "nope.tif"])
    with pytest.raises(SptInputError, match="matches no"):
        find_movies([str(tmp_path / "*.nd2")])


# ----------------------------------------------------------------------------- provenance


def test_each_movie_gets_provenance_of_input_config_software_and_timings(movies, reference):
    prov = json.loads((reference / "day1/m2/provenance.json").read_text())
    movie = movies / "day1/m2.ome.tif"
    assert prov["inputs"]["movie"]["sha256"] == hashlib.sha256(movie.read_bytes()).hexdigest()
    assert prov["inputs"]["movie"]["bytes"] == movie.stat().st_size
    masks = movies / "day1/m2_masks.tif"
    assert prov["inputs"]["masks"]["sha256"] == hashlib.sha256(masks.read_bytes()).hexdigest()
    assert PipelineConfig.from_dict(prov["config"]) == CONFIG
    assert prov["config_digest"] == CONFIG.digest()
    assert prov["environment"]["spt"] and prov["environment"]["libraries"]["numpy"]
    assert {"read", "detect", "link", "analyze", "write"} <= set(prov["timings_s"])
    assert prov["calibration"]["pixel_size_um"] == pytest.approx(0.2)
    assert prov["n_frames"] == 40
    tracks = pd.read_csv(reference / "day1/m2/tracks.csv")
    assert prov["counts"]["n_tracks"] == tracks["particle"].nunique()
    for name, size in prov["outputs"].items():
        assert (reference / "day1/m2" / name).stat().st_size == size
    summary = pd.read_csv(reference / "batch_summary.csv")
    assert summary["n_tracks"].tolist() == [
        json.loads((reference / f / "provenance.json").read_text())["counts"]["n_tracks"]
        for f in FOLDERS
    ]


# ----------------------------------------------------------------------------- resuming


def test_rerun_skips_complete_unchanged_movies_and_redoes_changed_ones(movies, reference, tmp_path):
    src = tmp_path / "movies"
    shutil.copytree(movies, src)
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("tracks.csv")}

    outcome = run_batch([src], out, CONFIG)
    assert set(outcome.summary["status"]) == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("tracks.csv")} == before
    assert outcome.summary["n_tracks"].notna().all()  # counts come from the provenance

    os.utime(src / "m3.ome.tif")  # touched, same bytes: the hash says unchanged
    (out / "day1/m2/segments.csv").unlink()  # an output lost: redo
    _simulate(src / "day2", "m1", seed=99)  # new content under the same name: redo
    assert _statuses_of(run_batch([src], out, CONFIG)) == {
        "day1/m1": "skipped",
        "day1/m2": "ok",
        "day2/m1": "ok",
        "m3": "skipped",
    }
    changed = CONFIG.with_overrides(["link.max_gap_frames=2"])
    assert run_batch([src / "m3.ome.tif"], out, changed).summary["status"].tolist() == ["ok"]
    prov = json.loads((out / "m3" / "provenance.json").read_text())
    assert prov["config"]["link"]["max_gap_frames"] == 2
    forced = run_batch([src / "day1"], out / "day1", CONFIG, force=True)
    assert set(forced.summary["status"]) == {"ok"}
    _assert_same_results(out, reference, folders=["day1/m1", "day1/m2"])


def _statuses_of(outcome) -> dict[str, str]:
    return {
        Path(o).relative_to(outcome.out_dir).as_posix(): s
        for o, s in zip(outcome.summary["output"], outcome.summary["status"], strict=True)
    }


def test_a_killed_run_leaves_nothing_mistaken_for_complete_and_resumes(movies, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spt.cli",
            "run",
            str(movies),
            "--out",
            str(out),
            "--quiet",
            *NO_REPORT,
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    try:
        while not list(out.rglob("provenance.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_until_gone(proc.pid)  # its worker processes too
    complete = {p.parent.relative_to(out).as_posix() for p in out.rglob("provenance.json")}
    assert 1 <= len(complete) < len(FOLDERS)
    assert not (out / "batch_summary.csv").exists()
    # Every visible result folder is complete; anything partial is hidden.
    visible = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir()}
    visible = {v for v in visible if not any(part.startswith(".") for part in v.split("/"))}
    assert visible - {"day1", "day2"} == complete

    assert main(["run", str(movies), "--out", str(out), "--quiet", *NO_REPORT]) == 0
    statuses = _statuses(out)
    assert {f for f, s in statuses.items() if s == "skipped"} == complete
    assert {f for f, s in statuses.items() if s == "ok"} == set(FOLDERS) - complete
    assert not _hidden(out), "temporary folders left behind"
    _assert_same_results(out, reference)


def _wait_until_gone(group: int, timeout_s: float = 30) -> None:
    """Wait until no process of a killed process group still runs (zombies do not run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] not in ("Z", "X"):
                running.append(stat)
        if not running:
            return
        time.sleep(0.01)
    raise AssertionError(f"processes of group {group} still run {timeout_s} s after SIGKILL")


def test_stale_temporaries_of_dead_processes_are_removed(movies, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = out / "day1" / f".m2.partial-{host}-{int(dead.stdout)}"
    live = out / f".m3.partial-{host}-{os.getpid()}"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "spots.csv").write_text("frame,x\n")
    run_batch([movies], out, CONFIG)
    assert not stale.exists() and live.exists()


# ----------------------------------------------------------------------------- failures


def test_folder_with_a_corrupt_movie_finishes_the_rest_and_reports_it(movies, tmp_path, capsys):
    src = tmp_path / "movies"
    shutil.copytree(movies / "day1", src)
    good = tifffile.imread(src / "m1.ome.tif")
    corrupt = src / "broken.tif"
    tifffile.imwrite(corrupt, good, imagej=True, metadata={"finterval": 0.03}, resolution=(5, 5))
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "--quiet", *NO_REPORT]) == 1
    err = capsys.readouterr().err
    assert "broken.tif" in err and "truncated" in err and "1 of 3 movie(s) failed" in err
    summary = pd.read_csv(out / "batch_summary.csv", keep_default_na=False).set_index("output")
    assert summary.loc[str(out / "broken"), "status"] == "failed"
    assert "broken.tif" in summary.loc[str(out / "broken"), "error"]
    assert summary.loc[str(out / "m1"), "status"] == "ok"
    assert (out / "m2" / "tracks.csv").exists() and not (out / "broken").exists()
    # A re-run retries the failed movie and skips the finished ones.
    assert main(["run", str(src), "--out", str(out), "--quiet", *NO_REPORT]) == 1
    assert _statuses(out) == {"broken": "failed", "m1": "skipped", "m2": "skipped"}


# ----------------------------------------------------------------------------- parallel


def test_two_local_workers_give_the_results_of_one(movies, reference, tmp_path):
    out = tmp_path / "out"
    assert (
        main(["run", str(movies), "--out", str(out), "--workers", "2", "--quiet", *NO_REPORT]) == 0
    )
    assert set(_statuses(out).values()) == {"ok"}
    _assert_same_results(out, reference)


def test_one_movie_on_two_workers_equals_serial(movies, tmp_path):
    # One movie, two workers: detected here in threads, its tracks segmented in parts on the
    # worker processes, its report drawn on a worker while the tables are written here.
    movie = movies / "day1" / "m1.ome.tif"
    config = ["--set", "movie.chunk_frames=8", "--quiet"]
    serial = ["run", str(movie), "--out", str(tmp_path / "serial"), "--workers", "1"]
    assert main([*serial, *config, *NO_REPORT]) == 0
    par = tmp_path / "par"
    par.mkdir()
    (par / "batch_report.html").write_text("an earlier batch of other movies")
    assert main(["run", str(movie), "--out", str(par), "--workers", "2", *config]) == 0
    _assert_same_results(par, tmp_path / "serial", folders=["m1"])
    n_spots = len(pd.read_csv(par / "m1" / "spots.csv"))
    report = (par / "m1" / "report.html").read_text()
    assert f"<td>spots / tracks / segments</td><td>{n_spots} / " in report
    assert report.count("data:image/png;base64,") == 4
    # A batch of one movie: its report is the batch's (no batch report, the stale one is gone)
    # and the pooled stage table is the movie's, as pooling the one movie computes it.
    assert not (par / "batch_report.html").exists()
    [result] = read_results([par / "m1"], par)
    a = result.analysis
    pooled = pooled_stage_velocities(
        [MovieStages(a.tracks, a.segments, result.pixel_size_um, result.frame_interval_s)]
    )
    for table in (pd.read_csv(par / "stage_velocities.csv"), result.analysis.stage_velocities):
        pd.testing.assert_frame_equal(table, pooled, check_dtype=False)


def test_dask_local_cluster_gives_the_results_of_a_local_run(movies, reference, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        outcome = run_batch([movies], tmp_path / "out", CONFIG, scheduler=address)
        assert set(outcome.summary["status"]) == {"ok"}
        _assert_same_results(tmp_path / "out", reference)
        # Fewer movies than Dask workers: frame ranges of the movie go to the cluster.
        one = movies / "m3.ome.tif"
        single = run_batch([one], tmp_path / "one", CONFIG, scheduler=address)
        assert single.summary["status"].tolist() == ["ok"]
        # with reports: the batch report's figures are drawn by the cluster's workers
        assert "draw" not in cluster.scheduler.task_prefixes  # (Dask drops the "_")
        two = [one, movies / "day1" / "m1.ome.tif"]
        run_batch(two, tmp_path / "rep", PipelineConfig(), scheduler=address)
        assert (tmp_path / "rep" / "batch_report.html").is_file()
        assert "draw" in cluster.scheduler.task_prefixes
    _assert_same_results(tmp_path / "one", reference, folders=["m3"])


# ----------------------------------------------------------------------------- formats, progress


def test_parquet_tables_hold_the_same_results(movies, reference, tmp_path):
    out = tmp_path / "out"
    movie = movies / "m3.ome.tif"
    assert main(["run", str(movie), "--out", str(out), "--format", "parquet", "--quiet"]) == 0
    for table in TABLES:  # the report's own tables are written in both formats
        assert not (out / "m3" / f"{table}.csv").exists(), table
    assert not (out / "stage_velocities.csv").exists()
    # With the default configuration the figures and reports are written too; a batch of two
    # movies gets a batch report pooling them.
    assert (out / "m3" / "report.html").exists() and (out / "m3" / "tracks_by_stage.png").exists()
    two = [str(movie), str(movies / "day2" / "m1.ome.tif")]
    assert main(["run", *two, "--out", str(out), "--format", "parquet", "--quiet"]) == 0
    report = out / "batch_report.html"
    assert report.exists() and (out / "batch_provenance.json").exists()
    assert "2 movie(s) pooled" in report.read_text()
    # The pooled table (its figures were drawn from the estimates while the bootstrap ran, the
    # movies read back as they finished) is the pooling of the two movies' results.
    results = read_results([out / "m3", out / "m1"], out)
    pooled = stage_summary([r.stages() for r in results]).velocities
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "stage_velocities.parquet"), pooled, check_dtype=False
    )
    assert pooled["median_speed_ci_low_um_s"].notna().any()
    # Re-running a finished batch does not recompute the batch outputs.
    before = report.stat().st_mtime_ns
    assert main(["run", *two, "--out", str(out), "--format", "parquet", "--quiet"]) == 0
    assert report.stat().st_mtime_ns == before
    assert main(["run", *two, "--out", str(out), "--quiet", "--format", "parquet", "--force"]) == 0
    assert report.stat().st_mtime_ns != before
    assert (out / "stage_velocities.parquet").exists()
    for table in TABLES:
        got = pd.read_parquet(out / "m3" / f"{table}.parquet")
        want = pd.read_csv(reference / "m3" / f"{table}.csv")
        pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=table)


def test_progress_is_plain_lines_in_logs_and_silent_when_quiet():
    log = io.StringIO()
    progress = BatchProgress(2, stream=log)
    for done in (16, 32, 48, 64):
        progress.frames("cell_a", done, 64)
    progress.movie_done("cell_a", "ok")
    progress.movie_done("cell_b", "failed")
    assert log.getvalue().splitlines() == [
        "cell_a: 16/64 frames (25%)",
        "cell_a: 32/64 frames (50%)",
        "cell_a: 48/64 frames (75%)",
        "cell_a: 64/64 frames (100%)",
        "[1/2] cell_a: ok",
        "[2/2] cell_b: failed",
    ]
    quiet = io.StringIO()
    silent = BatchProgress(1, stream=quiet, enabled=False)
    silent.frames("x", 1, 2)
    silent.movie_done("x", "ok")
    assert quiet.getvalue() == ""


def test_cli_reports_batch_and_movie_progress_on_stderr(movies, reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    res = subprocess.run(
        [sys.executable, "-m", "spt.cli", "run", str(movies), "--out", str(out), *NO_REPORT],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines[0] == "[1/4] day1/m1: skipped: results up to date (--force to redo)"
    assert len(lines) == 4 and "\r" not in res.stderr  # not a terminal: plain lines
    assert "0 ok, 4 skipped, 0 failed" in res.stdout
    capsys.readouterr()
    assert main(["run", str(movies), "--out", str(out), "--quiet", *NO_REPORT]) == 0
    assert capsys.readouterr() == ("", "")


def test_movies_are_read_once_in_blocks_of_at_most_chunk_frames(movies):
    from spt.io import read_movie
    from spt.pipeline import process_movie

    config = PipelineConfig().with_overrides(["movie.chunk_frames=7"])
    done = []
    result = process_movie(movies / "m3.ome.tif", config, progress=lambda n, total: done.append(n))
    # Frames are read 7 at a time; progress follows the detector's own chunks (it buffers at
    # most detect.chunk_frames frames), so memory stays bounded by the larger of the two.
    bound = max(7, config.detect.chunk_frames)
    assert np.diff([0, *done]).max() <= bound and done[-1] == result.n_frames == 40
    # The projection is gathered in the same single pass.
    np.testing.assert_array_equal(
        result.projection, read_movie(movies / "m3.ome.tif").max_projection()
    )


def test_workers_and_scheduler_together_are_refused(movies, tmp_path, capsys):
    args = ["run", str(movies), "--out", str(tmp_path / "o"), "--workers", "2"]
    assert main([*args, "--scheduler", "tcp://127.0.0.1:1"]) == 1
    assert "--scheduler" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_status_line_is_cleared_when_the_scheduler_cannot_be_reached(movies, tmp_path):
    # A re-run reports the movie already done on the terminal's status line, then fails to reach
    # the cluster for the other: the error leaves no status line behind.
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    inputs = [movies / "m3.ome.tif", movies / "day2" / "m1.ome.tif"]
    run_batch(inputs[:1], tmp_path / "o", CONFIG, workers=1)
    terminal = Terminal()
    with pytest.raises(SptInputError, match="cannot reach"):
        run_batch(
            inputs,
            tmp_path / "o",
            CONFIG,
            scheduler="tcp://127.0.0.1:1",
            progress=BatchProgress(2, stream=terminal),
        )
    shown = terminal.getvalue()
    assert "[1/2 movies]" in shown
    assert shown.endswith("\r") and not shown.rsplit("\r", 2)[1].strip()


def test_in_memory_results_of_local_runs(movies, reference, tmp_path):
    with pytest.raises(ValueError, match="scheduler"):
        run_batch(
            [movies], tmp_path / "o", CONFIG, scheduler="tcp://127.0.0.1:1", keep_results=True
        )
    # Two movies on two cores, kept in memory: processed here (helpers analyse and draw).
    inputs = [movies / "m3.ome.tif", movies / "day2" / "m1.ome.tif"]
    outcome = run_batch(inputs, tmp_path / "o", CONFIG, workers=2, keep_results=True)
    assert [r.name for r in outcome.results] == ["m3", "m1"]
    for result, folder in zip(outcome.results, ["m3", "day2/m1"], strict=True):
        tracks = result.analysis.tracks.reset_index(drop=True)
        pd.testing.assert_frame_equal(
            tracks, outcome.read_table(result.name, "tracks"), check_dtype=False
        )
        pd.testing.assert_frame_equal(
            tracks, pd.read_csv(reference / folder / "tracks.csv"), check_dtype=False
        )


def test_helper_processes_can_yield_the_cores_to_this_process():
    # the helpers of a movie processed here (warming up while it detects) run niced, so its
    # detection threads keep the cores; movie workers keep this process's priority
    own = os.getpriority(os.PRIO_PROCESS, 0)
    for niceness in (0, 10):
        with _worker_pool(2, BatchProgress(0, enabled=False), niceness) as pool:
            got = {pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result() for _ in range(4)}
        assert got == {min(own + niceness, 19)}
