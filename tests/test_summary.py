"""Per-stage tables: DESIGN columns and units, speeds vs known motion, noise flag, dwells."""

import numpy as np
import pandas as pd
import pytest

from spt.schema import STAGE_VELOCITY_COLUMNS
from spt.summary import (
    STAGE_TABLE_COLUMNS,
    MovieStages,
    column_descriptions,
    dwell_times,
    pooled_stage_velocities,
    stage_summary,
    stage_transitions,
    stage_velocities,
    step_speeds,
)

PX, DT = 0.1, 0.05  # um/px, s


def _tracks(n_tracks=8, n=80, sigma_px=0.3, flow_px=5.0, seed=0):
    """Tracks that flow at ``flow_px``/frame along x (circulation), then sit still (perinuclear).

    Localisation noise ``sigma_px`` per axis; each track flows for its first half.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_tracks):
        frames = np.arange(n)
        moving = frames < n // 2
        x = 10 + np.where(moving, frames, n // 2) * flow_px + p * 50
        y = np.full(n, 20.0 + p)
        rows.append(
            pd.DataFrame(
                {
                    "particle": p,
                    "frame": frames,
                    "x": x + rng.normal(0, sigma_px, n),
                    "y": y + rng.normal(0, sigma_px, n),
                    "segment": (~moving).astype(int),
                    "state": np.where(moving, "directed", "immobile"),
                    "stage": np.where(moving, "circulation", "perinuclear"),
                }
            )
        )
    tracks = pd.concat(rows, ignore_index=True)
    segments = (
        tracks.groupby(["particle", "segment"])
        .agg(state=("state", "first"), stage=("stage", "first"))
        .reset_index()
        .assign(
            D_um2_s=lambda d: np.where(d["state"] == "directed", 0.0, 0.001),
            alpha=lambda d: np.where(d["state"] == "directed", 2.0, 0.1),
            speed_um_s=lambda d: np.where(d["state"] == "directed", flow_px * PX / DT, 0.0),
        )
    )
    return tracks, segments


def test_table_has_design_columns_units_and_the_stages_present():
    tracks, segments = _tracks()
    table = stage_velocities(tracks, segments, pixel_size_um=PX, frame_interval_s=DT)
    assert list(table.columns[: len(STAGE_VELOCITY_COLUMNS)]) == list(STAGE_VELOCITY_COLUMNS)
    assert list(table.columns) == list(STAGE_TABLE_COLUMNS)
    assert list(table["stage"]) == ["circulation", "perinuclear"]  # delivery order
    speed_columns = [c for c in table.columns if "speed" in c and not c.startswith("n_")]
    assert all(c.endswith("_um_s") for c in speed_columns)
    assert table["n_tracks"].dtype == np.int64
    described = column_descriptions()
    assert list(described["column"]) == list(STAGE_TABLE_COLUMNS)
    assert described.set_index("column").loc["median_speed_um_s", "unit"] == "um/s"
    assert "FRAME-TO-FRAME" in described.set_index("column").loc["mean_speed_um_s", "meaning"]


def test_speeds_match_the_known_motion_and_noise_is_flagged():
    tracks, segments = _tracks(sigma_px=0.3)
    table = stage_velocities(tracks, segments, pixel_size_um=PX, frame_interval_s=DT).set_index(
        "stage"
    )
    flow = table.loc["circulation"]
    true_speed = 5.0 * PX / DT  # 10 um/s
    assert flow["median_speed_um_s"] == pytest.approx(true_speed, rel=0.05)
    assert flow["median_speed_ci_low_um_s"] <= flow["median_speed_um_s"]
    assert flow["median_speed_um_s"] <= flow["median_speed_ci_high_um_s"]
    assert flow["median_speed_ci_high_um_s"] - flow["median_speed_ci_low_um_s"] < 0.1 * true_speed
    assert flow["median_run_speed_um_s"] == pytest.approx(true_speed)
    assert flow["n_tracks"] == 8 and flow["n_runs"] == 8
    assert not flow["noise_dominated"]
    still = table.loc["perinuclear"]
    # the floor is sqrt(2) sigma / dt with sigma measured from the tracks (0.3 px)
    assert still["noise_floor_um_s"] == pytest.approx(np.sqrt(2) * 0.3 * PX / DT, rel=0.15)
    assert still["noise_dominated"]
    assert still["noise_fraction"] == pytest.approx(1.0, abs=0.2)


def test_confidence_intervals_narrow_with_more_tracks():
    def width(n_tracks):
        tracks, segments = _tracks(n_tracks=n_tracks, seed=n_tracks)
        row = stage_velocities(tracks, segments, pixel_size_um=PX, frame_interval_s=DT).iloc[-1]
        return row["median_speed_ci_high_um_s"] - row["median_speed_ci_low_um_s"]

    assert width(40) < width(4)


def test_frame_to_frame_steps_skip_gaps_and_stage_changes():
    tracks = pd.DataFrame(
        {
            "particle": [0, 0, 0, 0, 0, 1],
            "frame": [0, 1, 3, 4, 5, 0],
            "x": [0.0, 1.0, 2.0, 3.0, 5.0, 0.0],
            "y": 0.0,
            "stage": ["circulation"] * 4 + ["extravasation", "circulation"],
        }
    )
    steps = step_speeds(tracks, pixel_size_um=PX, frame_interval_s=DT)
    assert list(steps["gap_frames"]) == [1, 2, 1, 1]
    assert list(steps["within_stage"]) == [True, True, True, False]
    # across a gap the displacement is divided by the frames spanned
    assert steps["speed_um_s"].to_numpy() == pytest.approx(np.array([1, 0.5, 1, 2]) * PX / DT)
    # the table counts only one-frame steps inside one stage: frames 1 and 4
    segments = pd.DataFrame(
        {
            "particle": [0, 0, 1],
            "segment": [0, 1, 0],
            "state": "directed",
            "stage": ["circulation", "extravasation", "circulation"],
            "D_um2_s": 0.0,
            "alpha": 2.0,
            "speed_um_s": 1.0,
        }
    )
    table = stage_velocities(tracks, segments, pixel_size_um=PX, frame_interval_s=DT)
    assert table.set_index("stage").loc["circulation", "n_steps"] == 2


def test_dwell_times_and_transitions():
    tracks = pd.DataFrame(
        {
            "particle": [0] * 6 + [1] * 3,
            "frame": [0, 1, 2, 3, 4, 5, 10, 11, 12],
            "stage": ["extracellular", "extracellular", "membrane_binding", "membrane_binding"]
            + ["internalization", "internalization"]
            + ["extracellular"] * 3,
        }
    )
    dwells = dwell_times(tracks, frame_interval_s=DT)
    assert list(dwells["stage"]) == [
        "extracellular",
        "membrane_binding",
        "internalization",
        "extracellular",
    ]
    assert list(dwells["censored"]) == [True, False, True, True]
    assert dwells["dwell_s"].to_numpy() == pytest.approx([2 * DT, 2 * DT, 2 * DT, 3 * DT])
    moves = stage_transitions(dwells).set_index(["from_stage", "to_stage"])["n_transitions"]
    assert len(moves) == 36
    assert moves["extracellular", "membrane_binding"] == 1
    assert moves["membrane_binding", "internalization"] == 1
    assert moves.sum() == 2


def test_pooling_keeps_movies_apart():
    tracks, segments = _tracks(n_tracks=3)
    movies = [MovieStages(tracks, segments, PX, DT, name=n) for n in ("a", "b")]
    pooled = pooled_stage_velocities(movies).set_index("stage")
    single = stage_velocities(tracks, segments, pixel_size_um=PX, frame_interval_s=DT)
    single = single.set_index("stage")
    assert pooled.loc["circulation", "n_tracks"] == 6  # same particle ids, different movies
    assert pooled.loc["circulation", "n_steps"] == 2 * single.loc["circulation", "n_steps"]
    assert pooled.loc["circulation", "median_speed_um_s"] == pytest.approx(
        single.loc["circulation", "median_speed_um_s"]
    )
    summary = stage_summary(movies)
    assert set(summary.dwells["movie"]) == {"a", "b"}
    assert (
        summary.transitions.set_index(["from_stage", "to_stage"]).loc[
            ("circulation", "perinuclear"), "n_transitions"
        ]
        == 6
    )


def test_prepared_movies_and_the_quick_table_give_the_same_pooled_tables():
    # A batch prepares each movie's share as it finishes, and draws its figures from the
    # estimates while the bootstrap runs: neither may change a table.
    movies = [
        MovieStages(*_tracks(n_tracks=3, seed=s), PX, DT, name=n) for s, n in ((0, "a"), (1, "b"))
    ]
    full = stage_summary(movies)
    prepared = stage_summary(
        [MovieStages(m.tracks, m.segments, PX, DT, name=m.name).prepare() for m in movies]
    )
    quick = stage_summary(movies, intervals=False)
    for name in ("velocities", "dwells", "transitions", "steps"):
        pd.testing.assert_frame_equal(getattr(prepared, name), getattr(full, name))
    for name in ("dwells", "transitions", "steps"):
        pd.testing.assert_frame_equal(getattr(quick, name), getattr(full, name))
    intervals = [c for c in STAGE_TABLE_COLUMNS if "_ci_" in c]
    assert len(intervals) == 6 and full.velocities[intervals].notna().any().all()
    assert quick.velocities[intervals].isna().all().all()
    pd.testing.assert_frame_equal(
        quick.velocities.drop(columns=intervals), full.velocities.drop(columns=intervals)
    )


def test_empty_input_gives_an_empty_table_with_all_columns():
    tracks, segments = _tracks()
    table = stage_velocities(
        tracks.iloc[:0], segments.iloc[:0], pixel_size_um=PX, frame_interval_s=DT
    )
    assert list(table.columns) == list(STAGE_TABLE_COLUMNS)
    assert table.empty and table["n_tracks"].dtype == np.int64


def test_bootstrap_median_of_a_resample_is_the_median_of_the_resampled_steps():
    from spt.summary import _weighted_medians

    rng = np.random.default_rng(5)
    values = np.sort(rng.gamma(2.0, size=300))
    codes = rng.integers(0, 12, size=300)  # the cluster (track) of each step
    draws = rng.integers(0, 12, size=(40, 12))  # 40 resamples of 12 tracks
    weights = np.stack([np.bincount(d, minlength=12) for d in draws])
    totals = weights @ np.bincount(codes, minlength=12)
    got = _weighted_medians(values, codes, weights, totals.astype(float))
    for r in range(40):
        resampled = np.concatenate([values[codes == c] for c in draws[r]])
        lower_median = np.sort(resampled)[int(np.ceil(len(resampled) / 2)) - 1]
        assert got[r] == lower_median


def test_sorted_and_shuffled_tracks_give_the_same_tables():
    tracks, segments = _tracks()
    shuffled = tracks.sample(frac=1.0, random_state=3)
    a = stage_summary([MovieStages(tracks, segments, PX, DT)])
    b = stage_summary([MovieStages(shuffled, segments, PX, DT)])
    pd.testing.assert_frame_equal(a.velocities, b.velocities)
    pd.testing.assert_frame_equal(a.dwells, b.dwells)
    pd.testing.assert_frame_equal(a.steps.reset_index(drop=True), b.steps.reset_index(drop=True))
