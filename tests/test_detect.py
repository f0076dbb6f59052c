"""Detection and localisation against simulator ground truth (detect, localize, camera)."""

import tomllib
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from scipy.special import erf

from spt.camera import estimate_camera
from spt.config import PipelineConfig
from spt.detect import DetectConfig, estimate_psf_sigma, locate, locate_chunks, locate_movie
from spt.errors import SptInputError
from spt.localize import crlb, fit_spots
from spt.metrics import detection_scores, match_spots
from spt.schema import SPOT_COLUMNS
from spt.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(SimulationConfig(shape=(128, 128), n_frames=80, n_particles=12, seed=5))


def _camera_config(sim, **kw) -> DetectConfig:
    cam = sim.camera
    return DetectConfig(
        em_gain=cam.em_gain,
        e_per_adu=cam.e_per_adu,
        offset_adu=cam.offset_adu,
        read_noise_e=cam.read_noise_e,
        **kw,
    )


def _visible_with_spacing(sim) -> pd.DataFrame:
    """Visible true spots with the distance to their nearest visible neighbour (px)."""
    vis = sim.truth[sim.truth["visible"]].reset_index(drop=True)
    nn = np.full(len(vis), np.inf)
    for _, idx in vis.groupby("frame").indices.items():
        if len(idx) > 1:
            p = vis[["x", "y"]].to_numpy()[idx]
            d = np.hypot(*(p[:, None, :] - p[None, :, :]).transpose(2, 0, 1))
            d[np.arange(len(idx)), np.arange(len(idx))] = np.inf
            nn[idx] = d.min(axis=1)
    vis["nn"] = nn
    return vis


@pytest.fixture(scope="module")
def spots(sim):
    return locate_movie(sim.movie, _camera_config(sim))


def test_spots_table_contract(spots):
    assert list(spots.columns) == list(SPOT_COLUMNS)
    assert spots["frame"].dtype == np.int64
    assert spots["frame"].is_monotonic_increasing
    assert (spots[["x_err", "y_err", "sigma", "signal"]] > 0).all().all()


def test_recall_precision_on_resolvable_spots(sim, spots):
    vis = _visible_with_spacing(sim)
    apart = vis[vis["nn"] >= 4]
    m = match_spots(apart, spots)
    assert len(m) / len(apart) >= 0.97
    overall = detection_scores(vis, spots)
    assert overall.precision >= 0.97


def test_precision_reaches_cramer_rao_bound(sim, spots):
    """Isolated spots not in flow: RMSE within 12% of the EM-CCD Cramer-Rao bound."""
    vis = _visible_with_spacing(sim)
    still = vis[(vis["nn"] >= 6) & (vis["stage"] != "circulation")].reset_index(drop=True)
    m = match_spots(still, spots)
    t = still.iloc[m["truth_index"]]
    bound = crlb(t["photons"], t["background"], t["psf_sigma_px"])
    rmse = np.sqrt(np.mean((m["dx"] ** 2 + m["dy"] ** 2) / 2))
    assert len(m) > 300
    assert rmse / np.sqrt(np.mean(bound**2)) < 1.12
    # reported errors are the bound at the estimate: close to the true bound
    found = spots.iloc[m["found_index"]]
    assert np.median(found["x_err"]) / np.median(bound) == pytest.approx(1.0, abs=0.15)


def test_signal_in_photons_with_calibrated_camera(sim, spots):
    vis = _visible_with_spacing(sim)
    still = vis[(vis["nn"] >= 6) & (vis["stage"] != "circulation")].reset_index(drop=True)
    m = match_spots(still, spots)
    ratio = (
        spots["signal"].to_numpy()[m["found_index"]] / still["photons"].to_numpy()[m["truth_index"]]
    )
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)
    assert np.median(spots["background"]) == pytest.approx(sim.config.background, rel=0.1)


def test_camera_and_psf_estimated_from_the_movie(sim):
    cam = estimate_camera(sim.movie)
    assert cam.adu_per_photon == pytest.approx(sim.camera.em_gain / sim.camera.e_per_adu, rel=0.15)
    assert cam.offset_adu == pytest.approx(sim.camera.offset_adu, abs=15)
    assert estimate_psf_sigma(sim.movie, cam) == pytest.approx(sim.config.psf_sigma_px, rel=0.1)


def test_default_config_estimates_camera_and_reports_adu(sim, spots):
    found = locate_movie(sim.movie[:30], DetectConfig())
    vis = sim.truth[sim.truth["visible"] & (sim.truth["frame"] < 30)]
    assert detection_scores(vis, found).recall >= 0.85
    # uncalibrated: background in raw ADU per pixel (offset included)
    expected = (
        sim.camera.offset_adu + sim.config.background * sim.camera.em_gain / sim.camera.e_per_adu
    )
    assert np.median(found["background"]) == pytest.approx(expected, rel=0.1)


def test_centroid_mode_finds_the_same_spots(sim, spots):
    vis = sim.truth[sim.truth["visible"]]
    fast = locate_movie(sim.movie, _camera_config(sim, method="centroid", psf_sigma_px=1.25))
    s_fast, s_mle = detection_scores(vis, fast), detection_scores(vis, spots)
    assert s_fast.recall >= 0.8
    assert s_mle.rmse_px < s_fast.rmse_px


def test_locate_single_frame_matches_movie(sim):
    cfg = _camera_config(sim, psf_sigma_px=1.25, support_frames=1)
    one = locate(sim.movie[7], cfg, frame=7)
    movie = locate_movie(sim.movie[7:8], cfg, start_frame=7)
    assert (one["frame"] == 7).all()
    pd.testing.assert_frame_equal(one, movie)


def test_iterable_input_and_progress(sim):
    calls = []
    cfg = _camera_config(sim, psf_sigma_px=1.25, chunk_frames=8)
    out = locate_movie(
        iter(sim.movie[:20]), cfg, progress=lambda done, total: calls.append((done, total))
    )
    ref = locate_movie(sim.movie[:20], cfg)
    assert calls[-1] == (20, None)
    pd.testing.assert_frame_equal(out, ref)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32])
def test_blank_frames_give_typed_empty_table(dtype):
    out = locate_movie(np.full((3, 32, 32), 100, dtype), DetectConfig())
    assert len(out) == 0
    assert list(out.columns) == list(SPOT_COLUMNS)
    assert out["frame"].dtype == np.int64
    assert len(locate_movie(np.zeros((0, 32, 32), np.uint16))) == 0


def test_bad_input_is_refused():
    with pytest.raises(SptInputError, match="2-D"):
        locate(np.zeros(10))
    bad = np.full((2, 16, 16), 5.0)
    bad[0, 3, 3] = np.nan
    with pytest.raises(SptInputError, match="NaN"):
        locate_movie(bad)
    with pytest.raises(ValueError, match="method"):
        DetectConfig(method="gauss")
    with pytest.raises(ValueError, match="psf_sigma_px"):
        DetectConfig(psf_sigma_px=-1.0)


def test_config_is_toml_round_trip():
    text = PipelineConfig(detect=DetectConfig(psf_sigma_px=1.3, em_gain=300.0)).to_toml()
    back = PipelineConfig.from_dict(tomllib.loads(text))
    assert back.detect.psf_sigma_px == 1.3 and back.detect.em_gain == 300.0
    assert all(
        v is None or isinstance(v, (int, float, str, bool)) for v in asdict(DetectConfig()).values()
    )


def test_mle_fit_reaches_the_bound_on_ideal_spots():
    """MLE on Poisson spots with known parameters: RMSE / CRLB ~ 1 (Smith et al. 2010)."""
    rng = np.random.default_rng(0)
    n, side, sigma, photons, bg = 3000, 9, 1.3, 300.0, 10.0
    true = rng.uniform(3.5, 4.5, (n, 2))
    ar = np.arange(side)
    s2 = np.sqrt(2) * sigma

    def integ(c):
        return 0.5 * (erf((ar - c[:, None] + 0.5) / s2) - erf((ar - c[:, None] - 0.5) / s2))

    mu = bg + photons * integ(true[:, 1])[:, :, None] * integ(true[:, 0])[:, None, :]
    boxes = rng.poisson(mu).astype(np.float32)
    zeros = np.zeros(n, np.int64)
    start = np.full(n, 4.0)
    fit = fit_spots(boxes, zeros, zeros, start, start, sigma)
    assert fit.ok.mean() > 0.99
    rmse = np.sqrt(np.mean((fit.x - true[:, 0]) ** 2))
    bound = crlb(photons, bg, sigma, excess_noise=1.0, box=side)
    assert rmse / bound == pytest.approx(1.0, abs=0.08)
    assert np.median(fit.x_err) / bound == pytest.approx(1.0, abs=0.05)
    assert np.median(fit.photons) == pytest.approx(photons, rel=0.03)


def test_chunked_movie_gives_the_same_spots_however_it_is_cut(sim):
    cfg = DetectConfig()  # camera and PSF estimated once, temporal support across chunks
    whole = locate_movie(sim.movie[:40], cfg)
    for size in (16, 40):
        chunks = ((i, sim.movie[i : min(i + size, 40)]) for i in range(0, 40, size))
        pd.testing.assert_frame_equal(locate_chunks(chunks, cfg), whole)
    with pytest.raises(SptInputError, match="expected 16"):
        locate_chunks([(0, sim.movie[:16]), (20, sim.movie[20:30])], cfg)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_local_maxima_match_a_maximum_filter(radius):
    from scipy import ndimage

    from spt._filters import local_maxima

    rng = np.random.default_rng(radius)
    img = rng.normal(size=(3, 40, 33)).astype(np.float32)
    t, y, x = local_maxima(img, radius, 1.0)
    size = (1, 2 * radius + 1, 2 * radius + 1)
    ref = (img == ndimage.maximum_filter(img, size=size, mode="constant", cval=-np.inf)) & (
        img > 1.0
    )
    assert len(t) > 10
    assert set(zip(t, y, x, strict=True)) == set(zip(*np.nonzero(ref), strict=True))


def _render_spots(shape, spots, bg, sigma, rng):
    """Poisson frame of pixel-integrated Gaussian spots; ``spots`` rows are (x, y, photons)."""
    s2 = np.sqrt(2) * sigma
    ys, xs = np.arange(shape[0]), np.arange(shape[1])
    mu = np.full(shape, float(bg))
    for x, y, n in spots:
        ex = 0.5 * (erf((xs - x + 0.5) / s2) - erf((xs - x - 0.5) / s2))
        ey = 0.5 * (erf((ys - y + 0.5) / s2) - erf((ys - y - 0.5) / s2))
        mu += n * ey[:, None] * ex[None, :]
    return rng.poisson(mu).astype(np.uint16)


def test_pairs_closer_than_three_psf_widths_are_split_and_streaks_are_not():
    """Two emitters 3 px (2.4 sigma) apart are one blob to the band-pass; the 1-vs-2 emitter
    test must split most of them, and must not split one emitter smeared over 3 px by flow.
    200 photons on an ideal camera: the SNR of 400 photons on an EM-CCD (excess noise 2)."""
    rng = np.random.default_rng(7)
    sigma, photons, bg = 1.25, 200.0, 10.0
    frames, pairs, streaks = [], [], []
    for f in range(6):
        spots = []
        for i, cy in enumerate(range(12, 116, 16)):
            for j, cx in enumerate(range(12, 116, 16)):
                kind = (i + j + f) % 4
                if kind == 0:  # a pair 3 px apart, random orientation
                    a = rng.uniform(0, np.pi)
                    d = 1.5 * np.array([np.cos(a), np.sin(a)])
                    pair = [(cx + d[0], cy + d[1], photons), (cx - d[0], cy - d[1], photons)]
                    spots += pair
                    pairs += [(f, x, y) for x, y, _ in pair]
                elif kind == 1:  # one emitter moving 3 px along x during the exposure
                    spots += [(cx + u, cy, photons / 7) for u in np.linspace(-1.5, 1.5, 7)]
                    streaks.append((f, cx, cy))
                else:  # isolated: sets the typical brightness
                    spots.append((cx + rng.uniform(-0.5, 0.5), cy, photons))
        frames.append(_render_spots((128, 128), spots, bg, sigma, rng))
    cfg = DetectConfig(
        em_gain=1.0, e_per_adu=1.0, offset_adu=0.0, camera="scmos", psf_sigma_px=sigma
    )
    found = locate_movie(np.stack(frames), cfg)
    pairs = pd.DataFrame(pairs, columns=["frame", "x", "y"])
    # unsplit, a pair gives one spot between its members, 1.5 px from each: no match
    assert len(match_spots(pairs, found, max_dist=1.0)) / len(pairs) >= 0.75
    near = [
        ((found["frame"] == f) & (np.hypot(found["x"] - x, found["y"] - y) < 4)).sum()
        for f, x, y in streaks
    ]
    assert np.mean(np.array(near) == 1) >= 0.95  # each streak found, as one spot


@pytest.mark.parametrize("shape", [(2, 37, 52), (1, 9, 12)])
def test_bandpass_snr_matches_scipy_filters(shape):
    """The fused compiled band-pass equals Gaussian smoothing minus a box mean (scipy.ndimage,
    mode "reflect") over the shot-noise s.d.; frames smaller than the filters included."""
    from scipy import ndimage

    from spt._filters import bandpass_snr

    rng = np.random.default_rng(4)
    eff = rng.poisson(20.0, shape).astype(np.float32)
    eff[:, shape[1] // 2, shape[2] // 3] += 300.0
    sigma, box, read_var = 1.3, 11, 2.0
    snr, scale = bandpass_snr(eff, sigma, box, read_var)
    # frames smaller than the filters are mirrored out to the filter size first
    py, px = max(0, box - shape[1]), max(0, box - shape[2])
    padded = np.pad(eff.astype(float), ((0, 0), (py, py), (px, px)), mode="symmetric")
    smooth = ndimage.gaussian_filter(padded, (0, sigma, sigma), truncate=3.0, mode="reflect")
    mean = ndimage.uniform_filter(smooth, (1, box, box), mode="reflect")
    smooth = smooth[:, py : py + shape[1], px : px + shape[2]]
    mean = mean[:, py : py + shape[1], px : px + shape[2]]
    ref_scale = np.sqrt(np.maximum(mean, 0) + read_var + 1e-6)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-5)
    np.testing.assert_allclose(snr, (smooth - mean) / ref_scale, atol=2e-5)
    assert snr.max() > 4


@pytest.mark.parametrize("frames", [1, 2, 3, 5])
def test_temporal_support_matches_a_numpy_reference(frames):
    from spt._filters import temporal_support

    rng = np.random.default_rng(frames)
    snr = rng.normal(size=(4, 15, 17)).astype(np.float32)
    snr[:, 7, 8] += 3.0  # a spot that stays put
    k = min(frames, len(snr))
    lo, hi = -((k - 1) // 2), k // 2
    ref = np.empty_like(snr)
    for t in range(len(snr)):
        window = snr[max(0, t + lo) : t + hi + 1]
        summed = window.sum(axis=0) / np.sqrt(len(window)) - 1.0
        ref[t] = np.where(snr[t] < 2.0, snr[t], np.maximum(summed, snr[t]))
    got = temporal_support(snr, frames, 2.0)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    if frames > 1:
        assert got[:, 7, 8].mean() > snr[:, 7, 8].mean() + 0.5
