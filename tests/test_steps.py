"""Tests of spt.steps: step table, per-track features and the step-length mixture fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _motion_sim import brownian, directed, table

from spt.errors import SptInputError
from spt.steps import fit_step_mixture, step_features, step_table, summarize_steps

PX, DT = 0.2, 1 / 30


def test_step_table_is_gap_aware_and_in_physical_units():
    tracks = pd.DataFrame(
        {"frame": [0, 1, 4, 5], "x": [0.0, 1.0, 1.0, 0.0], "y": [0.0, 0.0, 3.0, 3.0], "particle": 7}
    )
    steps = step_table(tracks, pixel_size_um=PX, frame_interval_s=DT)
    assert steps["n_frames"].tolist() == [1, 3, 1]
    np.testing.assert_allclose(steps["step_um"], [0.2, 0.6, 0.2])
    np.testing.assert_allclose(steps["speed_um_s"], [0.2 / DT, 0.6 / (3 * DT), 0.2 / DT])
    # right, then up (+90 deg), then left (+90 deg)
    assert np.isnan(steps["turn_angle_rad"].iloc[0])
    np.testing.assert_allclose(steps["turn_angle_rad"].iloc[1:], [np.pi / 2, np.pi / 2])


def test_step_table_rejects_duplicate_frames_and_handles_empty():
    dup = pd.DataFrame({"frame": [0, 0], "x": [0.0, 1.0], "y": [0.0, 0.0], "particle": 1})
    with pytest.raises(SptInputError, match="same frame"):
        step_table(dup, pixel_size_um=PX, frame_interval_s=DT)
    empty = pd.DataFrame({"frame": [], "x": [], "y": [], "particle": []})
    steps = step_table(empty, pixel_size_um=PX, frame_interval_s=DT)
    assert steps.empty and "speed_um_s" in steps.columns
    assert step_features(empty, pixel_size_um=PX, frame_interval_s=DT).empty


def test_features_separate_runs_from_diffusion():
    rng = np.random.default_rng(0)
    run = table(directed(rng, 100, (0.1, 0.0), 0.0005, 0.02), particle=0)
    walk = table(brownian(rng, 100, 0.2, 0.02), particle=1)
    f = step_features(pd.concat([run, walk]), pixel_size_um=PX, frame_interval_s=DT).set_index(
        "particle"
    )
    assert f.loc[0, "straightness"] > 0.8 > 0.3 > f.loc[1, "straightness"]
    assert f.loc[0, "mean_cos_turn"] > 0.5 and abs(f.loc[1, "mean_cos_turn"]) < 0.3
    assert f.loc[0, "net_speed_um_s"] == pytest.approx(0.1 * PX / DT, rel=0.05)


def test_summarize_steps_by_state():
    rng = np.random.default_rng(1)
    tracks = pd.concat([table(brownian(rng, 50, 0.1), particle=p) for p in range(3)])
    steps = step_table(tracks, pixel_size_um=PX, frame_interval_s=DT)
    steps["state"] = np.where(steps["particle"] == 0, "free", "confined")
    s = summarize_steps(steps, by="state").set_index("state")
    assert s.loc["free", "n_steps"] == 49 and s.loc["confined", "n_steps"] == 98


def test_mixture_recovers_two_populations():
    rng = np.random.default_rng(2)
    D = np.array([0.02, 0.4])  # um^2/s
    n = np.array([3000, 7000])
    sigma = 0.02  # um
    steps = np.concatenate(
        [
            np.hypot(*rng.normal(0, np.sqrt(2 * d * DT + 2 * sigma**2), (2, k)))
            for d, k in zip(D, n, strict=True)
        ]
    )
    mix = fit_step_mixture(steps, frame_interval_s=DT, sigma_um=sigma)
    assert mix.n_components == 2
    np.testing.assert_allclose(mix.D_um2_s, D, rtol=0.15)
    np.testing.assert_allclose(mix.fractions, n / n.sum(), atol=0.04)


def test_mixture_prefers_one_population_when_there_is_one():
    rng = np.random.default_rng(3)
    steps = np.hypot(*rng.normal(0, np.sqrt(2 * 0.25 * DT), (2, 5000)))
    mix = fit_step_mixture(steps, frame_interval_s=DT)
    assert mix.n_components == 1
    assert mix.D_um2_s[0] == pytest.approx(0.25, rel=0.05)
    assert fit_step_mixture(np.array([]), frame_interval_s=DT).n_components == 0
