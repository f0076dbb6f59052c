"""End to end on the bundled sample: positions match ground truth, stages match the truth's."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import SAMPLE, SAMPLE_MASKS
from scipy.spatial import cKDTree

from spt.batch import find_movies, run_batch
from spt.config import PipelineConfig
from spt.pipeline import analyze_tracks, movie_name, process_movie, track_parts
from spt.schema import (
    SEGMENT_COLUMNS,
    SPOT_COLUMNS,
    STAGE_VELOCITY_COLUMNS,
    STAGES,
    STATES,
    TRACK_COLUMNS,
)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    outcome = run_batch([SAMPLE], out, PipelineConfig(), masks_path=SAMPLE_MASKS)
    return out, outcome


def test_writes_the_four_tables_with_design_columns(sample_run):
    out, outcome = sample_run
    assert outcome.n_failed == 0
    folder = out / "sample"
    for name, columns in (
        ("spots", SPOT_COLUMNS),
        ("tracks", TRACK_COLUMNS),
        ("segments", SEGMENT_COLUMNS),
        ("stage_velocities", STAGE_VELOCITY_COLUMNS),
    ):
        table = pd.read_csv(folder / f"{name}.csv")
        assert set(columns) <= set(table.columns), name
        assert len(table) > 0, name
    assert (folder / "tracks_by_stage.png").stat().st_size > 10_000
    assert (out / "stage_velocities.csv").exists()
    assert not list(out.glob(".*")), "temporary files left behind"


def test_detections_match_ground_truth(sample_run, sample_truth):
    _, outcome = sample_run
    spots = outcome.read_table("sample", "spots")
    visible = sample_truth[sample_truth["visible"]]
    # Slow particles (not in flow) should be found and localised well.
    slow = visible[visible["stage"] != "circulation"]
    matched, errors = 0, []
    for frame, truth in slow.groupby("frame"):
        found = spots[spots["frame"] == frame]
        if found.empty:
            continue
        d, _ = cKDTree(found[["x", "y"]].to_numpy()).query(truth[["x", "y"]].to_numpy())
        matched += int((d < 1.0).sum())
        errors.extend(d[d < 1.0])
    assert matched / len(slow) > 0.9
    assert np.sqrt(np.mean(np.square(errors))) < 0.35  # px


def test_tracks_carry_states_and_stages(sample_run):
    _, outcome = sample_run
    tracks = outcome.read_table("sample", "tracks")
    assert set(tracks["state"]) <= set(STATES)
    assert set(tracks["stage"]) <= set(STAGES)
    assert tracks.groupby(["particle", "frame"]).size().max() == 1


def test_stage_table_has_the_stages_of_the_ground_truth(sample_run, sample_truth):
    _, outcome = sample_run
    table = outcome.read_table("sample", "stage_velocities")
    # Every stage that holds at least 5% of the true points must be reported.
    share = sample_truth["stage"].value_counts(normalize=True)
    assert set(share[share > 0.05].index) <= set(table["stage"])
    assert (table["n_steps"] >= 0).all()
    flow = table.set_index("stage").loc["circulation", "median_speed_um_s"]
    slow = table.set_index("stage").loc["perinuclear", "median_speed_um_s"]
    assert flow > 5 * slow


def test_process_movie_records_calibration_from_metadata():
    result = process_movie(SAMPLE, PipelineConfig())
    assert result.pixel_size_um == pytest.approx(0.2)
    assert result.frame_interval_s == pytest.approx(1 / 30)
    assert result.n_frames == 250
    assert result.projection.shape == (128, 128)


def test_find_movies_expands_folders_and_skips_masks(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/m1.tif", "a/m1_masks.tif", "m2.ome.tiff", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = find_movies([tmp_path])
    assert [job.path.name for job in found] == ["m1.tif", "m2.ome.tiff"]
    assert [job.folder for job in found] == ["a/m1", "m2"]
    assert found[0].masks == tmp_path / "a" / "m1_masks.tif"
    assert movie_name("x/m2.ome.tiff") == "m2"


def test_track_parts_hold_whole_tracks_of_about_equal_size():
    particle = np.repeat(np.arange(10), [5, 50, 5, 5, 30, 5, 5, 40, 5, 10])
    parts = track_parts(particle, 4)
    assert parts[0].start == 0 and parts[-1].stop == len(particle)
    assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:], strict=True))
    for part in parts[1:]:  # no track is cut: a part starts where a new particle starts
        assert particle[part.start] != particle[part.start - 1]
    assert 2 <= len(parts) <= 4
    assert max(p.stop - p.start for p in parts) < len(particle) / 2
    assert track_parts(particle[:5], 4) == [slice(0, 5)]  # one track: one part


def test_analysis_in_worker_processes_equals_the_serial_analysis(sample_run):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out, _ = sample_run
    raw = pd.read_csv(out / "sample" / "tracks.csv").drop(columns=["segment", "state", "stage"])
    raw = raw.sample(frac=1.0, random_state=1)  # any row order
    recorded = json.loads((out / "sample" / "provenance.json").read_text())["calibration"]
    calibration = {
        "pixel_size_um": recorded["pixel_size_um"],
        "frame_interval_s": recorded["frame_interval_s"],
        "masks": tifffile.imread(SAMPLE_MASKS),
    }
    serial = analyze_tracks(raw, PipelineConfig(), **calibration)
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        parallel = analyze_tracks(raw, PipelineConfig(), executor=pool, n_parts=5, **calibration)
    assert serial.tracks["particle"].nunique() >= 5  # really split into several parts
    for table in ("tracks", "segments", "stage_velocities"):
        pd.testing.assert_frame_equal(
            getattr(parallel, table), getattr(serial, table), check_exact=True, obj=table
        )
