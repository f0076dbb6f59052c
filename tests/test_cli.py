"""The console script.

Good input gives results; bad input one line, a non-zero exit and no output.
"""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import SAMPLE_TRUTH

from spt.cli import main


def spt(*args):
    return subprocess.run(
        [sys.executable, "-m", "spt.cli", *map(str, args)], capture_output=True, text=True
    )


def test_help_explains_run():
    out = spt("run", "--help")
    assert out.returncode == 0
    assert (
        "--pixel-size" in out.stdout
        and "--frame-interval" in out.stdout
        and "--masks" in out.stdout
    )


def _bad_inputs(tmp_path):
    corrupt = tmp_path / "corrupt.tif"
    good = np.random.default_rng(0).integers(0, 500, (5, 32, 32), dtype=np.uint16)
    tifffile.imwrite(
        corrupt, good, imagej=True, metadata={"finterval": 0.03, "unit": "um"}, resolution=(5, 5)
    )
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    text = tmp_path / "notes.tif"
    text.write_text("not a tiff at all")
    single = tmp_path / "single.tif"
    tifffile.imwrite(
        single, good[0], imagej=True, metadata={"finterval": 0.03, "unit": "um"}, resolution=(5, 5)
    )
    nans = tmp_path / "nans.tif"
    data = good.astype(np.float32)
    data[3, 5, 5] = np.nan
    tifffile.imwrite(  # axes given, so the reader sees frames (not channels) and meets the NaN
        nans,
        data,
        imagej=True,
        metadata={"axes": "TYX", "finterval": 0.03, "unit": "um"},
        resolution=(5, 5),
    )
    nometa = tmp_path / "nometa.tif"
    tifffile.imwrite(nometa, good)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    return {
        "corrupt": (corrupt, ""),
        "not_tiff": (text, ""),
        "single_image": (single, ""),
        "nan": (nans, "NaN"),
        "no_metadata": (nometa, "--pixel-size"),
        "empty": (empty, ""),
        "missing": (tmp_path / "missing.tif", ""),
    }


@pytest.mark.parametrize(
    "case", ["corrupt", "not_tiff", "single_image", "nan", "no_metadata", "empty", "missing"]
)
def test_bad_movie_one_line_nonzero_no_output(tmp_path, case):
    path, must_mention = _bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    res = spt("run", path, "--out", out_dir, "--quiet")
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines and path.name in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert must_mention in res.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_batch_with_one_bad_movie_finishes_the_others(tmp_path, small_movie):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    out_dir = tmp_path / "out"
    code = main(["run", str(small_movie["movie"]), str(bad), "--out", str(out_dir), "--quiet"])
    assert code == 1
    assert (out_dir / "small" / "tracks.csv").exists()
    summary = pd.read_csv(out_dir / "batch_summary.csv")
    assert dict(
        zip(summary["movie"].map(lambda p: p.split("/")[-1]), summary["status"], strict=True)
    ) == {
        "small.ome.tif": "ok",
        "bad.tif": "failed",
    }


def test_flags_override_metadata(tmp_path, small_movie):
    out_dir = tmp_path / "out"
    assert (
        main(
            [
                "run",
                str(small_movie["movie"]),
                "--out",
                str(out_dir),
                "--pixel-size",
                "0.1",
                "--quiet",
            ]
        )
        == 0
    )
    header = (out_dir / "small" / "config.toml").read_text().splitlines()[:3]
    assert any("pixel_size_um = 0.1" in line for line in header)


def test_classify_a_track_table(tmp_path):
    truth = pd.read_csv(SAMPLE_TRUTH)
    table = truth[truth["visible"]][["frame", "particle", "x", "y"]]
    csv = tmp_path / "tracks.csv"
    table.to_csv(csv, index=False)
    out_dir = tmp_path / "out"
    code = main(
        [
            "classify",
            str(csv),
            "--out",
            str(out_dir),
            "--pixel-size",
            "0.2",
            "--frame-interval",
            "0.0333",
            "--quiet",
        ]
    )
    assert code == 0
    segments = pd.read_csv(out_dir / "segments.csv")
    tracks = pd.read_csv(out_dir / "tracks.csv")
    assert len(tracks) == len(table)
    assert {"state", "stage", "segment"} <= set(tracks.columns)
    assert segments.groupby("particle")["n_points"].sum().sum() == len(table)


def test_classify_without_calibration_is_refused(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    pd.DataFrame({"frame": [0, 1], "x": [1.0, 2.0], "y": [1.0, 1.0], "particle": [0, 0]}).to_csv(
        csv, index=False
    )
    assert main(["classify", str(csv), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "t.csv" in err and "--pixel-size" in err
    assert not (tmp_path / "o").exists()


def test_simulate_writes_movie_masks_truth(tmp_path):
    assert (
        main(
            [
                "simulate",
                "--out",
                str(tmp_path),
                "--name",
                "s",
                "--frames",
                "12",
                "--particles",
                "4",
            ]
        )
        == 0
    )
    movie = tifffile.imread(tmp_path / "s.ome.tif")
    assert movie.shape == (12, 128, 128)
    truth = pd.read_csv(tmp_path / "s_truth.csv")
    assert truth["frame"].max() == 11


def test_simulate_refuses_bad_parameters(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path), "--frames", "1"]) == 1
    assert "n_frames" in capsys.readouterr().err


def test_one_movie_gets_helpers_from_a_server_warmed_up_at_start(tmp_path, small_movie):
    # `spt run` on one movie launches the server of its helper processes before importing the
    # pipeline; batches, one core and Dask do without.
    from spt.cli import _early_helper_server, build_parser

    def server(*args):
        return _early_helper_server(build_parser().parse_args(["run", *map(str, args)]))

    movie, out = small_movie["movie"], ("--out", tmp_path / "o")
    assert server(movie.parent, *out) is None  # a folder: a batch
    assert server(movie, movie, *out) is None
    assert server(movie, *out, "--workers", "1") is None
    assert server(movie, *out, "--scheduler", "tcp://127.0.0.1:1") is None
    # Its helpers are forked with the segmentation and the figures (matplotlib, PNG and SVG)
    # loaded, but not detection. (A fresh process: this one may run another forkserver.)
    code = f"""
from concurrent.futures import ProcessPoolExecutor
from spt.cli import _early_helper_server, build_parser
ctx = _early_helper_server(
    build_parser().parse_args(["run", {str(movie)!r}, "--out", "o", "--workers", "2"])
)
with ProcessPoolExecutor(1, mp_context=ctx) as pool:
    print(*pool.submit(eval, "list(__import__('sys').modules)").result())
    print(pool.submit(eval, "__import__('os').getpriority(0, 0)").result())
print(ctx.get_start_method(), __import__("os").getpriority(0, 0))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded, helper_priority, server = run.stdout.splitlines()
    # forked from the server, with the command's priority (the server warms up niced)
    assert server.split() == ["forkserver", helper_priority]
    assert {"spt.segment", "spt.report", "matplotlib.backends.backend_svg"} <= set(loaded.split())
    assert "spt.detect" not in loaded.split()
    assert not (tmp_path / "o").exists()
