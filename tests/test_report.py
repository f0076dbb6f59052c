"""Report files per movie and per batch exist, are non-empty, self-contained and readable."""

import re

import numpy as np
import pandas as pd
import pytest

from spt.config import PipelineConfig
from spt.pipeline import Analysis, MovieResult, write_results
from spt.report import write_batch_report, write_movie_report
from spt.schema import STAGES
from spt.segment import segment_tracks
from spt.simulate import SimulationConfig, simulate_tracks
from spt.stages import classify_stages
from spt.summary import STAGE_TABLE_COLUMNS, stage_velocities

PX, DT = 0.2, 1 / 30


def _result(name: str, seed: int) -> MovieResult:
    """An analysed movie built from simulated tracks (no rendering: fast)."""
    truth, masks = simulate_tracks(SimulationConfig(n_frames=80, n_particles=12, seed=seed))
    t = truth[truth["visible"]]
    t = t.assign(x=t["x"] + np.random.default_rng(seed).normal(0, 0.25, len(t)))
    tracks, segments = segment_tracks(
        t[["frame", "x", "y", "particle"]], pixel_size_um=PX, frame_interval_s=DT
    )
    tracks, segments = classify_stages(
        tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT
    )
    table = stage_velocities(tracks, segments, pixel_size_um=PX, frame_interval_s=DT)
    projection = np.random.default_rng(seed).normal(100, 5, masks.shape)
    return MovieResult(
        name=name,
        source=f"/data/{name}.tif",
        spots=tracks[["frame", "x", "y"]],
        analysis=Analysis(tracks, segments, table),
        pixel_size_um=PX,
        frame_interval_s=DT,
        n_frames=80,
        projection=projection,
        masks=masks,
    )


@pytest.fixture(scope="module")
def results():
    return [_result("movie_a", 11), _result("movie_b", 12)]


def _assert_self_contained(html: str):
    assert "data:image/png;base64," in html
    # nothing is fetched from elsewhere: no external images, scripts or style sheets
    assert not re.search(r"<(img|script|link)[^>]+(src|href)=\"(?!data:)", html)


def test_movie_report_files_exist_and_are_readable(results, tmp_path):
    written = write_movie_report(results[0], tmp_path, config_toml="[stages]\nswitch_cost = 8.0")
    for name in (
        "report.html",
        "stage_dwells.csv",
        "stage_dwells.parquet",
        "stage_transitions.csv",
        "stage_velocities.parquet",
        "stage_velocities_columns.csv",
        *(
            f"{f}.{ext}"
            for f in ("tracks_by_stage", "speed_by_stage", "msd_by_state", "stage_transitions")
            for ext in ("png", "svg")
        ),
    ):
        path = tmp_path / name
        assert path in written, name
        assert path.stat().st_size > 500, name
    html = (tmp_path / "report.html").read_text()
    _assert_self_contained(html)
    for stage in STAGES:
        assert stage in html
    assert "noise floor" in html and "Net run speed" in html and "switch_cost" in html
    velocities = pd.read_parquet(tmp_path / "stage_velocities.parquet")
    assert list(velocities.columns) == list(STAGE_TABLE_COLUMNS)
    pd.testing.assert_frame_equal(velocities, results[0].analysis.stage_velocities)
    dwells = pd.read_csv(tmp_path / "stage_dwells.csv")
    assert dwells["dwell_s"].gt(0).all()
    assert len(pd.read_parquet(tmp_path / "stage_transitions.parquet")) == 36


def test_batch_report_pools_movies_and_links_their_reports(results, tmp_path):
    status = pd.DataFrame(
        {
            "movie": ["a.tif", "b.tif", "bad.tif"],
            "status": ["ok", "ok", "failed"],
            "error": ["", "", "bad.tif: truncated TIFF"],
        }
    )
    written = write_batch_report(results, tmp_path, summary_table=status)
    html = (tmp_path / "batch_report.html").read_text()
    _assert_self_contained(html)
    assert 'href="movie_a/report.html"' in html and 'href="movie_b/report.html"' in html
    assert "truncated TIFF" in html
    for path in written:
        assert path.stat().st_size > 0
    pooled = pd.read_parquet(tmp_path / "stage_velocities.parquet").set_index("stage")
    per_movie = [r.analysis.stage_velocities.set_index("stage")["n_tracks"] for r in results]
    expected = per_movie[0].add(per_movie[1], fill_value=0)
    assert (pooled["n_tracks"] == expected.reindex(pooled.index)).all()


def test_write_results_puts_the_report_beside_the_tables(results, tmp_path):
    folder = write_results(results[1], tmp_path, PipelineConfig())
    assert (folder / "report.html").stat().st_size > 10_000
    assert (folder / "tracks_by_stage.png").stat().st_size > 10_000
    assert (folder / "stage_velocities.csv").exists()


def test_msd_figure_pools_the_gap_aware_msd_of_every_segment(results):
    from spt.msd import msd_curve
    from spt.plot import _pooled_msd
    from spt.schema import STATES

    tracks = results[0].analysis.tracks
    tracks = tracks.drop(index=tracks.index[::7])  # blinking gaps
    sums, counts, n_segments = _pooled_msd(tracks, 10)
    want = np.zeros((3, len(STATES), 11))
    for _, g in tracks.groupby(["particle", "segment"]):
        if len(g) < 3:
            continue
        k = STATES.index(g["state"].iloc[0])
        lags, msd, n = msd_curve(g["frame"], g["x"], g["y"], 10)
        want[0, k, lags] += msd * n
        want[1, k, lags] += n
        want[2, k, lags] += 1
    assert want[2].sum() > 0
    np.testing.assert_allclose(sums, want[0], rtol=1e-10)
    np.testing.assert_array_equal(counts, want[1])
    np.testing.assert_array_equal(n_segments, want[2])
