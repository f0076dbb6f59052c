"""Property-based tests (hypothesis): readers, the track-table validator, MSD, segmentation, stages.

Invariants on random but valid inputs: tables round-trip through every CSV dialect, the
validator either refuses with :class:`SptInputError` or returns a clean table, finite input gives
finite output, segments tile each track exactly, stages advance in delivery order, and
degenerate inputs give empty but headed tables.

Runs are derandomized (the same examples every time, so CI is reproducible). For a longer
randomized search: ``SPT_HYPOTHESIS=explore pytest tests/test_properties.py``.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.io import MAX_COORDINATE_PX, check_track_table, read_movie, read_track_table, write_movie
from spt.msd import msd_curve
from spt.pipeline import analyze_tracks, array_chunks, track_frames
from spt.schema import SEGMENT_COLUMNS, STAGE_VELOCITY_COLUMNS, STAGES, STATES
from spt.segment import segment_tracks

EXPLORE = os.environ.get("SPT_HYPOTHESIS") == "explore"
PX, DT = 0.1, 0.033


def budget(n: int) -> settings:
    """``n`` examples in CI (derandomized), 10x as many random ones when exploring."""
    return settings(
        max_examples=10 * n if EXPLORE else n,
        derandomize=not EXPLORE,
        deadline=None,  # shared, loaded machines: time is not a property
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


# ----------------------------------------------------------------------------- strategies

KINDS = ("walk", "directed", "immobile", "stop-and-go", "constant", "jumps")


def _positions(kind: str, n: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """(n, 2) positions in px of one track of the given kind of motion."""
    if kind == "constant":
        return np.zeros((n, 2))
    if kind == "walk":
        steps = rng.normal(0, scale, (n, 2))
    elif kind == "directed":
        steps = np.array([scale, -0.5 * scale]) + rng.normal(0, 0.05 * scale, (n, 2))
    elif kind == "immobile":
        return rng.normal(0, 0.02 * scale, (n, 2))
    elif kind == "stop-and-go":
        moving = (np.arange(n) // 12) % 2 == 1
        steps = rng.normal(0, 0.02 * scale, (n, 2)) + moving[:, None] * np.array([scale, 0.0])
    else:  # rare big jumps between long rests
        steps = rng.normal(0, 0.01, (n, 2)) + (rng.random((n, 1)) < 0.1) * 20 * scale
    return np.cumsum(steps, axis=0)


@st.composite
def track_tables(draw, max_particles: int = 4, max_points: int = 60, min_points: int = 1):
    """A valid trackpy-style table: frame (with gaps), x, y (px), particle."""
    n_particles = draw(st.integers(1, max_particles))
    ids = draw(
        st.lists(st.integers(0, 10**6), min_size=n_particles, max_size=n_particles, unique=True)
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    parts = []
    for pid in ids:
        n = draw(st.integers(min_points, max_points))
        kind = draw(st.sampled_from(KINDS))
        scale = draw(st.sampled_from([1e-3, 0.05, 0.3, 1.0, 4.0]))
        gaps = rng.choice([1, 1, 1, 1, 2, 4], size=max(n - 1, 0))
        frames = draw(st.integers(0, 5000)) + np.concatenate([[0], np.cumsum(gaps)]).astype(int)
        origin = draw(st.sampled_from([0.0, 15.5, 300.0, -40.0, 1e6]))
        xy = origin + _positions(kind, n, rng, scale)
        parts.append(pd.DataFrame({"frame": frames, "x": xy[:, 0], "y": xy[:, 1], "particle": pid}))
    table = pd.concat(parts, ignore_index=True)
    order = rng.permutation(len(table))  # readers and analyses must not rely on row order
    return table.iloc[order].reset_index(drop=True)


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["particle", "frame"], ignore_index=True)


# ----------------------------------------------------------------------------- readers


@budget(40)
@given(
    table=track_tables(),
    dialect=st.sampled_from([(",", "."), (";", "."), ("\t", "."), (";", ",")]),
    extra=st.booleans(),
    bom=st.booleans(),
)
def test_track_tables_round_trip_through_every_csv_dialect(table, dialect, extra, bom):
    sep, decimal = dialect
    if extra:
        table = table.assign(signal=np.arange(len(table), dtype=float) * 0.5, note="a")
    text = table.to_csv(sep=sep, decimal=decimal, index=False)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tracks.csv"
        path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
        got = read_track_table(path)
    expected = _sorted(table.astype({"frame": np.int64, "particle": np.int64}))
    assert list(got.columns[:4]) == ["frame", "x", "y", "particle"]
    pd.testing.assert_frame_equal(got[expected.columns.tolist()], expected, check_dtype=False)
    assert got["frame"].dtype == np.int64 and got["x"].dtype == np.float64


def _check_clean(table: pd.DataFrame) -> None:
    """What the validator promises about every table it returns."""
    assert list(table.columns[:4]) == ["frame", "x", "y", "particle"]
    assert table["frame"].dtype == np.int64 and table["particle"].dtype == np.int64
    assert table["x"].dtype == np.float64 and table["y"].dtype == np.float64
    xy = table[["x", "y"]].to_numpy()
    assert np.isfinite(xy).all() and (np.abs(xy) <= MAX_COORDINATE_PX).all()
    assert (table["frame"] >= 0).all()
    assert not table.duplicated(["particle", "frame"]).any()
    assert table.equals(_sorted(table))


CELLS = st.one_of(
    st.integers(-3, 10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "nan", "abc", "1,5", " 2 ", "1e400", "-0", "None", "\x00"]),
    st.none(),
)


@budget(150)
@given(
    rows=st.lists(st.tuples(CELLS, CELLS, CELLS, CELLS), max_size=8),
    drop=st.sets(st.sampled_from(["frame", "x", "y", "particle"]), max_size=1),
)
def test_validator_refuses_or_returns_a_clean_table(rows, drop):
    table = pd.DataFrame(rows, columns=["frame", "x", "y", "particle"], dtype=object)
    table = table.drop(columns=sorted(drop))
    try:
        clean = check_track_table(table, "tracks")
    except SptInputError as err:
        assert str(err).startswith("tracks: ") and "\n" not in str(err)
        return
    assert not drop
    _check_clean(clean)
    assert len(clean) == len(table)
    pd.testing.assert_frame_equal(check_track_table(clean), clean)  # idempotent


@budget(150)
@given(
    head=st.sampled_from(
        [
            "",
            "frame,x,y,particle\n",
            "frame;x;y;particle\n",
            "frame\tx\ty\tparticle\n",
            "TRACK_ID,POSITION_X,POSITION_Y,FRAME\n",
            "x,y,particle,t\n",
        ]
    ),
    body=st.one_of(st.text(max_size=200), st.binary(max_size=200)),
)
def test_read_track_table_on_arbitrary_content_refuses_or_returns_a_clean_table(head, body):
    content = head.encode() + (body if isinstance(body, bytes) else body.encode("utf-8", "replace"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "any.csv"
        path.write_bytes(content)
        try:
            table = read_track_table(path, pixel_size_um=PX, frame_interval_s=DT)
        except SptInputError as err:
            assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
            return
    _check_clean(table)


@budget(30)
@given(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int16, np.uint32, np.float32]),
    shape=st.tuples(st.integers(2, 5), st.integers(1, 12), st.integers(1, 12)),
    imagej=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_movies_round_trip_through_the_tiff_reader(dtype, shape, imagej, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else np.finfo(dtype)
    data = rng.uniform(max(info.min, -1e30), min(info.max, 1e30), shape).astype(dtype)
    imagej = imagej and dtype in (np.uint8, np.uint16, np.float32) and shape[2] > 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.tif"
        write_movie(path, data, pixel_size_um=PX, frame_interval_s=DT, imagej=imagej)
        movie = read_movie(path)
        assert movie.n_frames == shape[0] and movie.shape == shape[1:]
        assert movie.pixel_size_um == pytest.approx(PX) and movie.frame_interval_s == DT
        chunks = list(movie.iter_chunks(2))
        np.testing.assert_array_equal(
            np.concatenate([c for _, c in chunks]), data.astype(np.float32)
        )
        del movie, chunks  # release the memory map before the folder goes


@pytest.fixture(scope="module")
def valid_tiffs() -> dict[str, bytes]:
    """Bytes of small valid TIFFs of several layouts, to be damaged by the next test."""
    data = np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5)
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, kwargs in {
            "ome": {
                "ome": True,
                "metadata": {"axes": "TYX", "PhysicalSizeX": PX, "TimeIncrement": DT},
            },
            "ome-zlib": {"ome": True, "compression": "zlib", "metadata": {"axes": "TYX"}},
            "imagej": {"imagej": True, "metadata": {"axes": "TYX", "finterval": DT}},
            "tiled": {"tile": (16, 16), "metadata": {"axes": "TYX"}},
        }.items():
            path = Path(folder) / f"{name}.tif"
            tifffile.imwrite(path, data, **kwargs)
            out[name] = path.read_bytes()
    return out


@budget(120)
@given(
    layout=st.sampled_from(["ome", "ome-zlib", "imagej", "tiled"]),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_damaged_tiffs_are_read_or_refused_never_crash(valid_tiffs, layout, cut, flips):
    content = bytearray(valid_tiffs[layout])
    for where, value in flips:
        content[min(int(where * len(content)), len(content) - 1)] = value
    if cut is not None:
        content = content[: int(cut * len(content))]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.tif"
        path.write_bytes(bytes(content))
        try:
            movie = read_movie(path, pixel_size_um=PX, frame_interval_s=DT)
            blocks = [block for _, block in movie.iter_chunks(3)]
        except SptInputError as err:
            assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
            return
        frames = np.concatenate(blocks)
        assert frames.shape == (movie.n_frames, *movie.shape) and movie.n_frames >= 2
        assert np.isfinite(frames).all()
        del movie, blocks


# ----------------------------------------------------------------------------- detection


@budget(25)
@given(
    value=st.one_of(st.integers(0, 65535), st.floats(-1e30, 1e30)),
    shape=st.tuples(st.integers(2, 5), st.integers(3, 40), st.integers(3, 40)),
    dtype=st.sampled_from([np.uint16, np.float32, np.float64]),
)
def test_constant_movies_have_no_spots(value, shape, dtype):
    if np.dtype(dtype).kind == "u":
        value = int(abs(value)) % 65536
    frames = np.full(shape, value, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        spots, tracks = track_frames(
            array_chunks(frames),
            PipelineConfig(),
            n_frames=shape[0],
            pixel_size_um=PX,
            frame_interval_s=DT,
        )
    assert len(spots) == 0 and len(tracks) == 0


@budget(25)
@given(
    scale=st.sampled_from([1e-6, 1e-3, 1.0, 1e6, 1e30]),
    offset=st.sampled_from([0.0, 1e3, -1e3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_detection_of_any_intensity_scale_gives_finite_in_frame_spots(scale, offset, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :24]
    frames = np.empty((4, 24, 24), np.float32)
    for t in range(4):
        x0, y0 = rng.uniform(6, 18, 2)
        spot = 400 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.3**2))
        frames[t] = (rng.poisson(100 + spot) + offset) * scale
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        spots, _ = track_frames(
            array_chunks(frames),
            PipelineConfig(),
            n_frames=4,
            pixel_size_um=PX,
            frame_interval_s=DT,
        )
    xy = spots[["x", "y"]].to_numpy(float)
    assert np.isfinite(spots.select_dtypes("number").to_numpy(float)).all()
    assert ((xy >= -0.5) & (xy <= 23.5)).all()
    assert spots["frame"].nunique() >= 3  # the bright spot is found whatever the units


# ----------------------------------------------------------------------------- MSD


@st.composite
def one_track(draw, max_points: int = 80):
    table = draw(track_tables(max_particles=1, max_points=max_points, min_points=1))
    return _sorted(table)


@budget(60)
@given(
    track=one_track(),
    max_lag=st.integers(1, 30),
    shift=st.floats(-1e6, 1e6),
    k=st.floats(0.01, 100),
)
def test_msd_is_finite_non_negative_and_translation_and_scale_consistent(track, max_lag, shift, k):
    f, x, y = (track[c].to_numpy() for c in ("frame", "x", "y"))
    lags, msd, counts = msd_curve(f, x, y, max_lag)
    assert len(lags) == len(msd) == len(counts)
    assert np.isfinite(msd).all() and (msd >= 0).all()
    assert (np.diff(lags) > 0).all() and ((lags >= 1) & (lags <= max_lag)).all()
    assert (counts >= 1).all() and (counts <= len(f) - 1).all()
    # the MSD at a lag averages exactly the pairs that far apart in frames
    for lag, value, count in zip(lags, msd, counts, strict=True):
        i, j = np.nonzero(f[None, :] - f[:, None] == lag)
        assert count == len(i)
        assert value == pytest.approx(
            np.mean((x[j] - x[i]) ** 2 + (y[j] - y[i]) ** 2), rel=1e-9, abs=1e-9
        )
    x0, y0 = x - x.mean(), y - y.mean()
    lags0, msd0, _ = msd_curve(f, x0, y0, max_lag)
    _, msd_shift, _ = msd_curve(f, x0 + shift, y0 - shift, max_lag)
    _, msd_k, _ = msd_curve(f, k * x0, k * y0, max_lag)
    np.testing.assert_array_equal(lags0, lags)
    np.testing.assert_allclose(msd_shift, msd0, rtol=1e-6, atol=1e-6 * (1 + abs(shift)))
    np.testing.assert_allclose(msd_k, k**2 * msd0, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- segmentation


def _check_tiling(points: pd.DataFrame, segments: pd.DataFrame) -> None:
    """Every point lies in exactly one segment; segments cover each track end to end."""
    assert set(SEGMENT_COLUMNS) - {"stage"} <= set(segments.columns)
    assert not segments.duplicated(["particle", "segment"]).any()
    per = points.groupby(["particle", "segment"])["frame"].agg(["min", "max", "size"])
    seg = segments.set_index(["particle", "segment"]).sort_index()
    assert per.index.equals(seg.index)  # no segment without points, no point without a segment
    assert (per["min"] == seg["start_frame"]).all()
    assert (per["max"] == seg["end_frame"]).all()
    assert (per["size"] == seg["n_points"]).all()
    for pid, g in points.groupby("particle"):
        ids = g.sort_values("frame")["segment"].to_numpy()
        assert (np.diff(ids) >= 0).all()  # segments follow each other in time, none interleave
        assert ids[0] == 0 and set(ids) == set(range(ids[-1] + 1))
        k = seg.loc[pid]
        assert k["start_frame"].iloc[0] == g["frame"].min()
        assert k["end_frame"].iloc[-1] == g["frame"].max()
        assert (k["start_frame"].to_numpy()[1:] > k["end_frame"].to_numpy()[:-1]).all()


@budget(40)
@given(tracks=track_tables())
def test_segments_tile_each_track_exactly_with_finite_values(tracks):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        points, segments = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    assert len(points) == len(tracks)
    assert set(points["state"]) <= set(STATES) and set(segments["state"]) <= set(STATES)
    _check_tiling(points, segments)
    values = segments[["D_um2_s", "alpha", "speed_um_s"]].to_numpy(float)
    assert np.isfinite(values).all()
    assert (segments[["D_um2_s", "speed_um_s"]].to_numpy(float) >= 0).all()
    # the points keep their positions
    merged = _sorted(tracks).merge(points, on=["particle", "frame"], suffixes=("", "_out"))
    np.testing.assert_array_equal(merged["x"], merged["x_out"])


def test_two_point_tracks_have_finite_motion_parameters():
    tracks = pd.DataFrame(
        {"frame": [0, 4], "x": [-0.039631, -0.008161], "y": [0.192127, 0.031426], "particle": 0}
    )
    points, segments = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    _check_tiling(points, segments)
    assert np.isfinite(segments[["D_um2_s", "alpha", "speed_um_s"]].to_numpy(float)).all()


@budget(10)
@given(tracks=track_tables(min_points=1, max_points=1, max_particles=6))
def test_one_point_tracks_are_one_point_segments(tracks):
    points, segments = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    _check_tiling(points, segments)
    assert (segments["n_points"] == 1).all() and len(segments) == len(tracks)
    assert np.isfinite(segments[["D_um2_s", "alpha", "speed_um_s"]].to_numpy(float)).all()


# ----------------------------------------------------------------------------- stages and tables


def _stage_order_violations(tracks: pd.DataFrame) -> list[int]:
    index = tracks["stage"].map({s: i for i, s in enumerate(STAGES)})
    steps = (
        tracks.assign(i=index).sort_values(["particle", "frame"]).groupby("particle")["i"].diff()
    )
    return sorted(tracks.loc[steps[steps < 0].index, "particle"].unique().tolist())


def _directed_then_free() -> pd.DataFrame:
    """A slow directed run (internalisation-like) followed by free diffusion."""
    rng = np.random.default_rng(11)
    run = np.cumsum(np.full((40, 2), [0.12, 0.0]), axis=0)
    walk = run[-1] + np.cumsum(rng.normal(0, 2.0, (40, 2)), axis=0)
    xy = 50 + np.vstack([run, walk])
    return pd.DataFrame({"frame": np.arange(80), "x": xy[:, 0], "y": xy[:, 1], "particle": 0})


@budget(40)
@given(tracks=track_tables(max_points=80))
@example(tracks=_directed_then_free())
def test_stages_advance_in_delivery_order_along_every_track(tracks):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        analysis = analyze_tracks(tracks, PipelineConfig(), pixel_size_um=PX, frame_interval_s=DT)
    staged = analysis.tracks
    assert len(staged) == len(tracks) and staged["stage"].isin(STAGES).all()
    assert _stage_order_violations(staged) == []
    _check_tiling(staged, analysis.segments)
    assert set(analysis.segments["stage"]) <= set(STAGES)
    velocities = analysis.stage_velocities
    assert set(STAGE_VELOCITY_COLUMNS) <= set(velocities.columns)
    assert set(velocities["stage"]) <= set(staged["stage"])
    stepped = velocities[velocities["n_steps"] > 0]
    assert np.isfinite(stepped[["mean_speed_um_s", "median_speed_um_s"]].to_numpy(float)).all()


@budget(15)
@given(
    extra=st.lists(st.sampled_from(["signal", "note", "x_err", "y_err", "TRACK_ID2"]), unique=True),
    empty_kind=st.sampled_from(["dataframe", "csv"]),
)
def test_degenerate_tables_give_empty_headed_results(extra, empty_kind):
    columns = ["frame", "x", "y", "particle", *extra]
    if empty_kind == "csv":
        tracks = read_track_table_text(",".join(columns) + "\n")
    else:
        tracks = pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    analysis = analyze_tracks(tracks, PipelineConfig(), pixel_size_um=PX, frame_interval_s=DT)
    for table, needed in (
        (analysis.tracks, ("frame", "x", "y", "particle", "segment", "state", "stage")),
        (analysis.segments, SEGMENT_COLUMNS),
        (analysis.stage_velocities, STAGE_VELOCITY_COLUMNS),
    ):
        assert len(table) == 0 and set(needed) <= set(table.columns)
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        assert buffer.getvalue().splitlines()[0].split(",")[: len(table.columns)] == [
            str(c) for c in table.columns
        ]


def read_track_table_text(text: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        path.write_text(text)
        return read_track_table(path)
