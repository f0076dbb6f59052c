"""Tests of spt.segment: change points, motion states and segment parameters on known tracks."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from _motion_sim import brownian, confined, directed, stop_and_go, table

from spt.errors import SptInputError
from spt.schema import STATES
from spt.segment import (
    RUN_STOP_COLUMNS,
    SEGMENT_TABLE_COLUMNS,
    SegmentConfig,
    changepoints,
    pool_confinement,
    run_stop_summary,
    segment_tracks,
)

PX, DT = 0.2, 1 / 30  # um, s
SIGMA_PX = 0.15  # 30 nm localisation noise


def _stop_and_go_set(seed: int, n_tracks: int = 4, drop: float = 0.0):
    rng = np.random.default_rng(seed)
    parts, states, speeds = [], [], []
    for p in range(n_tracks):
        v = rng.uniform(0.2, 1.0)  # um/s
        xy, st = stop_and_go(rng, 4, 35, 25, v * DT / PX, SIGMA_PX)
        keep = rng.uniform(size=len(st)) >= drop
        keep[0] = True
        parts.append(table(xy[keep], particle=p, frames=np.arange(len(st))[keep]))
        states.append(st[keep])
        speeds.append(v)
    return pd.concat(parts, ignore_index=True), np.concatenate(states), speeds


def _changepoints_found(out: pd.DataFrame, true_state: np.ndarray, within: int = 3) -> float:
    """Fraction of the true state changes with a segment boundary within ``within`` frames."""
    found = total = 0
    for _, g in out.groupby("particle"):
        st = true_state[g.index]
        true_cp = g["frame"].to_numpy()[1:][st[1:] != st[:-1]]
        pred_cp = g["frame"].to_numpy()[1:][np.diff(g["segment"].to_numpy()) != 0]
        total += len(true_cp)
        found += sum(np.min(np.abs(pred_cp - c), initial=99) <= within for c in true_cp)
    return found / total


@pytest.mark.parametrize("drop", [0.0, 0.15])
def test_stop_and_go_states_change_points_and_run_speeds(drop):
    tracks, true_state, speeds = _stop_and_go_set(seed=10, drop=drop)
    out, segs = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    assert np.mean(out["state"].to_numpy() == true_state) >= 0.9
    # change points: true ones every 35 / 25 frames, found within 3 frames
    assert _changepoints_found(out, true_state) >= 0.8
    # alternating runs and stops with the right speeds
    runs = segs[segs["state"] == "directed"]
    rel = [runs[runs.particle == p]["speed_um_s"].median() / v - 1 for p, v in enumerate(speeds)]
    assert np.max(np.abs(rel)) <= 0.1
    assert set(segs["motion"]) == {"go", "stop"}
    summary = run_stop_summary(segs)
    assert list(summary.columns) == list(RUN_STOP_COLUMNS)
    assert summary["n_runs"].between(3, 5).all() and summary["n_stops"].between(3, 5).all()


def test_single_state_tracks_get_right_state_and_parameters():
    rng = np.random.default_rng(11)
    tracks = pd.concat(
        [
            table(brownian(rng, 300, 0.25 * DT / PX**2, SIGMA_PX), particle=0),  # free 0.25 um^2/s
            table(confined(rng, 300, 0.3 / PX, 0.1 * DT / PX**2, SIGMA_PX), particle=1),  # r 0.3 um
            table(directed(rng, 300, (0.0, 0.0), 0.0, SIGMA_PX), particle=2),  # immobile
            table(directed(rng, 300, (0.6 * DT / PX, 0.3 * DT / PX), 0.001, SIGMA_PX), particle=3),
        ],
        ignore_index=True,
    )
    _, segs = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    first = segs.groupby("particle").first()
    assert segs.groupby("particle").size().tolist() == [1, 1, 1, 1]
    assert first["state"].tolist() == ["free", "confined", "immobile", "directed"]
    assert first.loc[0, "D_um2_s"] == pytest.approx(0.25, rel=0.25)
    assert first.loc[0, "alpha"] == pytest.approx(1.0, abs=0.2)
    assert first.loc[1, "confinement_radius_um"] == pytest.approx(0.3, rel=0.3)
    assert first.loc[2, "D_um2_s"] == 0.0
    assert first.loc[3, "speed_um_s"] == pytest.approx(np.hypot(0.6, 0.3), rel=0.05)


def test_free_to_confined_change_is_found():
    rng = np.random.default_rng(12)
    a = brownian(rng, 150, 0.25 * DT / PX**2, SIGMA_PX)
    b = confined(rng, 150, 0.15 / PX, 0.05 * DT / PX**2, SIGMA_PX, start=a[-1])
    cps = changepoints(np.arange(300), np.vstack([a, b]))
    assert len(cps) >= 1 and np.min(np.abs(cps - 150)) <= 5


def test_output_contract_keeps_columns_and_orders_rows():
    rng = np.random.default_rng(13)
    tracks = pd.concat(
        [table(brownian(rng, 40, 0.2, SIGMA_PX), particle=p) for p in (5, 2)], ignore_index=True
    )
    tracks["signal"] = 1.0
    tracks["x_err"] = tracks["y_err"] = SIGMA_PX
    out, segs = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    assert {"signal", "x_err", "segment", "state"} <= set(out.columns)
    assert "stage" not in out.columns and "stage" not in segs.columns
    assert out["particle"].tolist() == sorted(out["particle"])
    assert out["segment"].dtype == np.int64 and set(out["state"]) <= set(STATES)
    assert list(segs.columns) == list(SEGMENT_TABLE_COLUMNS)
    assert segs.groupby("particle")["n_points"].sum().to_dict() == {2: 40, 5: 40}


def test_degenerate_input_gives_headed_tables_without_warnings():
    empty = pd.DataFrame(
        {"frame": pd.Series(dtype=int), "x": [], "y": [], "particle": pd.Series(dtype=int)}
    )
    tiny = pd.DataFrame(
        {
            "frame": [0, 3, 0, 1, 2],
            "x": [1.0, 1.0, 5.0, 5.5, 6.0],
            "y": [2.0, 2.0, 1.0, 1.0, 1.0],
            "particle": [0, 0, 1, 1, 1],
        }
    )
    one = pd.DataFrame({"frame": [4], "x": [1.0], "y": [1.0], "particle": [9]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, segs = segment_tracks(empty, pixel_size_um=PX, frame_interval_s=DT)
        assert out.empty and segs.empty and list(segs.columns) == list(SEGMENT_TABLE_COLUMNS)
        assert run_stop_summary(segs).empty
        out, segs = segment_tracks(one, pixel_size_um=PX, frame_interval_s=DT)
        assert out["state"].tolist() == ["immobile"] and segs["n_points"].tolist() == [1]
        out, segs = segment_tracks(tiny, pixel_size_um=PX, frame_interval_s=DT)
        assert len(segs) == 2 and segs["state"].isin(STATES).all()
        assert segs[["D_um2_s", "alpha", "speed_um_s"]].notna().all().all()


def test_bad_input_is_refused_with_a_clear_message():
    ok = pd.DataFrame({"frame": [0, 1], "x": [0.0, 1.0], "y": [0.0, 0.0], "particle": [0, 0]})
    with pytest.raises(SptInputError, match="missing column"):
        segment_tracks(ok.drop(columns="y"), pixel_size_um=PX, frame_interval_s=DT)
    with pytest.raises(SptInputError, match="NaN"):
        segment_tracks(ok.assign(x=[0.0, np.nan]), pixel_size_um=PX, frame_interval_s=DT)
    with pytest.raises(SptInputError, match="same frame"):
        segment_tracks(ok.assign(frame=[1, 1]), pixel_size_um=PX, frame_interval_s=DT)
    with pytest.raises(SptInputError, match="frame_interval_s"):
        segment_tracks(ok, pixel_size_um=PX, frame_interval_s=0.0)


def test_config_is_validated_and_toml_friendly():
    for f in dataclasses.fields(SegmentConfig):
        assert isinstance(
            getattr(SegmentConfig(), f.name), (int, float, str, bool, tuple, type(None))
        )
    with pytest.raises(ValueError, match="min_segment_frames"):
        SegmentConfig(min_segment_frames=1)
    with pytest.raises(ValueError, match="blur_r"):
        SegmentConfig(blur_r=0.5)
    # a larger minimum segment length merges the stop-and-go into fewer pieces
    tracks, _, _ = _stop_and_go_set(seed=14, n_tracks=1)
    n_default = len(segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)[1])
    n_long = len(
        segment_tracks(
            tracks, SegmentConfig(min_segment_frames=60), pixel_size_um=PX, frame_interval_s=DT
        )[1]
    )
    assert n_long < n_default


def test_states_on_the_project_simulator():
    """Free diffusion, binding and stop-and-go internalisation from spt.simulate (30 nm noise,
    blinking gaps kept): most points get their true state (benchmarks/motion.py measures more)."""
    from spt.simulate import SimulationConfig, simulate_tracks

    cfg = SimulationConfig(
        n_frames=200, n_particles=8, seed=3, stage_weights=(0, 0, 0.3, 0, 0.7, 0)
    )
    truth, _ = simulate_tracks(cfg)
    rng = np.random.default_rng(0)
    obs = truth[truth["visible"]].sort_values(["particle", "frame"], ignore_index=True)
    obs["x"] += rng.normal(0, SIGMA_PX, len(obs))
    obs["y"] += rng.normal(0, SIGMA_PX, len(obs))
    assert set(obs["state"]) == set(STATES)
    out, _ = segment_tracks(
        obs[["frame", "x", "y", "particle"]],
        SegmentConfig(blur_r=cfg.exposure_fraction / 6),
        pixel_size_um=cfg.pixel_size_um,
        frame_interval_s=cfg.frame_interval_s,
    )
    assert np.mean(out["state"].to_numpy() == obs["state"].to_numpy()) >= 0.8


def test_changepoints_are_the_exact_optimal_partition():
    """The compiled optimal partitioning (PELT, local search over rho) returns the partition that
    minimises the penalised MA(1) cost, found here by brute-force dynamic programming."""
    from spt.segment import _Increments

    rng = np.random.default_rng(15)
    for _ in range(3):
        a = brownian(rng, 25, 0.05, SIGMA_PX)
        b = directed(rng, 20, (0.3, -0.2), 0.0, SIGMA_PX, start=a[-1])
        c = brownian(rng, 25, 0.5, SIGMA_PX, start=b[-1])
        xy = np.vstack([a, b, c])
        frames = np.arange(len(xy))
        cfg = SegmentConfig()
        inc = _Increments(frames, xy)
        L, m = cfg.min_segment_frames - 1, inc.m
        pen = cfg.changepoint_penalty * 5 * np.log(2 * m)
        F, prev = np.full(m + 1, np.inf), np.zeros(m + 1, int)
        F[0] = -pen
        for e in range(L, m + 1):
            starts = np.array([i for i in range(e - L + 1) if np.isfinite(F[i])])
            tot = F[starts] + inc.fit(starts, np.full(starts.size, e))[3] + pen
            F[e], prev[e] = tot.min(), starts[np.argmin(tot)]
        best, e = [], m
        while e > 0:
            e = prev[e]
            if e > 0:
                best.insert(0, e)
        cps = changepoints(frames, xy, cfg)
        assert cps.tolist() == best
        assert len(best) >= 1
        assert np.min(np.abs(cps - 25)) <= 3 or np.min(np.abs(cps - 45)) <= 3


def test_long_tracks_are_partitioned_in_bounded_stretches_then_merged(monkeypatch):
    """A track longer than ``_MAX_STRETCH_STEPS`` is partitioned with stretches of at most that
    many steps (bounded work), then neighbouring stretches are merged: a long track without a
    change comes out whole, and one with changes gets the exact optimum's change points."""
    import spt.segment as seg

    monkeypatch.setattr(seg, "_MAX_STRETCH_STEPS", 150)
    rng = np.random.default_rng(4)
    cfg = SegmentConfig()
    whole = brownian(rng, 700, 0.1, SIGMA_PX)
    assert changepoints(np.arange(700), whole, cfg).size == 0
    # the cap itself: no stretch between consecutive starts is longer than it
    inc = seg._Increments(np.arange(700), whole)
    rho = seg._RHO_GRID
    starts = seg._optimal_partition(
        np.ascontiguousarray(inc.d), inc.n, -2 * rho, 1 + 2 * rho, rho, inc.floor, 5,
        cfg.changepoint_penalty * 5 * np.log(2 * inc.m), seg._PELT_MARGIN, 150,
    )  # fmt: skip
    assert starts.size >= 4
    assert np.diff(np.r_[0, starts, inc.m]).max() <= 150

    a = confined(rng, 260, 1.5, 0.05, SIGMA_PX)
    b = directed(rng, 40, (0.6, 0.3), 0.0, SIGMA_PX, start=a[-1])
    c = brownian(rng, 400, 0.3, SIGMA_PX, start=b[-1])
    xy = np.vstack([a, b, c])
    capped = changepoints(np.arange(len(xy)), xy, cfg)
    monkeypatch.setattr(seg, "_MAX_STRETCH_STEPS", 10**9)
    exact = changepoints(np.arange(len(xy)), xy, cfg)
    assert capped.tolist() == exact.tolist()
    assert np.min(np.abs(capped - 260)) <= 3 and np.min(np.abs(capped - 300)) <= 3


def test_short_confinement_is_decided_on_its_population():
    """Confinement that lasts only 6 relaxation times (r 0.4 um, D 0.02 um^2/s, 360 frames, as
    the simulator's perinuclear stage) often spreads as far as free diffusion would; pooling the
    segments of similar D recovers it without calling free tracks (D 0.25 um^2/s) confined."""
    rng = np.random.default_rng(21)
    conf = [confined(rng, 360, 0.4 / PX, 0.02 * DT / PX**2, SIGMA_PX) for _ in range(8)]
    free = [brownian(rng, 360, 0.25 * DT / PX**2, SIGMA_PX) for _ in range(8)]
    tracks = pd.concat(
        [table(xy, particle=i) for i, xy in enumerate(conf + free)], ignore_index=True
    )
    truth = np.repeat(["confined"] * 8 + ["free"] * 8, 360)

    def accuracy(cfg: SegmentConfig) -> tuple[float, float]:
        out, _ = segment_tracks(tracks, cfg, pixel_size_um=PX, frame_interval_s=DT)
        hit = out["state"].to_numpy() == truth
        return float(hit[: 8 * 360].mean()), float(hit[8 * 360 :].mean())

    pooled = accuracy(SegmentConfig())
    alone = accuracy(SegmentConfig(pool_D_factor=0.0))
    assert pooled[0] >= 0.85 and pooled[1] >= 0.85
    assert pooled[0] > alone[0]

    # Segmenting parts of the table without pooling, then pooling the whole, is one call.
    whole = segment_tracks(tracks, SegmentConfig(), pixel_size_um=PX, frame_interval_s=DT)
    alone_cfg = SegmentConfig(pool_D_factor=0.0)
    parts = [
        segment_tracks(part, alone_cfg, pixel_size_um=PX, frame_interval_s=DT)
        for part in (tracks[tracks["particle"] % 2 == 0], tracks[tracks["particle"] % 2 == 1])
    ]
    joined = [
        pd.concat([p[k] for p in parts])
        .sort_values(["particle"], kind="stable")
        .reset_index(drop=True)
        for k in (0, 1)
    ]
    pooled_parts = pool_confinement(*joined, SegmentConfig())
    pd.testing.assert_frame_equal(pooled_parts[0], whole[0])
    pd.testing.assert_frame_equal(pooled_parts[1], whole[1])


def test_slow_short_runs_are_located_with_the_continuous_stop_and_go_model():
    """Runs of 15 frames at 0.5 um/s (1.25 px against 0.15 px noise) between 30-frame stops:
    a run starts where the stop ends, and using that locates its ends within 3 frames."""
    rng = np.random.default_rng(30)
    parts, states = [], []
    for p in range(12):
        xy, st = stop_and_go(rng, 5, 30, 15, 0.5 * DT / PX, SIGMA_PX)
        parts.append(table(xy, particle=p))
        states.append(st)
    tracks, true_state = pd.concat(parts, ignore_index=True), np.concatenate(states)
    out, _ = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    assert _changepoints_found(out, true_state) >= 0.65


def test_stop_and_go_between_confined_phases_is_cut_out():
    """Membrane binding (confined, D 0.05 um^2/s in r 0.15 um), three stops of 20 frames and
    runs of 10 frames at 0.6 um/s, then perinuclear confinement (D 0.02 um^2/s in r 0.4 um):
    the diffusive phases look like one slow diffusion to the step model of pass 1, so the stops
    and runs must come from the stop-and-go model of pass 2 and its re-cut with movable
    boundaries to the confined neighbours."""
    rng = np.random.default_rng(40)
    parts, states = [], []
    for p in range(8):
        membrane = confined(rng, 90, 0.15 / PX, 0.05 * DT / PX**2)
        sg, sg_state = stop_and_go(rng, 3, 20, 10, 0.6 * DT / PX, 0.0)
        sg = sg + membrane[-1]
        peri = confined(rng, 100, 0.4 / PX, 0.02 * DT / PX**2, start=tuple(sg[-1]))
        xy = np.concatenate([membrane, sg, peri])
        parts.append(table(xy + rng.normal(0, SIGMA_PX, xy.shape), particle=p))
        states.append(np.r_[["confined"] * 90, sg_state, ["confined"] * 100])
    tracks, true_state = pd.concat(parts, ignore_index=True), np.concatenate(states)
    out, _ = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    # 7 changes per track (confined -> stop, 5 inside, run -> confined); before the mixed
    # partition 18 % were found within 3 frames and 13 % of the run points were directed
    assert _changepoints_found(out, true_state) >= 0.6
    run = true_state == "directed"
    assert np.mean(out["state"].to_numpy()[run] == "directed") >= 0.5
