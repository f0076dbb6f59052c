"""Linking: identities through flow, crossings, blinking and dense frames (spt.link)."""

import tomllib
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.link import LinkConfig, drop_sparse_tracks, link
from spt.metrics import isbi_scores, track_scores
from spt.simulate import SimulationConfig, simulate_tracks

PX, DT = 0.2, 1 / 30


def _spots(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["frame", "x", "y"])


def test_empty_input_gives_typed_empty_tracks():
    out = link(_spots([]), pixel_size_um=PX, frame_interval_s=DT)
    assert len(out) == 0
    assert out["particle"].dtype == np.int64
    assert {"frame", "x", "y", "particle"} <= set(out.columns)


def test_fast_flow_crossing_keeps_identities():
    """Two particles at ~50 um/s (8 px/frame) cross each other; velocity prediction keeps them."""
    rows, truth = [], []
    rng = np.random.default_rng(0)
    for t in range(30):
        a = (10 + 8 * t, 100 + 0.5 * t)
        b = (240 - 8 * t, 108 - 0.5 * t)
        for pid, (x, y) in enumerate((a, b)):
            x, y = x + rng.normal(0, 0.1), y + rng.normal(0, 0.1)
            rows.append((t, x, y))
            truth.append((t, pid, x, y))
    out = link(_spots(rows), pixel_size_um=PX, frame_interval_s=DT)
    assert out["particle"].nunique() == 2
    for _, g in out.groupby("particle"):
        steps = np.diff(g.sort_values("frame")["x"])
        assert (np.sign(steps) == np.sign(steps[0])).all()  # never jumps to the other particle
        assert len(g) == 30


def test_blinking_gap_is_closed_and_lone_spots_dropped():
    rows = [(t, 50 + 0.05 * t, 50.0) for t in range(40) if not 10 <= t < 25]  # 15-frame blink
    rows += [(5, 200.0, 200.0)]  # a lone false detection
    out = link(_spots(rows), LinkConfig(max_gap_frames=20), pixel_size_um=PX, frame_interval_s=DT)
    assert out["particle"].nunique() == 1
    assert len(out) == 25
    short = link(_spots(rows), LinkConfig(max_gap_frames=5), pixel_size_um=PX, frame_interval_s=DT)
    assert short["particle"].nunique() == 2


def test_output_sorted_and_numbered():
    rng = np.random.default_rng(1)
    rows = [
        (t, x + rng.normal(0, 0.05), y)
        for t in range(10)
        for x, y in ((20, 20), (60, 60), (100, 20))
    ]
    spots = _spots(rows).sample(frac=1, random_state=0)
    spots["signal"] = 1.0
    out = link(spots, pixel_size_um=PX, frame_interval_s=DT)
    assert sorted(out["particle"].unique()) == [0, 1, 2]
    assert (out.groupby("particle")["frame"].apply(lambda f: f.is_monotonic_increasing)).all()
    assert out["particle"].is_monotonic_increasing
    assert "signal" in out.columns


def test_dense_frames_never_blow_up():
    """3000 random spots per frame within the flow search radius of each other: no
    combinatorial failure (trackpy raises SubnetOversizeException here), one spot per track per
    frame."""
    rng = np.random.default_rng(2)
    rows = [(t, *rng.uniform(0, 200, 2)) for t in range(4) for _ in range(3000)]
    out = link(_spots(rows), LinkConfig(min_track_length=1), pixel_size_um=PX, frame_interval_s=DT)
    assert len(out) == len(rows)
    assert not out.duplicated(["particle", "frame"]).any()


def test_recovers_simulated_tracks():
    """Ground-truth positions of a simulated movie (flow, blinking, stop-and-go) plus 0.1 px
    localisation noise: most tracks whole, few identity switches, high ISBI JSC-theta."""
    truth, _ = simulate_tracks(
        SimulationConfig(shape=(256, 256), n_frames=300, n_particles=30, seed=3)
    )
    vis = truth[truth["visible"]].reset_index(drop=True)
    rng = np.random.default_rng(3)
    spots = vis[["frame", "x", "y"]] + np.column_stack(
        [np.zeros(len(vis)), rng.normal(0, 0.1, (len(vis), 2))]
    )
    spots["frame"] = spots["frame"].astype(np.int64)
    out = link(spots, pixel_size_um=0.2, frame_interval_s=1 / 30)
    ts = track_scores(vis, out)
    assert ts.recovered >= 0.8
    assert ts.switches_per_100_links < 1.0
    assert isbi_scores(vis, out).jsc_theta >= 0.9


def test_bad_input_is_refused():
    with pytest.raises(SptInputError, match="missing"):
        link(pd.DataFrame({"frame": [0], "x": [1.0]}), pixel_size_um=PX, frame_interval_s=DT)
    with pytest.raises(SptInputError, match="NaN"):
        link(_spots([(0, np.nan, 1.0)]), pixel_size_um=PX, frame_interval_s=DT)
    with pytest.raises(SptInputError, match="pixel_size_um"):
        link(_spots([(0, 1.0, 1.0)]), pixel_size_um=0, frame_interval_s=DT)
    with pytest.raises(ValueError):
        LinkConfig(max_gap_frames=-1)


def test_config_is_toml_round_trip():
    text = PipelineConfig(link=LinkConfig(max_speed_um_s=120.0)).to_toml()
    assert PipelineConfig.from_dict(tomllib.loads(text)).link.max_speed_um_s == 120.0
    assert all(isinstance(v, (int, float, str, bool)) for v in asdict(LinkConfig()).values())


def _blink_beside_a_dim_false_detection() -> pd.DataFrame:
    """A bright particle at 6 px/frame, off for frames 10-15; a dim false detection 4 px behind
    its predicted path in frames 13 and 14."""
    rows = [(t, 20 + 6.0 * t, 50.0, 400.0) for t in range(30) if not 10 <= t < 16]
    rows += [(13, 20 + 6.0 * 13 - 4.0, 52.0, 100.0), (14, 20 + 6.0 * 14 - 4.0, 52.5, 100.0)]
    return pd.DataFrame(rows, columns=["frame", "x", "y", "signal"])


def test_brightness_keeps_a_track_off_a_dim_false_detection():
    """Position alone links the track to the false detection; the intensity term makes the
    track wait for the particle instead."""
    spots = _blink_beside_a_dim_false_detection()
    cfg = LinkConfig(min_track_length=1)
    out = link(spots, cfg, pixel_size_um=PX, frame_interval_s=DT)
    bright = out[out["signal"] == 400.0]
    assert bright["particle"].nunique() == 1
    assert not set(out.loc[out["signal"] == 100.0, "particle"]) & set(bright["particle"])
    blind = link(spots.drop(columns="signal"), cfg, pixel_size_um=PX, frame_interval_s=DT)
    first = blind.loc[blind["frame"] == 0, "particle"].iloc[0]
    assert first in set(blind.loc[blind["frame"] == 13, "particle"])


def test_intensity_term_off_is_position_only_and_survives_toml():
    spots = _blink_beside_a_dim_false_detection()
    off = LinkConfig(min_track_length=1, intensity_sd=0.0)
    with_signal = link(spots, off, pixel_size_um=PX, frame_interval_s=DT)
    blind = link(spots.drop(columns="signal"), off, pixel_size_um=PX, frame_interval_s=DT)
    assert (with_signal["particle"].to_numpy() == blind["particle"].to_numpy()).all()
    text = PipelineConfig(link=off).to_toml()
    assert PipelineConfig.from_dict(tomllib.loads(text)).link.intensity_sd == 0.0
    with pytest.raises(ValueError):
        LinkConfig(intensity_sd=-0.1)


def test_sparse_lap_is_optimal_on_random_graphs():
    """The component-wise assignment (stars by their cheapest edge, others by a LAP) reaches
    the optimum of one dense LAP over the whole graph."""
    from scipy.optimize import linear_sum_assignment

    from spt._lap import solve_sparse_lap

    rng = np.random.default_rng(3)
    for _ in range(200):
        n_rows, n_cols = rng.integers(1, 15, 2)
        m = int(rng.integers(0, 40))
        pairs = np.unique(
            np.column_stack([rng.integers(0, n_rows, m), rng.integers(0, n_cols, m)]), axis=0
        )
        cost = rng.normal(-1.0, 1.0, len(pairs))
        r, c = solve_sparse_lap(pairs[:, 0], pairs[:, 1], cost, n_rows, n_cols)
        assert len(set(r)) == len(r) and len(set(c)) == len(c)
        dense = np.zeros((n_rows, n_cols))
        dense[pairs[:, 0], pairs[:, 1]] = np.minimum(cost, 0.0)
        a, b = linear_sum_assignment(dense)
        assert np.isclose(dense[r, c].sum(), dense[a, b].sum())
        assert (dense[r, c] < 0).all()


def test_dense_lap_chooses_scipys_edges_even_on_ties():
    """The compiled LAP picks the same negative-cost edges as scipy's, also when integer costs
    make several assignments optimal (tie-breaking decides identities in the linker)."""
    from scipy.optimize import linear_sum_assignment

    from spt._lap import _dense_lap

    rng = np.random.default_rng(5)
    for k in range(2000):
        nr, nc = rng.integers(1, 8, 2)
        if k % 2:
            m = -rng.integers(0, 3, (nr, nc)).astype(float)
        else:
            m = np.minimum(rng.normal(size=(nr, nc)), 0.0)
        a, b = linear_sum_assignment(m)
        if nr <= nc:
            r, c = np.arange(nr), _dense_lap(m)
        else:
            r, c = _dense_lap(m.T.copy()), np.arange(nc)
        ours = {(i, j) for i, j in zip(r, c, strict=True) if m[i, j] < 0}
        assert ours == {(i, j) for i, j in zip(a, b, strict=True) if m[i, j] < 0}


def test_candidate_pairs_same_with_and_without_tree():
    """Linking candidates from the all-pairs test equal those of the k-d tree (dense frames)."""
    from spt.link import _pairs_within, _pairs_within_tree

    rng = np.random.default_rng(6)
    found = 0
    for _ in range(50):
        n, m = rng.integers(0, 30, 2)
        pos, pts = rng.uniform(0, 50, (n, 2)), rng.uniform(0, 50, (m, 2))
        pred = pos + rng.normal(0, 5, (n, 2))
        radius = rng.uniform(1, 10, n)
        r1, c1 = _pairs_within(pos, pred, pts, radius)
        r2, c2 = _pairs_within_tree(pos, pred, pts, radius)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(c1, c2)
        found += len(r1)
    assert found > 100


def test_short_sparse_tracks_dropped_dense_or_long_kept():
    """A few spots scattered over many frames (chained false detections) are dropped; a short
    dense track and a long sparse one are kept."""
    dense = pd.DataFrame({"frame": np.arange(10), "x": 5.0, "y": 5.0, "particle": 7})
    sparse = pd.DataFrame({"frame": [0, 9, 20, 31, 40], "x": 50.0, "y": 5.0, "particle": 3})
    long = pd.DataFrame({"frame": np.arange(0, 100, 5), "x": 90.0, "y": 5.0, "particle": 1})
    out = drop_sparse_tracks(pd.concat([dense, sparse, long], ignore_index=True))
    assert sorted(out["x"].unique()) == [5.0, 90.0]
    assert sorted(out["particle"].unique()) == [0, 1]
    off = LinkConfig(sparse_track_points=0)
    assert len(drop_sparse_tracks(pd.concat([dense, sparse]), off)) == 15
    # with signals: a sparse track as bright as the others is a blinking particle, kept;
    # a dim one is dropped
    bright = pd.concat([dense, sparse, long], ignore_index=True).assign(signal=150.0)
    assert len(drop_sparse_tracks(bright)) == len(bright)
    dim = bright.assign(signal=np.where(bright["particle"] == 3, 60.0, 150.0))
    assert sorted(drop_sparse_tracks(dim)["x"].unique()) == [5.0, 90.0]
    with pytest.raises(ValueError):
        LinkConfig(sparse_track_density=1.5)
