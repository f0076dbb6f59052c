"""Compiled localisation kernels against simple reference implementations (spt.localize)."""

import numpy as np
import pytest
from scipy.optimize import minimize

from spt.localize import (
    _model,
    fisher_information,
    fit_groups,
    fit_spots,
    pixel_integrals,
    spot_models,
    subtract_windows,
    window_light,
)


def _poisson_boxes(rng, n, side, sigma, photons, bg, offset=0.6):
    """Poisson windows of one pixel-integrated Gaussian each; true centres near the middle."""
    true = side // 2 + rng.uniform(-offset, offset, (n, 2))
    zeros = np.zeros(n, np.int64)
    mu, _ = _model(
        true[:, 0],
        true[:, 1],
        np.full(n, photons),
        np.full(n, bg),
        np.full(n, sigma),
        np.broadcast_to(np.arange(side, dtype=float), (n, side)),
        np.broadcast_to(np.arange(side, dtype=float), (n, side)),
        False,
    )
    boxes = rng.poisson(mu.reshape(n, side, side)).astype(np.float32)
    return boxes, zeros, true


def _neg_loglik(theta, box, sigma, extra):
    """Poisson negative log-likelihood of one spot (x, y, N, b), the reference objective."""
    side = box.shape[0]
    ar = np.arange(side, dtype=float)[None]
    ex, _, _ = pixel_integrals(ar - theta[0], np.array([[sigma]]))
    ey, _, _ = pixel_integrals(ar - theta[1], np.array([[sigma]]))
    mu = theta[3] + theta[2] * ey[0][:, None] * ex[0][None, :] + extra
    return float(np.sum(mu - box * np.log(np.maximum(mu, 1e-12))))


@pytest.mark.parametrize("with_extra", [False, True])
def test_fit_spots_reaches_the_likelihood_maximum_and_fisher_bounds(with_extra):
    """The Newton fit ends where a generic optimiser of the same likelihood ends, and its error
    bars are the inverse Fisher information of the numpy model at the estimate."""
    rng = np.random.default_rng(3)
    n, side, sigma = 12, 9, 1.3
    boxes, zeros, true = _poisson_boxes(rng, n, side, sigma, 250.0, 8.0)
    extra = None
    if with_extra:  # a known neighbour's light in the corner of each window
        yy, xx = np.mgrid[:side, :side]
        extra = np.broadcast_to(
            40.0 * np.exp(-((xx - 8.5) ** 2 + (yy - 8.0) ** 2) / 4), boxes.shape
        )
        boxes = boxes + rng.poisson(extra).astype(np.float32)
    fit = fit_spots(boxes, zeros, zeros, true[:, 0] + 0.3, true[:, 1] - 0.3, sigma, extra=extra)
    assert fit.ok.all()
    for i in range(n):
        known = 0.0 if extra is None else extra[i]
        start = [fit.x[i] + 0.2, fit.y[i] - 0.2, fit.photons[i] * 0.9, fit.background[i] * 1.1]
        ref = minimize(
            _neg_loglik,
            start,
            args=(boxes[i].astype(float), sigma, known),
            method="Nelder-Mead",
            options=dict(xatol=1e-6, fatol=1e-9, maxiter=4000),
        )
        got = _neg_loglik(
            [fit.x[i], fit.y[i], fit.photons[i], fit.background[i]],
            boxes[i].astype(float),
            sigma,
            known,
        )
        assert got <= ref.fun + 1e-6
        assert np.hypot(fit.x[i] - ref.x[0], fit.y[i] - ref.x[1]) < 2e-3
    if extra is None:
        ar = np.broadcast_to(np.arange(side, dtype=float), (n, side))
        mu, jac = _model(
            fit.x, fit.y, fit.photons, fit.background, np.full(n, sigma), ar, ar, False
        )
        cov = np.linalg.inv(fisher_information(mu, jac))
        np.testing.assert_allclose(fit.x_err, np.sqrt(cov[:, 0, 0]), rtol=0.02)
        np.testing.assert_allclose(fit.photons_err, np.sqrt(cov[:, 2, 2]), rtol=0.02)


def test_fit_groups_reaches_the_joint_likelihood_maximum():
    """Two emitters 3 px apart in one window: the joint fit ends at the maximum of the joint
    Poisson likelihood (found again by a generic optimiser)."""
    rng = np.random.default_rng(5)
    side, sigma, n_pairs = 13, 1.25, 6
    ar = np.arange(side, dtype=float)
    boxes, starts, truths = [], [], []
    for _ in range(n_pairs):
        c = 6 + rng.uniform(-0.5, 0.5, 2)
        a = rng.uniform(0, np.pi)
        d = 1.5 * np.array([np.cos(a), np.sin(a)])
        pts = np.array([c + d, c - d])
        mu = np.full((side, side), 6.0)
        for x, y in pts:
            ex, _, _ = pixel_integrals(ar[None] - x, np.array([[sigma]]))
            ey, _, _ = pixel_integrals(ar[None] - y, np.array([[sigma]]))
            mu += 300.0 * ey[0][:, None] * ex[0][None, :]
        boxes.append(rng.poisson(mu))
        starts.append(pts + rng.uniform(-0.3, 0.3, pts.shape))
        truths.append(pts)
    boxes = np.array(boxes, np.float32)
    starts = np.array(starts)
    zeros = np.zeros(n_pairs, np.int64)
    fx, fy, fn, err, ok, loglik = fit_groups(
        boxes,
        zeros,
        zeros,
        starts[:, :, 0],
        starts[:, :, 1],
        np.full((n_pairs, 2), 250.0),
        np.full(n_pairs, 5.0),
        sigma,
    )
    assert ok.all() and np.isfinite(err).all()

    def nll(theta, box):
        mu = np.full((side, side), theta[-1])
        for k in range(2):
            ex, _, _ = pixel_integrals(ar[None] - theta[3 * k], np.array([[sigma]]))
            ey, _, _ = pixel_integrals(ar[None] - theta[3 * k + 1], np.array([[sigma]]))
            mu = mu + theta[3 * k + 2] * ey[0][:, None] * ex[0][None, :]
        return float(np.sum(mu - box * np.log(np.maximum(mu, 1e-12))))

    for i in range(n_pairs):
        theta = [fx[i, 0], fy[i, 0], fn[i, 0], fx[i, 1], fy[i, 1], fn[i, 1], 6.0]
        ref = minimize(
            nll,
            theta,
            args=(boxes[i].astype(float),),
            method="Nelder-Mead",
            options=dict(xatol=1e-7, fatol=1e-10, maxiter=20000, maxfev=20000),
        )
        # the background of theta is a guess: compare the optimiser's end with the fit's end
        theta[-1] = ref.x[-1]
        assert nll(theta, boxes[i].astype(float)) <= ref.fun + 1e-3
        assert np.abs(np.array(theta[:6]) - ref.x[:6])[[0, 1, 3, 4]].max() < 5e-3
        # the reported log-likelihood is the model's at the estimate (up to a data constant)
        d = boxes[i].astype(float)
        assert loglik[i] == pytest.approx(-nll(ref.x, d), abs=1e-3)
        found = np.column_stack([fx[i], fy[i]])
        dist = np.hypot(*(found[:, None] - truths[i][None]).transpose(2, 0, 1))
        assert min(dist[0, 0] + dist[1, 1], dist[0, 1] + dist[1, 0]) < 1.5


def _random_spots(rng, n, n_frames, shape, side):
    t = rng.integers(0, n_frames, n)
    ox = rng.integers(0, shape[1] - side + 1, n)
    oy = rng.integers(0, shape[0] - side + 1, n)
    x = ox + side // 2 + rng.uniform(-1, 1, n)
    y = oy + side // 2 + rng.uniform(-1, 1, n)
    return t, ox, oy, x, y, rng.uniform(50, 500, n), rng.uniform(1.0, 1.8, n)


def test_spot_models_match_pixel_integrals():
    rng = np.random.default_rng(0)
    _, ox, oy, x, y, n, s = _random_spots(rng, 30, 1, (40, 40), 9)
    ar = np.arange(9)
    ex, _, _ = pixel_integrals(ox[:, None] + ar - x[:, None], s[:, None])
    ey, _, _ = pixel_integrals(oy[:, None] + ar - y[:, None], s[:, None])
    ref = n[:, None, None] * ey[:, :, None] * ex[:, None, :]
    got = spot_models(ox, oy, 9, x, y, n, s)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_window_light_equals_cutting_windows_from_a_rendered_movie():
    """Summing the models of a frame's spots over each window is the same as rendering every
    spot into a movie and cutting the windows out, leaving out the excluded spots."""
    rng = np.random.default_rng(1)
    shape, n_frames, side, wside = (40, 50), 3, 9, 13
    t, ox, oy, x, y, n, s = _random_spots(rng, 60, n_frames, shape, side)
    models = spot_models(ox, oy, side, x, y, n, s)
    m = 40
    wt = rng.integers(0, n_frames, m)
    wx = rng.integers(0, shape[1] - wside + 1, m)
    wy = rng.integers(0, shape[0] - wside + 1, m)
    exclude = rng.integers(-1, len(t), (m, 2))
    got = window_light(t, ox, oy, models, wt, wx, wy, wside, exclude=exclude)
    for i in range(m):
        image = np.zeros(shape)
        for j in range(len(t)):
            if t[j] == wt[i] and j not in exclude[i]:
                image[oy[j] : oy[j] + side, ox[j] : ox[j] + side] += models[j]
        ref = image[wy[i] : wy[i] + wside, wx[i] : wx[i] + wside]
        np.testing.assert_allclose(got[i], ref, atol=1e-3)
    assert np.abs(got).sum() > 0
    empty = window_light(t[:0], ox[:0], oy[:0], models[:0], wt, wx, wy, wside)
    assert empty.shape == (m, wside, wside) and not empty.any()


def test_subtract_windows_matches_a_dense_reference():
    """Windows divided by the scale map are subtracted in place; parts outside are dropped."""
    rng = np.random.default_rng(2)
    shape = (2, 20, 24)
    image = rng.normal(size=shape).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    n, side = 15, 7
    t = rng.integers(0, 2, n)
    ox = rng.integers(-3, 22, n)  # some windows stick out of the frame
    oy = rng.integers(-3, 18, n)
    windows = rng.uniform(0, 5, (n, side, side)).astype(np.float32)
    padded = np.zeros((2, 20 + 2 * side, 24 + 2 * side))
    for i in range(n):
        padded[t[i], oy[i] + side : oy[i] + 2 * side, ox[i] + side : ox[i] + 2 * side] += windows[i]
    ref = image - padded[:, side:-side, side:-side] / scale
    subtract_windows(image, scale, t, ox, oy, windows)
    np.testing.assert_allclose(image, ref, atol=1e-5)


def test_cut_windows_copies_the_windows_and_refuses_outside_ones():
    from spt.localize import cut_windows

    movie = np.arange(2 * 12 * 15, dtype=np.float32).reshape(2, 12, 15)
    t, ox, oy = np.array([0, 1, 1]), np.array([0, 10, 3]), np.array([7, 0, 2])
    got = cut_windows(movie, t, ox, oy, 5)
    for i in range(3):
        np.testing.assert_array_equal(got[i], movie[t[i], oy[i] : oy[i] + 5, ox[i] : ox[i] + 5])
    assert got.dtype == np.float32
    with pytest.raises(ValueError, match="inside"):
        cut_windows(movie, t, ox + 1, oy, 5)


def test_fit_groups_with_priors_reaches_the_posterior_maximum_and_resolves_a_close_pair():
    """Two emitters 1.0 px apart (PSF s.d. 1.25 px): with Gaussian priors on the positions
    (s.d. 0.3 px, centred 0.2 px off the truth) and on the light, the fit ends at the maximum
    of likelihood x prior (found again by a generic optimiser) and both positions are within
    0.35 px of the truth, where the free fit need not be."""
    rng = np.random.default_rng(7)
    side, sigma, n_pairs, sd = 13, 1.25, 6, 0.3
    ar = np.arange(side, dtype=float)
    boxes, starts, truths = [], [], []
    for _ in range(n_pairs):
        c = 6 + rng.uniform(-0.5, 0.5, 2)
        a = rng.uniform(0, np.pi)
        d = 0.5 * np.array([np.cos(a), np.sin(a)])
        pts = np.array([c + d, c - d])
        mu = np.full((side, side), 6.0)
        for x, y in pts:
            ex, _, _ = pixel_integrals(ar[None] - x, np.array([[sigma]]))
            ey, _, _ = pixel_integrals(ar[None] - y, np.array([[sigma]]))
            mu += 400.0 * ey[0][:, None] * ex[0][None, :]
        boxes.append(rng.poisson(mu))
        off = rng.normal(0, 1, pts.shape)
        starts.append(pts + 0.2 * off / np.linalg.norm(off, axis=1, keepdims=True))
        truths.append(pts)
    boxes = np.array(boxes, np.float32)
    starts, truths = np.array(starts), np.array(truths)
    zeros = np.zeros(n_pairs, np.int64)
    n0 = np.full((n_pairs, 2), 400.0)
    fx, fy, fn, err, ok, _ = fit_groups(
        boxes,
        zeros,
        zeros,
        starts[:, :, 0],
        starts[:, :, 1],
        n0,
        np.full(n_pairs, 6.0),
        sigma,
        prior_sd=np.full((n_pairs, 2), sd),
        photons_prior_sd=0.3 * n0,
    )
    assert ok.all() and np.isfinite(err).all()

    def neg_post(theta, box, start):
        mu = np.full((side, side), theta[-1])
        for k in range(2):
            ex, _, _ = pixel_integrals(ar[None] - theta[3 * k], np.array([[sigma]]))
            ey, _, _ = pixel_integrals(ar[None] - theta[3 * k + 1], np.array([[sigma]]))
            mu = mu + theta[3 * k + 2] * ey[0][:, None] * ex[0][None, :]
        nll = float(np.sum(mu - box * np.log(np.maximum(mu, 1e-12))))
        for k in range(2):
            nll += ((theta[3 * k] - start[k, 0]) ** 2 + (theta[3 * k + 1] - start[k, 1]) ** 2) / (
                2 * sd**2
            )
            nll += (theta[3 * k + 2] - 400.0) ** 2 / (2 * 120.0**2)
        return nll

    for i in range(n_pairs):
        theta = [fx[i, 0], fy[i, 0], fn[i, 0], fx[i, 1], fy[i, 1], fn[i, 1], 6.0]
        box = boxes[i].astype(float)
        ref = minimize(
            neg_post,
            theta,
            args=(box, starts[i]),
            method="Nelder-Mead",
            options=dict(xatol=1e-7, fatol=1e-10, maxiter=20000, maxfev=20000),
        )
        theta[-1] = ref.x[-1]
        assert neg_post(theta, box, starts[i]) <= ref.fun + 1e-3
        assert np.abs(np.array(theta[:6]) - ref.x[:6])[[0, 1, 3, 4]].max() < 5e-3
    dist = np.hypot(fx - truths[:, :, 0], fy - truths[:, :, 1])
    assert dist.max() < 0.35
