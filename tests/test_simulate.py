"""The simulator's measured motion, blinking and camera statistics match its parameters."""

import numpy as np
import pandas as pd
import pytest

from spt.schema import MASK_LABELS, STAGES, STATES
from spt.simulate import SimulationConfig, simulate, simulate_tracks

CFG = SimulationConfig(n_frames=400, n_particles=30, seed=11)


@pytest.fixture(scope="module")
def tracks():
    truth, masks = simulate_tracks(CFG)
    return truth, masks


def _runs(truth: pd.DataFrame, column: str):
    """Yield (particle, value, rows) for each run of consecutive frames with one value of column."""
    for pid, g in truth.groupby("particle"):
        key = (g[column] != g[column].shift()) | (g["frame"].diff() != 1)
        for _, run in g.groupby(key.cumsum()):
            yield pid, run[column].iloc[0], run


def test_names_and_columns(tracks):
    truth, masks = tracks
    assert set(truth["stage"]) <= set(STAGES)
    assert set(truth["state"]) <= set(STATES)
    assert {
        "frame",
        "particle",
        "x",
        "y",
        "visible",
        "photons",
        "background",
        "psf_sigma_px",
    } <= set(truth)
    assert set(np.unique(masks)) == set(MASK_LABELS.values())
    assert not truth.duplicated(["particle", "frame"]).any()


def test_every_stage_is_simulated(tracks):
    truth, _ = tracks
    assert set(truth["stage"]) == set(STAGES)


def test_stages_follow_delivery_order(tracks):
    truth, _ = tracks
    order = truth["stage"].map(STAGES.index)
    assert (order.groupby(truth["particle"]).diff().dropna() >= 0).all()


def test_flow_speed_within_configured_range(tracks):
    truth, _ = tracks
    lo, hi = CFG.motion.flow_speed_um_s
    speeds = []
    for _, _, run in _runs(truth, "stage"):
        if run["stage"].iloc[0] == "circulation" and len(run) >= 4:
            dx = np.diff(run["x"].to_numpy())
            speeds.append(dx.mean() * CFG.pixel_size_um / CFG.frame_interval_s)
    speeds = np.array(speeds)
    assert len(speeds) >= 10
    assert speeds.min() > 0.9 * lo and speeds.max() < 1.1 * hi
    assert np.median(speeds) == pytest.approx((lo + hi) / 2, rel=0.25)


def test_extracellular_diffusion_coefficient(tracks):
    truth, _ = tracks
    px, dt = CFG.pixel_size_um, CFG.frame_interval_s
    slopes = []
    d2 = {lag: [] for lag in range(1, 6)}
    for _, stage, run in _runs(truth, "stage"):
        if stage == "extracellular" and len(run) > 10:
            x, y = run["x"].to_numpy() * px, run["y"].to_numpy() * px
            for lag in d2:
                d2[lag].extend((x[lag:] - x[:-lag]) ** 2 + (y[lag:] - y[:-lag]) ** 2)
    msd = np.array([np.mean(d2[lag]) for lag in d2])
    slopes = np.polyfit(np.arange(1, 6) * dt, msd, 1)[0]
    assert slopes / 4 == pytest.approx(CFG.motion.extracellular_D_um2_s, rel=0.25)


def test_membrane_binding_is_confined(tracks):
    truth, _ = tracks
    r = CFG.motion.membrane_radius_um / CFG.pixel_size_um
    n = 0
    for _, stage, run in _runs(truth, "stage"):
        if stage == "membrane_binding" and len(run) > 5:
            x, y = run["x"].to_numpy(), run["y"].to_numpy()
            assert np.hypot(x - x.mean(), y - y.mean()).max() <= 2 * r + 0.05
            n += 1
    assert n > 0


def test_internalisation_runs_and_stops(tracks):
    truth, _ = tracks
    inside = truth[truth["stage"] == "internalization"]
    assert set(inside["state"]) == {"directed", "immobile"}
    lo, hi = CFG.motion.run_speed_um_s
    speeds = []
    for _, state, run in _runs(inside, "state"):
        if state == "directed" and len(run) >= 10:
            x, y = run["x"].to_numpy(), run["y"].to_numpy()
            net = np.hypot(x[-1] - x[0], y[-1] - y[0]) * CFG.pixel_size_um
            speeds.append(net / ((len(run) - 1) * CFG.frame_interval_s))
    assert len(speeds) >= 3
    assert min(speeds) > 0.8 * lo and max(speeds) < 1.1 * hi


def test_stages_lie_in_their_tissue(tracks):
    truth, masks = tracks
    rows = np.clip(np.round(truth["y"]).astype(int), 0, masks.shape[0] - 1)
    cols = np.clip(np.round(truth["x"]).astype(int), 0, masks.shape[1] - 1)
    label = masks[rows, cols]
    by_stage = pd.Series(label).groupby(truth["stage"].to_numpy())
    assert (by_stage.get_group("circulation") == MASK_LABELS["vessel"]).mean() > 0.99
    cellular = np.isin(
        by_stage.get_group("perinuclear"), [MASK_LABELS["cell"], MASK_LABELS["nucleus"]]
    )
    assert cellular.mean() > 0.95
    assert (by_stage.get_group("extracellular") == MASK_LABELS["background"]).mean() > 0.9


def test_blinking_off_periods_are_bounded(tracks):
    truth, _ = tracks
    off_lengths = [len(run) for _, vis, run in _runs(truth, "visible") if not vis]
    assert off_lengths, "blinking produced no off periods"
    assert max(off_lengths) <= CFG.off_max_frames
    assert 0.8 < truth["visible"].mean() < 1.0
    assert (truth.loc[~truth["visible"], "photons"] == 0).all()


def test_same_seed_same_movie_other_seed_differs():
    cfg = SimulationConfig(n_frames=10, n_particles=5, seed=3)
    a, b = simulate(cfg), simulate(cfg)
    np.testing.assert_array_equal(a.movie, b.movie)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    c = simulate(SimulationConfig(n_frames=10, n_particles=5, seed=4))
    assert not np.array_equal(a.movie, c.movie)


def test_camera_background_and_photon_budget():
    cfg = SimulationConfig(
        n_frames=30, n_particles=6, seed=5, blinking=False, stage_weights=(0, 0, 0, 0, 0, 1)
    )
    sim = simulate(cfg)
    cam = cfg.camera
    expected_bg = cam.offset_adu + cfg.background * cam.em_gain / cam.e_per_adu
    assert np.median(sim.movie) == pytest.approx(expected_bg, rel=0.03)
    # Every frame carries the photons of its visible spots (EM gain and ADU conversion undone).
    excess = (cam.photons(sim.movie) - cfg.background).sum(axis=(1, 2))
    expected = (
        sim.truth.groupby("frame")["photons"].sum().reindex(range(cfg.n_frames), fill_value=0)
    )
    assert excess.sum() / expected.sum() == pytest.approx(1.0, abs=0.1)


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError, match="shape"):
        SimulationConfig(shape=(4, 4))
    with pytest.raises(ValueError, match="exposure_fraction"):
        SimulationConfig(exposure_fraction=0)
