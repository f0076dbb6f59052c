"""Hostile inputs on every entry point: a corpus of bad and degenerate files built here.

Each case asserts its exact outcome (docs/input_policy.md): a refusal is exit code 1 with one
``spt: error: <input>: <problem>`` line, no traceback, no internal error and no result files; a
degenerate but valid input succeeds with well-formed (possibly empty) headed tables and no NaN.
CLI cases run ``spt.cli.main`` in this process under a deadline (the hang guard) with
RuntimeWarnings as errors; a few run the real console script in a subprocess with a timeout.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from spt.cli import main
from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.io import read_masks, read_movie, read_track_table, write_movie
from spt.pipeline import analyze_tracks, array_chunks, process_movie, track_frames
from spt.schema import SEGMENT_COLUMNS, SPOT_COLUMNS, STAGE_VELOCITY_COLUMNS, STAGES, STATES

PX, DT = 0.1, 0.033  # calibration written into the good movies, um and s
CAL = ("--pixel-size", PX, "--frame-interval", DT)
TRACK_DESIGN = ("frame", "x", "y", "particle", "segment", "state", "stage")
SEGMENT_DESIGN = tuple(SEGMENT_COLUMNS)
RESULT_TABLES = ("spots", "tracks", "segments", "stage_velocities")


# ----------------------------------------------------------------------------- helpers


class _Hang(BaseException):
    """Raised by the deadline; a BaseException so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def _deadline(seconds: int):
    def expire(signum, frame):
        raise _Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


#: Warnings of the last :func:`cli` call (each occurrence, not only the first).
LAST_WARNINGS: list[warnings.WarningMessage] = []


def cli(*args, seconds: int = 60) -> tuple[int, str, str]:
    """``spt ARGS`` in this process: exit code, stdout, stderr (RuntimeWarnings are errors)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(record=True) as caught,
        _deadline(seconds),
    ):
        warnings.simplefilter("always")
        warnings.simplefilter("error", RuntimeWarning)
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code
    LAST_WARNINGS[:] = caught
    return code, out.getvalue(), err.getvalue()


def spt_warnings() -> list[str]:
    """Warnings of the last :func:`cli` call raised from spt's own code."""
    ours = [w for w in LAST_WARNINGS if "/spt/" in w.filename.replace("\\", "/")]
    return [f"{Path(w.filename).name}:{w.lineno}: {w.message}" for w in ours]


def assert_no_warning_flood(max_warnings: int = 5) -> None:
    """No RuntimeWarning (they are errors in :func:`cli`) and at most a few other warnings."""
    assert len(LAST_WARNINGS) <= max_warnings, [str(w.message) for w in LAST_WARNINGS]


def spt_process(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real console script in a subprocess, with a timeout (the hang guard)."""
    return subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "spt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_refused(code: int, err: str, source, pattern: str) -> None:
    """Exit 1; first stderr line ``spt: error: <source>: <problem>`` matching ``pattern``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert lines and all(line.startswith("spt: ") for line in lines), err
    assert lines[0].startswith(f"spt: error: {source}: "), err
    assert re.search(pattern, lines[0]), err


def assert_finite(df: pd.DataFrame, columns) -> None:
    present = [c for c in columns if c in df.columns]
    values = df[present].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    assert np.isfinite(values).all(), df[present][~np.isfinite(values).all(axis=1)]


def assert_result_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """The four tables exist with the DESIGN columns, and their numbers are finite."""
    tables = {t: pd.read_csv(folder / f"{t}.csv") for t in RESULT_TABLES}
    assert set(SPOT_COLUMNS) - {"x_err", "y_err"} <= set(tables["spots"].columns)
    assert set(TRACK_DESIGN) <= set(tables["tracks"].columns)
    assert set(SEGMENT_DESIGN) <= set(tables["segments"].columns)
    assert set(STAGE_VELOCITY_COLUMNS) <= set(tables["stage_velocities"].columns)
    assert_finite(tables["spots"], ("frame", "x", "y", "signal", "background", "sigma"))
    assert_finite(tables["tracks"], ("frame", "x", "y", "particle", "segment"))
    assert_finite(tables["segments"], ("start_frame", "end_frame", "n_points", "D_um2_s", "alpha"))
    assert_finite(tables["segments"], ("speed_um_s",))
    velocities = tables["stage_velocities"]
    stepped = velocities[velocities["n_steps"] > 0]
    assert_finite(stepped, ("n_tracks", "n_steps", "mean_speed_um_s", "median_speed_um_s"))
    assert set(tables["tracks"]["state"].dropna()) <= set(STATES)
    assert set(tables["tracks"]["stage"].dropna()) <= set(STAGES)
    return tables


def movie(n_frames=8, shape=(32, 32), dtype=np.uint16, seed=0, amplitude=400.0, bg=100.0):
    """A particle (Gaussian spot, sigma 1.3 px) walking along x over Poisson background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    frames = np.empty((n_frames, *shape))
    for t in range(n_frames):
        x0, y0 = shape[1] / 2 - 3 + 0.6 * t, shape[0] / 2
        spot = amplitude * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.3**2))
        frames[t] = rng.poisson(bg + spot)
    return frames.astype(dtype)


def ome(path: Path, data: np.ndarray) -> Path:
    write_movie(path, data, pixel_size_um=PX, frame_interval_s=DT)
    return path


def imagej(path: Path, data: np.ndarray, axes: str) -> Path:
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / PX, 1 / PX),
        metadata={"axes": axes, "unit": "um", "finterval": DT},
    )
    return path


# ----------------------------------------------------------------------------- TIFF corpus


def _truncated(path: Path, keep: float, compression=None) -> Path:
    full = path.with_name("full-" + path.name)
    tifffile.imwrite(
        full,
        movie(),
        ome=True,
        compression=compression,
        metadata={"axes": "TYX", "PhysicalSizeX": PX, "PhysicalSizeY": PX, "TimeIncrement": DT},
    )
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _float_with(path: Path, value: float, frame: int, dtype=np.float32) -> Path:
    data = movie().astype(dtype)
    data[frame, 5, 5] = value
    if dtype == np.float32:
        return ome(path, data)
    tifffile.imwrite(path, data, metadata={"axes": "TYX"})  # float64: refused before calibration
    return path


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = path.with_suffix(".png")
    plt.imsave(png, np.random.default_rng(0).random((8, 8)))
    path.write_bytes(png.read_bytes())
    png.unlink()
    return path


def _looping_directories(path: Path) -> Path:
    """A valid page whose next image directory is damaged and points to itself.

    Found by fuzz/fuzz_tiff.py: tifffile follows such a loop without end (millions of pages).
    """
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, movie(1)[0])
    data = bytearray(buffer.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    next_pointer = first + 2 + 12 * struct.unpack_from("<H", data, first)[0]
    loop = len(data)
    struct.pack_into("<I", data, next_pointer, loop)
    data += struct.pack("<H", 1) + struct.pack("<HHII", 256, 0, 1, 4) + struct.pack("<I", loop)
    path.write_bytes(bytes(data))
    return path


def _strip_counts_disagree(path: Path) -> Path:
    """The last page lists 4 strip offsets but only 2 byte counts (found by fuzz/fuzz_tiff.py)."""
    buffer = io.BytesIO()
    data = np.ones((3, 32, 32), np.uint16)
    tifffile.imwrite(buffer, data, compression="zlib", rowsperstrip=8, photometric="minisblack")
    content = bytearray(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(content))) as tif:
        tag = tif.pages[-1].tags["StripByteCounts"]
        assert tag.count == 4
        struct.pack_into("<I", content, tag.offset + 4, 2)
    path.write_bytes(bytes(content))
    return path


def _two_series(path: Path) -> Path:
    with tifffile.TiffWriter(path) as tif:
        tif.write(movie(4), photometric="minisblack", metadata={"axes": "TYX"})
        tif.write(movie(4, (16, 16)), photometric="minisblack", metadata={"axes": "TYX"})
    return path


def _empty_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("no movies here\n")
    return path


#: name -> (builder(path), extra CLI arguments, pattern of the one-line refusal)
TIFF_REFUSED = {
    "zero-bytes": (lambda p: _bytes(p, b""), CAL, r"empty file \(0 bytes\)$"),
    "random-bytes": (
        lambda p: _bytes(p, np.random.default_rng(1).bytes(4096)),
        CAL,
        r"not a readable TIFF file",
    ),
    "tiff-magic-then-garbage": (
        lambda p: _bytes(p, b"II*\x00" + np.random.default_rng(2).bytes(4096)),
        CAL,
        r"TIFF",
    ),
    "truncated-uncompressed": (lambda p: _truncated(p, 0.6), CAL, r"truncated"),
    "truncated-compressed": (lambda p: _truncated(p, 0.5, "zlib"), CAL, r"truncated"),
    "truncated-in-header": (
        lambda p: _truncated(p, 0.01),
        CAL,
        r"not a readable TIFF|corrupt|truncated",
    ),
    "single-image": (
        lambda p: tifffile.imwrite(p, movie()[0]) or p,
        CAL,
        r"single 2-D image \(shape \(32, 32\).*need at least 2 frames",
    ),
    "one-frame": (
        lambda p: ome(p, movie(1)),
        (),
        r"single 2-D image.*need at least 2 frames",
    ),
    "rgb-movie": (
        lambda p: (
            tifffile.imwrite(p, np.stack([movie(dtype=np.uint8)] * 3, -1), photometric="rgb") or p
        ),
        CAL,
        r"movie has 3 channels \(.*\); choose one with --channel N \(0 to 2\)$",
    ),
    "rgb-image": (
        lambda p: tifffile.imwrite(p, np.stack([movie(dtype=np.uint8)[0]] * 3, -1)) or p,
        CAL,
        r"3 channels and no time axis",
    ),
    "nan-pixels": (lambda p: _float_with(p, np.nan, 3), (), r"frame 3 contains NaN or infinite"),
    "inf-pixels": (lambda p: _float_with(p, -np.inf, 6), (), r"frame 6 contains NaN or infinite"),
    "beyond-float32": (
        lambda p: _float_with(p, 1e300, 2, np.float64),
        CAL,
        r"frame 2 holds values beyond the float32 range",
    ),
    "no-metadata": (
        lambda p: tifffile.imwrite(p, movie(), metadata={"axes": "TYX"}) or p,
        (),
        r"no pixel size \(pass --pixel-size UM.*no frame interval \(pass --frame-interval S",
    ),
    "hyperstack-channels": (
        lambda p: imagej(p, np.stack([movie()] * 2, 1), "TCYX"),
        (),
        r"movie has 2 channels \(shape \(8, 2, 32, 32\), axes TCYX\).*--channel N \(0 to 1\)",
    ),
    "hyperstack-z": (
        lambda p: imagej(p, np.stack([movie()] * 3, 1), "TZYX"),
        (),
        r"movie has 3 z-planes \(shape \(8, 3, 32, 32\), axes TZYX\).*--z N \(0 to 2\)",
    ),
    "hyperstack-channel-out-of-range": (
        lambda p: imagej(p, np.stack([movie()] * 2, 1), "TCYX"),
        ("--channel", 2),
        r"channel=2 out of range: the movie has 2 channels",
    ),
    "imagej-stack-saved-as-channels": (
        lambda p: imagej(p, movie(), "CYX"),
        (),
        r"8 channels and no time axis.*save the file with axes TYX",
    ),
    "thin-2x32": (
        lambda p: ome(p, movie(5, (2, 32))),
        (),
        r"frames of 2 x 32 px are too small to detect spots \(need at least 3 x 3\)$",
    ),
    "looping-directories": (
        _looping_directories,
        CAL,
        r"corrupt TIFF file: its image directories loop \(at byte \d+\)$",
    ),
    "strip-counts-disagree": (
        _strip_counts_disagree,
        CAL,
        r"corrupt TIFF file: a page's strip/tile offsets and byte counts disagree$",
    ),
    "two-image-series": (_two_series, CAL, r"holds 2 image series"),
    "bool-pixels": (
        lambda p: tifffile.imwrite(p, movie() > 200, metadata={"axes": "TYX"}) or p,
        CAL,
        r"unsupported pixel type bool",
    ),
    "png-named-tif": (_png, CAL, r"not a readable TIFF file \(not a TIFF file"),
    "missing-path": (lambda p: p, CAL, r"no such file or folder$"),
    "empty-folder": (_empty_folder, CAL, r"folder contains no \.tif/\.tiff movies$"),
}


@pytest.fixture(scope="module")
def tiff_corpus(tmp_path_factory) -> dict[str, tuple[Path, tuple, str]]:
    root = tmp_path_factory.mktemp("tiff_corpus")
    corpus = {}
    for name, (build, args, pattern) in TIFF_REFUSED.items():
        path = root / (name if name == "empty-folder" else f"{name}.tif")
        corpus[name] = (build(path), args, pattern)
    return corpus


@pytest.mark.parametrize("case", list(TIFF_REFUSED))
def test_spt_run_refuses_bad_tiff_with_one_line_and_writes_nothing(tiff_corpus, tmp_path, case):
    path, args, pattern = tiff_corpus[case]
    out = tmp_path / "out"
    code, _, err = cli("run", path, "--out", out, "--quiet", *args)
    assert_refused(code, err, path, pattern)
    assert files_in(out) == []


#: Refused by the pipeline, not the reader: such files can still be opened (e.g. to view them).
PIPELINE_ONLY = ("empty-folder", "thin-2x32")


def test_spt_run_refuses_tables_and_list_files_naming_nothing_usable(tmp_path):
    table = tmp_path / "tracks.csv"
    table.write_text("frame,x,y,particle\n0,1,1,0\n")
    code, _, err = cli("run", table, "--out", tmp_path / "a", "--quiet")
    assert_refused(
        code, err, table, r"not a readable TIFF file .*track tables go to `spt classify`"
    )
    listing = tmp_path / "movies.txt"
    listing.write_text("# today's movies\nmissing.tif\n")
    code, _, err = cli("run", listing, "--out", tmp_path / "b", "--quiet")
    assert_refused(code, err, tmp_path / "missing.tif", r"no such file or folder$")
    assert files_in(tmp_path / "a") == files_in(tmp_path / "b") == []


@pytest.mark.parametrize("case", [c for c in TIFF_REFUSED if c not in PIPELINE_ONLY])
def test_python_api_refuses_bad_tiff_with_spt_input_error(tiff_corpus, case):
    path, args, pattern = tiff_corpus[case]
    pattern = {"missing-path": r"file not found$"}.get(case, pattern)  # the CLI also takes folders
    kwargs = {"pixel_size_um": PX, "frame_interval_s": DT} if "--pixel-size" in args else {}
    if "--channel" in args:
        kwargs["channel"] = args[args.index("--channel") + 1]
    with pytest.raises(SptInputError) as refused:
        movie_ = read_movie(path, **kwargs)
        for _ in movie_.iter_chunks(4):  # NaN/inf are found when their frames are read
            pass
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert re.search(pattern, message)


def test_process_movie_refuses_a_movie_that_goes_bad_after_some_chunks(tiff_corpus, tmp_path):
    """NaN in the last frame, read 2 frames at a time: refused, and no result is half-written."""
    data = movie(10).astype(np.float32)
    data[9, 3, 3] = np.nan
    path = ome(tmp_path / "late_nan.ome.tif", data)
    out = tmp_path / "out"
    code, _, err = cli("run", path, "--out", out, "--quiet", "--set", "movie.chunk_frames=2")
    assert_refused(code, err, path, r"frame 9 contains NaN or infinite values")
    assert files_in(out) == []
    config = PipelineConfig().with_overrides(["movie.chunk_frames=2"])
    with pytest.raises(SptInputError, match="frame 9"):
        process_movie(path, config)


# ----------------------------------------------------------------------------- masks


@pytest.fixture(scope="module")
def good_movie(tmp_path_factory) -> Path:
    return ome(tmp_path_factory.mktemp("good") / "good.ome.tif", movie())


def test_bad_masks_for_a_track_table_are_refused_naming_the_mask(tiff_corpus, tmp_path):
    table = tmp_path / "tracks.csv"
    table.write_text(GOOD)
    small = tifffile.imwrite(tmp_path / "small_masks.tif", np.zeros((8, 8), np.uint8)) or (
        tmp_path / "small_masks.tif"
    )
    cases = [
        (tmp_path / "missing_masks.tif", r"file not found$"),
        (tiff_corpus["random-bytes"][0], r"not a readable TIFF file"),
        (tiff_corpus["looping-directories"][0], r"image directories loop"),
        (small, r"mask of shape \(8, 8\) \(Y, X\) does not cover the tracks' x, y range"),
    ]
    for masks, pattern in cases:
        out = tmp_path / "out"
        code, _, err = cli("classify", table, "--out", out, "--quiet", "--masks", masks, *CAL)
        assert_refused(code, err, masks, pattern)
        assert not out.exists()


@pytest.mark.parametrize(
    ("name", "build", "pattern"),
    [
        ("missing", lambda p: p, r"file not found"),
        ("garbage", lambda p: _bytes(p, b"\x00garbage" * 50), r"not a readable TIFF"),
        ("looping", _looping_directories, r"image directories loop"),
        (
            "wrong-shape",
            lambda p: tifffile.imwrite(p, np.zeros((16, 16), np.uint8)) or p,
            r"mask shape \(16, 16\) does not match the movie: need \(32, 32\) or \(8, 32, 32\)",
        ),
        (
            "unknown-label",
            lambda p: tifffile.imwrite(p, np.full((32, 32), 7, np.uint8)) or p,
            r"mask labels 7 not allowed",
        ),
        (
            "float-mask",
            lambda p: tifffile.imwrite(p, np.full((32, 32), 0.5, np.float32)) or p,
            r"mask must hold integer labels",
        ),
    ],
)
def test_bad_masks_are_refused_naming_the_mask(good_movie, tmp_path, name, build, pattern):
    masks = build(tmp_path / f"{name}_masks.tif")
    out = tmp_path / "out"
    code, _, err = cli("run", good_movie, "--out", out, "--quiet", "--masks", masks)
    assert_refused(code, err, masks, pattern)
    assert files_in(out) == []
    with pytest.raises(SptInputError) as refused:
        read_masks(masks, shape=(32, 32), n_frames=8)
    assert str(refused.value).startswith(f"{masks}: ")


# ----------------------------------------------------------------------------- degenerate movies


def _saturated() -> np.ndarray:
    data = movie()
    data[:, 4:12, 20:28] = 65535  # a saturated block, e.g. a reflection
    data[:, 16, 16] = 65535  # and a hot pixel
    return data


#: name -> (frames, whether the particle must be found). All must succeed with finite results.
#: The figures and HTML report are written for the first five (they must survive empty and odd
#: data too) and skipped for the intensity-scale cases, to keep the suite fast.
DEGENERATE_MOVIES = {
    "all-background": (np.random.default_rng(3).poisson(100, (8, 32, 32)).astype(np.uint16), False),
    "constant": (np.full((8, 32, 32), 100, np.uint16), False),
    "two-frames": (movie(2), True),
    "saturated-uint16": (_saturated(), True),
    "all-zero": (np.zeros((8, 32, 32), np.uint16), False),
    "extreme-photons-float32": (movie().astype(np.float32) * np.float32(1e30), True),
    "normalised-float32": (movie().astype(np.float32) * np.float32(1e-6), True),
    "full-uint16-range": (
        np.clip(movie(bg=20000.0, amplitude=40000.0), 0, 65535).astype(np.uint16),
        True,
    ),
    "negative-int16": ((movie().astype(np.int32) - 300).astype(np.int16), True),
}


#: Frames from the smallest accepted (3 x 3) up to sizes the detector handles.
SMALL_MOVIES = {
    "tiny-3x3": pytest.param(movie(5, (3, 3)), False),
    "small-8x8": pytest.param(movie(5, (8, 8)), False),
    "small-16x16": pytest.param(movie(5, (16, 16)), True),
}


@pytest.mark.parametrize("case", list(DEGENERATE_MOVIES))
def test_degenerate_movies_succeed_with_headed_finite_tables(tmp_path, case):
    frames, has_particle = DEGENERATE_MOVIES[case]
    _run_degenerate(tmp_path, case, frames, has_particle)


@pytest.mark.parametrize(("frames", "has_particle"), SMALL_MOVIES.values(), ids=SMALL_MOVIES)
def test_small_frames_succeed_with_headed_finite_tables(tmp_path, frames, has_particle):
    _run_degenerate(tmp_path, f"small{frames.shape[1]}", frames, has_particle)


def _run_degenerate(tmp_path: Path, case: str, frames: np.ndarray, has_particle: bool) -> None:
    path = ome(tmp_path / f"{case}.ome.tif", frames)
    out = tmp_path / "out"
    report = case in list(DEGENERATE_MOVIES)[:5]
    code, _, err = cli(
        "run", path, "--out", out, "--quiet", "--set", f"output.report={str(report).lower()}"
    )
    assert code == 0, err
    assert err == ""  # no messages on stderr
    assert_no_warning_flood()
    tables = assert_result_tables(out / case)
    if has_particle:  # the walking particle is found in most frames
        assert tables["spots"]["frame"].nunique() >= 0.5 * len(frames)
    else:  # nothing to find: empty tables, still with their header
        assert all(len(t) == 0 for t in tables.values())


def test_a_movie_without_particles_gives_no_warning_from_spt(tmp_path):
    path = ome(tmp_path / "blank.ome.tif", np.full((6, 32, 32), 100, np.uint16))
    code, _, err = cli("run", path, "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    assert spt_warnings() == []


def test_in_memory_arrays_refuse_non_pixel_data_and_accept_no_frames():
    config = PipelineConfig()
    run = dict(n_frames=4, pixel_size_um=PX, frame_interval_s=DT)
    bad = {
        "2-D": (np.zeros((8, 8)), r"shape \(T, Y, X\), got shape \(8, 8\)"),
        "4-D": (np.zeros((2, 2, 8, 8)), r"shape \(T, Y, X\)"),
        "complex": (np.zeros((4, 8, 8), complex), r"unsupported pixel type complex128"),
        "bool": (np.zeros((4, 8, 8), bool), r"unsupported pixel type bool"),
        "text": (np.full((4, 8, 8), "a"), r"unsupported pixel type <U1"),
        "nan": (np.full((4, 8, 8), np.nan), r"frame 0 contains NaN"),
        "beyond-float32": (np.full((4, 8, 8), 1e300), r"frame 0 holds values beyond"),
        "1x1": (np.ones((4, 1, 1)), r"frames of 1 x 1 px are too small"),
        "0 rows": (np.zeros((3, 0, 16)), r"frames of 0 x 16 px are too small"),
    }
    for frames, pattern in bad.values():
        with pytest.raises(SptInputError, match=pattern):
            track_frames(array_chunks(frames), config, **run)
    spots, tracks = track_frames(array_chunks(np.zeros((0, 16, 16))), config, **run)
    assert len(spots) == len(tracks) == 0
    assert set(SPOT_COLUMNS) - {"x_err", "y_err"} <= set(spots.columns)
    assert {"frame", "x", "y", "particle"} <= set(tracks.columns)


def test_in_memory_frames_of_3_px_give_empty_tables():
    run = dict(n_frames=4, pixel_size_um=PX, frame_interval_s=DT)
    for frames in (movie(4, (3, 3)).astype(float), np.ones((2, 3, 40))):
        spots, tracks = track_frames(array_chunks(frames), PipelineConfig(), **run)
        assert len(spots) == len(tracks) == 0


# ----------------------------------------------------------------------------- CSV corpus


def _tracks_csv(sep=",", decimal=".", n=30, n_particles=3, offset=10.0, seed=4) -> str:
    rng = np.random.default_rng(seed)
    lines = [sep.join(("frame", "x", "y", "particle"))]
    for p in range(n_particles):
        xy = offset + np.cumsum(rng.normal(0, 0.5, (n, 2)), axis=0)
        for f in range(n):
            x, y = (f"{v:.4f}".replace(".", decimal) for v in xy[f])
            lines.append(sep.join((str(f), x, y, str(p))))
    return "\n".join(lines) + "\n"


GOOD = _tracks_csv()

#: name -> (file content, pattern of the refusal)
CSV_REFUSED = {
    "empty": ("", r"empty file \(0 bytes\)$"),
    "blank-lines": ("\n\n\n", r"not a table|cannot parse"),
    "one-column": ("frame\n0\n1\n", r"not a table: no comma, semicolon or tab"),
    "missing-particle": ("frame,x,y\n0,1,2\n", r"missing column\(s\) particle; found frame, x, y"),
    "only-separators": (",,,\n,,,\n", r"missing column\(s\) frame, x, y, particle; found none"),
    "non-numeric-x": (GOOD + "31,abc,1.0,0\n", r"column x is not numeric \(row 91: 'abc'\)"),
    "non-numeric-frame": (GOOD + "one,1.0,1.0,0\n", r"column frame is not numeric \(row 91"),
    "nan-coordinate": (GOOD + "31,,5.0,0\n", r"1 row\(s\) with missing frame/x/y/particle"),
    "nan-text": (GOOD + "31,NaN,5.0,0\n", r"1 row\(s\) with missing frame/x/y/particle"),
    "infinite-coordinate": (GOOD + "31,inf,5.0,0\n", r"infinite x or y coordinates"),
    "duplicate-frame-in-track": (
        GOOD + "5,1.0,1.0,0\n",
        r"particle 0 has several points in frame 5$",
    ),
    "negative-frame": (GOOD + "-3,1.0,1.0,0\n", r"negative frame number -3; frames count from 0"),
    "fractional-frame": (GOOD + "31.5,1.0,1.0,0\n", r"column frame must hold whole numbers"),
    "timestamp-as-frame": (
        "frame,x,y,particle\n1718000000000,1,1,0\n1718000000033,2,2,0\n",
        r"frame number 1718000000033 is not a frame index",
    ),
    "huge-coordinates-1e300": (
        "frame,x,y,particle\n0,1e300,1,0\n1,1e300,2,0\n",
        r"coordinate 1e\+300 px is beyond 1e\+09 px",
    ),
    "ragged-rows": (GOOD + "1,2,3,4,5,6\n", r"cannot parse table \(.*Expected 4 fields"),
    "duplicate-column": ("frame,x,y,particle,x\n0,1,2,0,5\n", r"duplicate column\(s\) x"),
    # found by fuzz/fuzz_csv.py: names equal after stripping white space
    "duplicate-column-after-strip": (
        "TRACK_ID\x0b,TRACK_ID,POSITION_X,POSITION_Y,FRAME\n0,0,1,1,0\n",
        r"duplicate column\(s\) TRACK_ID$",
    ),
    "trackmate-and-trackpy-frame": (
        "TRACK_ID,POSITION_X,POSITION_Y,FRAME,frame\n0,1,1,0,0\n",
        r"duplicate column name\(s\) frame",
    ),
    "tiff-given-as-table": (b"II*\x00" + bytes(range(256)) * 4, r"not a text table"),
    "binary-garbage": (np.random.default_rng(5).bytes(2048), r"not a text table"),
    "nul-bytes-in-header": (b"frame\x00,x,y,particle\n0,1,2,0\n", r"not a text table"),
}


@pytest.mark.parametrize("case", list(CSV_REFUSED))
def test_spt_classify_refuses_bad_tables_with_one_line_and_writes_nothing(tmp_path, case):
    content, pattern = CSV_REFUSED[case]
    path = tmp_path / f"{case}.csv"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    out = tmp_path / "out"
    code, _, err = cli("classify", path, "--out", out, "--quiet", *CAL)
    assert_refused(code, err, path, pattern)
    assert not out.exists()
    with pytest.raises(SptInputError) as refused:
        read_track_table(path, pixel_size_um=PX, frame_interval_s=DT)
    assert str(refused.value).startswith(f"{path}: ")


#: Tables other tools write: all must give the same tracks as the plain comma CSV.
CSV_ACCEPTED = {
    "semicolon": _tracks_csv(sep=";"),
    "tab": _tracks_csv(sep="\t"),
    "semicolon-decimal-comma": _tracks_csv(sep=";", decimal=","),
    "excel-bom-crlf": "\ufeff" + GOOD.replace("\n", "\r\n"),
    "quoted-header": GOOD.replace("frame,x,y,particle", '"frame","x","y","particle"'),
    "padded-header": GOOD.replace("frame,x,y,particle", " frame , x , y , particle "),
    "reordered-with-extras": "\n".join(
        ",".join((p, y, "note", f, x))
        for f, x, y, p in (line.split(",") for line in GOOD.strip().splitlines())
    )
    + "\n",
    "trackpy-index-column": "\n".join(
        ("," if i == 0 else f"{i - 1},") + line for i, line in enumerate(GOOD.strip().splitlines())
    )
    + "\n",
}


@pytest.mark.parametrize("case", list(CSV_ACCEPTED))
def test_other_delimiters_and_dialects_work(tmp_path, case):
    plain = tmp_path / "plain.csv"
    plain.write_text(GOOD)
    path = tmp_path / f"{case}.csv"
    path.write_text(CSV_ACCEPTED[case])
    expected = read_track_table(plain)
    got = read_track_table(path)
    pd.testing.assert_frame_equal(got[["frame", "x", "y", "particle"]], expected)
    code, _, err = cli("classify", path, "--out", tmp_path / "out", "--quiet", *CAL)
    assert code == 0, err


def test_header_only_table_gives_empty_headed_results(tmp_path):
    path = tmp_path / "no_tracks.csv"
    path.write_text("frame,x,y,particle\n")
    table = read_track_table(path)
    assert len(table) == 0 and list(table.columns) == ["frame", "x", "y", "particle"]
    assert table["frame"].dtype == np.int64 and table["x"].dtype == np.float64
    out = tmp_path / "out"
    code, _, err = cli("classify", path, "--out", out, "--quiet", *CAL)
    assert code == 0, err
    tracks = pd.read_csv(out / "tracks.csv")
    segments = pd.read_csv(out / "segments.csv")
    velocities = pd.read_csv(out / "stage_velocities.csv")
    assert len(tracks) == len(segments) == len(velocities) == 0
    assert set(TRACK_DESIGN) <= set(tracks.columns)
    assert set(SEGMENT_DESIGN) <= set(segments.columns)
    assert set(STAGE_VELOCITY_COLUMNS) <= set(velocities.columns)


def test_a_run_without_particles_feeds_back_into_classify(tmp_path):
    """spt's own empty output is valid input: run on a blank movie, classify its tracks.csv."""
    path = ome(tmp_path / "blank.ome.tif", np.full((6, 32, 32), 100, np.uint16))
    code, _, err = cli("run", path, "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    tracks = tmp_path / "run" / "blank" / "tracks.csv"
    code, _, err = cli("classify", tracks, "--out", tmp_path / "again", "--quiet", *CAL)
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "again" / "tracks.csv")) == 0


@pytest.mark.parametrize(
    "rows",
    [[(0, 5.0, 5.0, 0)], [(0, 5.0, 5.0, 0), (3, 6.0, 7.0, 1), (9, 20.0, 9.0, 2)]],
    ids=["one-row", "one-point-tracks"],
)
def test_one_point_tracks_succeed_without_steps(tmp_path, rows):
    path = tmp_path / "points.csv"
    pd.DataFrame(rows, columns=["frame", "x", "y", "particle"]).to_csv(path, index=False)
    out = tmp_path / "out"
    code, _, err = cli("classify", path, "--out", out, "--quiet", *CAL)
    assert code == 0, err
    tracks = pd.read_csv(out / "tracks.csv")
    segments = pd.read_csv(out / "segments.csv")
    velocities = pd.read_csv(out / "stage_velocities.csv")
    assert len(tracks) == len(rows) and tracks["stage"].isin(STAGES).all()
    assert tracks["state"].isin(STATES).all()
    assert sorted(segments["particle"]) == sorted(r[3] for r in rows)
    assert (segments["n_points"] == 1).all()
    assert_finite(segments, ("D_um2_s", "alpha", "speed_um_s"))
    assert set(STAGE_VELOCITY_COLUMNS) <= set(velocities.columns)
    assert velocities["n_steps"].sum() == 0  # no steps, so no speeds to average


@pytest.mark.parametrize("offset", [1e6, -1e6, 1e8])
def test_huge_coordinates_give_the_same_analysis_as_small_ones(tmp_path, offset):
    near = tmp_path / "near.csv"
    far = tmp_path / "far.csv"
    near.write_text(_tracks_csv(n=40, offset=10.0))
    far.write_text(_tracks_csv(n=40, offset=10.0 + offset))
    results = {}
    for path in (near, far):
        out = tmp_path / path.stem
        code, _, err = cli("classify", path, "--out", out, "--quiet", *CAL)
        assert code == 0, err
        assert_no_warning_flood()
        results[path.stem] = (pd.read_csv(out / "tracks.csv"), pd.read_csv(out / "segments.csv"))
    (t_near, s_near), (t_far, s_far) = results["near"], results["far"]
    assert_finite(s_far, ("D_um2_s", "alpha", "speed_um_s"))
    assert t_far["state"].tolist() == t_near["state"].tolist()
    assert t_far["stage"].tolist() == t_near["stage"].tolist()
    np.testing.assert_allclose(s_far["speed_um_s"], s_near["speed_um_s"], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- Python API tables


def test_analyze_tracks_refuses_bad_tables_and_accepts_an_empty_one():
    config = PipelineConfig()
    cal = dict(pixel_size_um=PX, frame_interval_s=DT)
    good = read_track_table_from_text(GOOD)
    bad = {
        "not a table": ([[0, 1, 2, 0]], r"expected a table \(DataFrame\), got list"),
        "missing": (good.drop(columns="particle"), r"missing column\(s\) particle"),
        "nan": (good.assign(x=np.where(good.index == 4, np.nan, good["x"])), r"missing frame/x"),
        "text": (good.astype({"y": object}).assign(y="a"), r"column y is not numeric"),
        "duplicate": (pd.concat([good, good.iloc[:1]]), r"several points in frame 0"),
        "negative": (good.assign(frame=good["frame"] - 1), r"negative frame number -1"),
    }
    for name, (table, pattern) in bad.items():
        with pytest.raises(SptInputError, match=pattern) as refused:
            analyze_tracks(table, config, **cal)
        assert str(refused.value).startswith("tracks: "), name
    empty = analyze_tracks(good.iloc[:0], config, **cal)
    assert len(empty.tracks) == len(empty.segments) == len(empty.stage_velocities) == 0
    assert set(TRACK_DESIGN) <= set(empty.tracks.columns)
    assert set(SEGMENT_DESIGN) <= set(empty.segments.columns)
    assert set(STAGE_VELOCITY_COLUMNS) <= set(empty.stage_velocities.columns)


def read_track_table_from_text(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


# ----------------------------------------------------------------------------- command line


def test_output_folder_that_is_a_file_is_refused_by_every_command(tmp_path, good_movie):
    table = tmp_path / "tracks.csv"
    table.write_text(GOOD)
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should go\n")
    commands = {
        "run": ("run", good_movie, "--out", blocker, "--quiet"),
        "classify": ("classify", table, "--out", blocker, "--quiet", *CAL),
        "simulate": ("simulate", "--out", blocker, "--frames", 3, "--size", 16, 16),
    }
    for args in commands.values():
        code, _, err = cli(*args)
        assert_refused(code, err, blocker, r"output folder is a file; give a folder with --out")
    code, _, err = cli("classify", table, "--out", blocker / "sub", "--quiet", *CAL)
    assert_refused(code, err, blocker / "sub", rf"output folder lies inside {blocker}, which is")
    assert blocker.read_text().startswith("a file")


def test_unwritable_output_is_one_line_not_a_traceback(tmp_path):
    table = tmp_path / "tracks.csv"
    table.write_text(GOOD)
    code, _, err = cli("config", "--write", "/proc/spt-cannot-write-here.toml", "--force")
    assert code == 1 and "Traceback" not in err and "internal error" not in err, err
    assert err.startswith("spt: error: /proc/") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("--photons", "nan"), r"argument --photons: must be a positive number, got 'nan'"),
        (("--photons", "inf"), r"argument --photons: must be a positive number, got 'inf'"),
        (("--background", "-1"), r"argument --background: must be a finite number >= 0"),
        (("--seed", "-1"), r"argument --seed: must be >= 0, got '-1'"),
        (("--frames", "0"), r"argument --frames: must be at least 1, got '0'"),
        (("--size", "0", "16"), r"argument --size: must be at least 1, got '0'"),
        (("--particles", "many"), r"argument --particles: expected a whole number"),
        (("--name", "../escape"), r"argument --name: must be a file name prefix without folders"),
    ],
)
def test_simulate_refuses_bad_parameters_as_usage_errors(tmp_path, args, pattern):
    code, _, err = cli("simulate", "--out", tmp_path / "sim", *args)
    assert code == 2 and "Traceback" not in err, err
    assert re.search(pattern, err.strip().splitlines()[-1]), err
    assert not (tmp_path / "sim").exists()


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("--frames", "1"), r"n_frames must be >= 2, got 1"),
        (("--size", "8", "8"), r"shape must be \(Y, X\) with both >= 16 pixels"),
        (("--preset", "nope"), r"unknown preset 'nope'"),
    ],
)
def test_simulate_refuses_invalid_combinations_in_one_line(tmp_path, args, pattern):
    code, _, err = cli("simulate", "--out", tmp_path / "sim", *args)
    assert code == 1 and "Traceback" not in err, err
    assert err.startswith("spt: error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert not (tmp_path / "sim").exists()


def test_config_files_and_overrides_are_checked(tmp_path, good_movie):
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(b"\xff\xfe[[[ not toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[detect]\nthreshhold = 4\n")
    cases = [
        (("--config", tmp_path / "missing.toml"), tmp_path / "missing.toml", r"not found"),
        (("--config", garbage), garbage, r"not valid TOML|not UTF-8|cannot read"),
        (("--config", unknown), unknown, r"threshhold"),
        (("--set", "detect.threshold=high"), "--set", r"detect.threshold must be a number"),
        (("--set", "nonsense"), "--set", r"expected SECTION.KEY=VALUE"),
    ]
    for args, source, pattern in cases:
        code, _, err = cli("run", good_movie, "--out", tmp_path / "out", "--quiet", *args)
        assert_refused(code, err, source, pattern)
    assert files_in(tmp_path / "out") == []


def test_non_finite_config_numbers_are_refused():
    code, _, err = cli("config", "--show", "--set", "detect.threshold=nan")
    assert_refused(code, err, "--set", r"detect.threshold")


def test_failed_write_leaves_former_results_untouched(tmp_path, monkeypatch):
    """A table write that fails (disk full) keeps the former complete results, not a mix."""
    import spt.io

    table = tmp_path / "tracks.csv"
    table.write_text(GOOD)
    out = tmp_path / "out"
    assert cli("classify", table, "--out", out, "--quiet", *CAL)[0] == 0
    before = {p.name: p.read_bytes() for p in files_in(out)}
    table.write_text(_tracks_csv(seed=9))  # new data, so new tables would differ
    real = spt.io.write_table

    def full_disk(df, path):
        if Path(path).name == "segments.csv":
            raise OSError(28, "No space left on device", str(path))
        return real(df, path)

    monkeypatch.setattr(spt.io, "write_table", full_disk)
    code, _, err = cli("classify", table, "--out", out, "--quiet", *CAL)
    assert code == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in files_in(out)} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_failed_write_in_a_batch_leaves_no_result_folder(tmp_path, monkeypatch, good_movie):
    import spt.pipeline

    real = spt.pipeline.write_table

    def full_disk(df, path):
        if Path(path).name.startswith("segments"):
            raise OSError(28, "No space left on device", str(path))
        return real(df, path)

    monkeypatch.setattr(spt.pipeline, "write_table", full_disk)
    out = tmp_path / "out"
    code, _, err = cli("run", good_movie, "--out", out, "--quiet")
    assert code == 1 and "No space left on device" in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert files_in(out) == []  # no movie folder, no hidden partial folder, no summary


# ----------------------------------------------------------------------------- real processes


def test_console_script_cases_in_real_processes(tmp_path, tiff_corpus):
    """The console script itself: exit codes, one line on stderr, no traceback, no hang."""
    truncated, _, _ = tiff_corpus["truncated-compressed"]
    result = spt_process("run", truncated, "--out", tmp_path / "a", "--quiet", *CAL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"spt: error: {truncated}: truncated")

    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(np.random.default_rng(6).bytes(512))
    result = spt_process("classify", garbage, "--out", tmp_path / "b", *CAL)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "b").exists()

    # a simulation too large to hold in memory is refused at once instead of hanging
    result = spt_process(
        "simulate", "--out", tmp_path / "c", "--frames", 10**9, "--size", 512, 512, timeout=60
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.match(r"spt: error: a simulation of 1000000000 frames .* needs about", result.stderr)
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- napari readers


@pytest.fixture(scope="module")
def napari_reader():
    pytest.importorskip("napari", reason="napari readers need the napari extra")
    from spt.napari import _reader

    return _reader


def test_napari_readers_decline_what_they_cannot_read(napari_reader, tiff_corpus, tmp_path):
    declined = [
        tiff_corpus[c][0]
        for c in (
            "zero-bytes",
            "random-bytes",
            "tiff-magic-then-garbage",
            "truncated-uncompressed",
            "truncated-compressed",
            "truncated-in-header",
            "single-image",
            "one-frame",
            "rgb-movie",
            "hyperstack-channels",
            "two-image-series",
            "looping-directories",
            "bool-pixels",
            "png-named-tif",
            "missing-path",
            "empty-folder",
        )
    ]
    for path in declined:
        assert napari_reader.get_movie_reader(str(path)) is None, path
        assert napari_reader.get_movie_reader([str(path)]) is None, path
    for case in ("random-bytes", "truncated-in-header", "looping-directories"):
        masks = tmp_path / f"{case}_masks.tif"  # the masks reader takes *_masks.tif files
        masks.write_bytes(tiff_corpus[case][0].read_bytes())
        assert napari_reader.get_movie_reader(str(masks)) is None, case
    tables = {
        "empty.csv": b"",
        "binary.csv": np.random.default_rng(7).bytes(1024),
        "other_columns.csv": b"a,b,c\n1,2,3\n",
        "not_a_table.txt": GOOD.encode(),
    }
    for name, content in tables.items():
        (tmp_path / name).write_bytes(content)
        assert napari_reader.get_results_reader(str(tmp_path / name)) is None, name
    assert napari_reader.get_results_reader(str(tmp_path / "missing.csv")) is None
    assert napari_reader.get_results_reader(str(tmp_path / "empty_dir")) is None
    assert napari_reader.get_results_reader([str(tmp_path / "a.csv"), str(tmp_path)]) is None


def test_napari_readers_open_degenerate_inputs_and_refuse_bad_content_in_one_line(
    napari_reader, tmp_path
):
    blank = ome(tmp_path / "blank.ome.tif", np.zeros((3, 16, 16), np.uint16))
    layers = napari_reader.get_movie_reader(str(blank))(str(blank))
    assert [layer[2] for layer in layers] == ["image"]
    empty = tmp_path / "no_tracks.csv"
    empty.write_text("frame,x,y,particle\n")
    layers = napari_reader.get_results_reader(str(empty))(str(empty))
    assert [layer[2] for layer in layers] == ["points"] and len(layers[0][0]) == 0
    bad = tmp_path / "bad_tracks.csv"
    bad.write_text(GOOD + "5,1.0,1.0,0\n")
    reader = napari_reader.get_results_reader(str(bad))
    with pytest.raises(SptInputError, match=r"particle 0 has several points in frame 5") as err:
        reader(str(bad))
    assert str(err.value).startswith(f"{bad}: ")
