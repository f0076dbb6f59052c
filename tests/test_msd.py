"""Tests of spt.msd: gap-aware MSD curves and model fits against tracks of known motion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _motion_sim import brownian, confined, directed, fbm, table

from spt.errors import SptInputError
from spt.msd import (
    emsd,
    fit_fbm,
    fit_msd,
    fit_msd_models,
    imsd,
    msd_curve,
    optimal_n_lags,
    track_msd_fits,
)

PX, DT = 0.2, 1 / 30  # um, s


def test_msd_curve_counts_lags_in_frames_not_rows():
    # frames 0, 1, 3: the pair (1, 3) is lag 2, not lag 1 (trackpy issue #598)
    lags, msd, n = msd_curve(np.array([0, 1, 3]), np.array([0.0, 1.0, 3.0]), np.zeros(3), 5)
    assert lags.tolist() == [1, 2, 3]
    assert msd.tolist() == [1.0, 4.0, 9.0]
    assert n.tolist() == [1, 1, 1]


def test_blinking_gaps_do_not_bias_msd():
    rng = np.random.default_rng(0)
    D = 0.05  # px^2/frame
    msds, row_offset = [], []
    for _ in range(10):
        xy = brownian(rng, 1000, D)
        keep = rng.uniform(size=1000) > 0.4  # 40 % of frames lost
        lags, msd, _ = msd_curve(np.arange(1000)[keep], xy[keep, 0], xy[keep, 1], 5)
        msds.append(msd)
        row_offset.append(np.mean(np.sum(np.diff(xy[keep], axis=0) ** 2, axis=1)))
    expected = 4 * D * (lags - 1 / 3)  # motion blur R = 1/6 of the generator
    np.testing.assert_allclose(np.mean(msds, axis=0), expected, rtol=0.08)
    # the row-offset MSD that ignores gaps is biased high at lag 1
    assert np.mean(row_offset) > 1.3 * np.mean(msds, axis=0)[0]


def test_imsd_emsd_units_and_columns():
    rng = np.random.default_rng(1)
    tracks = pd.concat([table(brownian(rng, 200, 0.2), particle=p) for p in range(5)])
    per = imsd(tracks, pixel_size_um=PX, frame_interval_s=DT, max_lag=20)
    assert list(per.columns) == ["particle", "lag", "lag_s", "msd_um2", "n_pairs"]
    assert per["particle"].nunique() == 5
    ens = emsd(tracks, pixel_size_um=PX, frame_interval_s=DT, max_lag=20)
    assert ens["n_tracks"].eq(5).all()
    np.testing.assert_allclose(ens["lag_s"], np.arange(1, 21) * DT)
    D_um2_s = 0.2 * PX**2 / DT
    slope = np.polyfit(ens["lag_s"][:10], ens["msd_um2"][:10], 1)[0]
    assert slope / 4 == pytest.approx(D_um2_s, rel=0.15)


def test_empty_and_degenerate_input():
    empty = pd.DataFrame({"frame": [], "x": [], "y": [], "particle": []})
    assert imsd(empty, pixel_size_um=PX, frame_interval_s=DT).empty
    assert list(emsd(empty, pixel_size_um=PX, frame_interval_s=DT).columns)[:3] == [
        "lag",
        "lag_s",
        "msd_um2",
    ]
    one = pd.DataFrame({"frame": [0], "x": [1.0], "y": [1.0], "particle": [3]})
    fits = track_msd_fits(one, pixel_size_um=PX, frame_interval_s=DT)
    assert fits["particle"].tolist() == [3]
    with pytest.raises(SptInputError, match="missing column"):
        imsd(pd.DataFrame({"x": [1.0]}), pixel_size_um=PX, frame_interval_s=DT)
    with pytest.raises(SptInputError, match="pixel_size_um"):
        imsd(one, pixel_size_um=0, frame_interval_s=DT)


def _fit(xy, model, max_lag=None):
    n = len(xy)
    lags, msd, _ = msd_curve(np.arange(n), xy[:, 0], xy[:, 1], max_lag or n // 4)
    return fit_msd(lags * DT, msd * PX**2, model, n_points=n, frame_interval_s=DT, lags=lags)


def test_free_fit_recovers_D_and_noise():
    rng = np.random.default_rng(2)
    D = 0.25  # um^2/s
    sigma = 0.03  # um
    Ds, sigmas = [], []
    for _ in range(20):
        xy = brownian(rng, 200, D * DT / PX**2, sigma / PX)
        lags, msd, _ = msd_curve(np.arange(200), xy[:, 0], xy[:, 1], 10)
        f = fit_msd(
            lags[:4] * DT, msd[:4] * PX**2, "free", n_points=200, frame_interval_s=DT, lags=lags[:4]
        )
        Ds.append(f.D_um2_s)
        sigmas.append(f.sigma_um)
    assert np.median(Ds) == pytest.approx(D, rel=0.1)
    assert np.nanmedian(sigmas) == pytest.approx(sigma, rel=0.3)


def test_directed_and_confined_fits_recover_v_and_radius():
    rng = np.random.default_rng(3)
    v = 1.0  # um/s
    run = directed(rng, 300, (v * DT / PX, 0.0), 0.01 * DT / PX**2, 0.1)
    assert _fit(run, "directed").speed_um_s == pytest.approx(v, rel=0.1)
    r = 0.3  # um
    radii = [
        _fit(confined(rng, 400, r / PX, 0.1 * DT / PX**2, 0.1), "confined").confinement_radius_um
        for _ in range(5)
    ]
    assert np.median(radii) == pytest.approx(r, rel=0.2)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("immobile", "immobile"), ("directed", "directed"), ("confined", "confined")],
)
def test_bic_model_choice(kind, expected):
    rng = np.random.default_rng(4)
    xy = {
        "immobile": lambda: directed(rng, 300, (0.0, 0.0), 0.0, 0.1),
        "directed": lambda: directed(rng, 300, (0.1, 0.05), 0.01, 0.1),
        "confined": lambda: confined(rng, 300, 0.75, 0.1, 0.1),
    }[kind]()
    lags, msd, _ = msd_curve(np.arange(300), xy[:, 0], xy[:, 1], 100)
    best, fits = fit_msd_models(lags, msd * PX**2, n_points=300, frame_interval_s=DT)
    assert best.model == expected
    assert set(fits) == {"immobile", "free", "anomalous", "directed", "confined"}


def test_optimal_n_lags_grows_with_reduced_error():
    ps = [optimal_n_lags(1000, x) for x in (0.0, 0.1, 1.0, 10.0, 100.0)]
    assert ps[0] == 2
    assert ps == sorted(ps) and ps[-1] > ps[1]
    assert optimal_n_lags(12, 100.0) == 4  # capped at a third of the track


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5])
def test_fbm_likelihood_recovers_alpha(alpha):
    rng = np.random.default_rng(5)
    est = [fit_fbm(np.arange(150), *fbm(rng, 150, alpha, 0.5, 0.2).T)[1] for _ in range(8)]
    assert np.mean(est) == pytest.approx(alpha, abs=0.15)


def test_fbm_likelihood_handles_gaps():
    rng = np.random.default_rng(6)
    xy = fbm(rng, 150, 0.6, 0.5, 0.1)
    keep = np.sort(rng.choice(150, 100, replace=False))
    K, alpha, sigma = fit_fbm(keep, xy[keep, 0], xy[keep, 1])
    assert alpha == pytest.approx(0.6, abs=0.2)
    assert K == pytest.approx(0.5, rel=0.5)


def test_fbm_toeplitz_and_general_likelihoods_agree():
    """The O(n^2) Durbin-Levinson likelihood (no gaps) equals the general Cholesky one."""
    from spt.msd import _fbm_nll

    rng = np.random.default_rng(7)
    d = np.ascontiguousarray(np.diff(fbm(rng, 60, 0.7, 0.5, 0.2), axis=0))
    t = np.arange(60, dtype=float)
    for alpha, log_lam in ((0.3, -2.0), (1.0, 0.0), (1.8, -5.0)):
        fast = _fbm_nll(alpha, log_lam, t, d, True)
        general = _fbm_nll(alpha, log_lam, t, d, False)
        assert fast == pytest.approx(general, rel=1e-9, abs=1e-9)


def test_fbm_fit_uses_a_long_gap_free_stretch():
    """One blink near the end of a long track: alpha from the gap-free part, as without the gap."""
    rng = np.random.default_rng(8)
    xy = fbm(rng, 200, 1.4, 0.5, 0.2)
    keep = np.r_[0:190, 192:200]
    K, alpha, _ = fit_fbm(keep, xy[keep, 0], xy[keep, 1])
    assert alpha == pytest.approx(fit_fbm(np.arange(190), *xy[:190].T)[1], abs=1e-6)
    assert alpha == pytest.approx(1.4, abs=0.2) and K == pytest.approx(0.5, rel=0.5)
