"""Maximum-likelihood fitting of a pixel-integrated Gaussian PSF, vectorised over many spots.

Owns the PSF model, the Fisher-scoring Newton fit and its Cramer-Rao error bars (Smith et al.,
Nat Methods 2010; Mortensen et al., Nat Methods 2010). Inputs are in effective photons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

_SQRT2 = np.sqrt(2.0)
_SQRT2PI = np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class Fit:
    """Fitted parameters of ``n`` spots (arrays of length ``n``; positions in image pixels).

    ``x``/``y`` are pixel coordinates (x = column), ``photons`` the integrated signal and
    ``background`` the per-pixel background, both in the input's units; ``sigma`` the PSF s.d. in
    px; ``*_err`` the square root of the diagonal of the inverse Fisher information (Cramer-Rao
    bound at the estimate); ``ok`` whether the fit converged to finite, physical values.
    """

    x: np.ndarray
    y: np.ndarray
    photons: np.ndarray
    background: np.ndarray
    sigma: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    photons_err: np.ndarray
    ok: np.ndarray


def pixel_integrals(u: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of a 1-D Gaussian falling in each pixel, and its derivatives.

    ``dE(u) = 0.5 [erf((u + 1/2) / (sqrt(2) s)) - erf((u - 1/2) / (sqrt(2) s))]`` where ``u`` is the
    pixel centre minus the spot centre, in px (Smith et al. 2010, Eq. 3).

    Parameters
    ----------
    u : ndarray, shape (n, B)
        Pixel centre minus spot centre (px).
    sigma : ndarray, shape (n, 1)
        Gaussian s.d. (px).

    Returns
    -------
    e, de_dcentre, de_dsigma : ndarray, shape (n, B)
        The integral, its derivative with respect to the spot centre, and with respect to sigma.
    """
    hi = u + 0.5
    lo = u - 0.5
    inv = 1.0 / (_SQRT2 * sigma)
    e = 0.5 * (erf(hi * inv) - erf(lo * inv))
    g_hi = np.exp(-0.5 * (hi / sigma) ** 2)
    g_lo = np.exp(-0.5 * (lo / sigma) ** 2)
    de_dc = (g_lo - g_hi) / (_SQRT2PI * sigma)
    de_ds = -(hi * g_hi - lo * g_lo) / (_SQRT2PI * sigma**2)
    return e, de_dc, de_ds


def _model(
    x: np.ndarray,
    y: np.ndarray,
    n: np.ndarray,
    b: np.ndarray,
    s: np.ndarray,
    cols: np.ndarray,
    rows: np.ndarray,
    fit_sigma: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected counts ``mu`` (n, B*B) and Jacobian (n, P, B*B) for parameters x, y, N, b[, s]."""
    ex, dex, dsx = pixel_integrals(cols - x[:, None], s[:, None])
    ey, dey, dsy = pixel_integrals(rows - y[:, None], s[:, None])
    m = len(x)
    psf = (ey[:, :, None] * ex[:, None, :]).reshape(m, -1)
    mu = b[:, None] + n[:, None] * psf
    jac = [
        n[:, None] * (ey[:, :, None] * dex[:, None, :]).reshape(m, -1),
        n[:, None] * (dey[:, :, None] * ex[:, None, :]).reshape(m, -1),
        psf,
        np.ones_like(psf),
    ]
    if fit_sigma:
        jac.append(n[:, None] * (dsy[:, :, None] * ex[:, None, :] + ey[:, :, None] * dsx[:, None, :]).reshape(m, -1))
    return mu, np.stack(jac, axis=1)


def fisher_information(mu: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """Poisson Fisher information ``I_ij = sum_k d_i mu_k d_j mu_k / mu_k`` (Smith et al. 2010, Eq. 9).

    Parameters
    ----------
    mu : ndarray, shape (n, K)
        Expected counts per pixel (effective photons, read-noise variance added).
    jac : ndarray, shape (n, P, K)
        Derivatives of ``mu`` with respect to the P parameters.
    """
    w = jac / mu[:, None, :]
    return np.einsum("npk,nqk->npq", w, jac)


def fit_spots(
    boxes: np.ndarray,
    origin_x: np.ndarray,
    origin_y: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    sigma: float | np.ndarray,
    *,
    fit_sigma: bool = False,
    read_var: float = 0.0,
    n_iter: int = 10,
) -> Fit:
    """Fit a pixel-integrated Gaussian to each box by Poisson maximum likelihood.

    Fisher scoring (Newton's method with the expected Hessian) maximises the Poisson likelihood of
    ``mu_k = b + N dE_x dE_y`` (Smith et al., Nat Methods 2010), which reaches the Cramer-Rao bound
    (Mortensen et al. 2010). Read noise of variance ``c`` is handled by adding ``c`` to both the data
    and the model (Huang et al., Nat Methods 2013). All boxes are fitted at once with numpy.

    Parameters
    ----------
    boxes : ndarray, shape (n, B, B)
        Pixel values in effective photons (variance equal to mean, see :mod:`spt.camera`).
    origin_x, origin_y : ndarray of int, shape (n,)
        Image column/row of each box's top-left pixel.
    x0, y0 : ndarray, shape (n,)
        Starting positions in image px.
    sigma : float or ndarray
        PSF s.d. in px (fixed, or starting value when ``fit_sigma``).
    fit_sigma : bool
        Also fit the PSF width.
    read_var : float
        Read-noise variance in effective photons squared.
    n_iter : int
        Number of Fisher-scoring iterations.

    Returns
    -------
    Fit
    """
    m, bsz, _ = boxes.shape
    data = boxes.reshape(m, -1).astype(np.float64) + read_var
    ar = np.arange(bsz, dtype=np.float64)
    cols = origin_x[:, None].astype(np.float64) + ar[None, :]
    rows = origin_y[:, None].astype(np.float64) + ar[None, :]
    x = np.asarray(x0, dtype=np.float64).copy()
    y = np.asarray(y0, dtype=np.float64).copy()
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (m,)).copy()
    edge = np.concatenate(
        [boxes[:, 0, :], boxes[:, -1, :], boxes[:, 1:-1, 0], boxes[:, 1:-1, -1]], axis=1
    )
    b = np.maximum(np.median(edge, axis=1).astype(np.float64), 1e-3)
    n = np.maximum(data.sum(axis=1) - (b + read_var) * bsz * bsz, 1.0)
    floor = 1e-6
    npar = 5 if fit_sigma else 4
    eye = np.eye(npar) * 1e-9
    for _ in range(n_iter):
        mu, jac = _model(x, y, n, b, s, cols, rows, fit_sigma)
        mu = np.maximum(mu + read_var, floor)
        score = np.einsum("npk,nk->np", jac, data / mu - 1.0)
        info = fisher_information(mu, jac) + eye
        try:
            step = np.linalg.solve(info, score[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.zeros_like(score)
        step = np.where(np.isfinite(step), step, 0.0)
        x += np.clip(step[:, 0], -1.0, 1.0)
        y += np.clip(step[:, 1], -1.0, 1.0)
        n = np.maximum(n + step[:, 2], 0.5 * n)
        b = np.maximum(b + step[:, 3], 0.5 * b + floor)
        if fit_sigma:
            s = np.clip(s + np.clip(step[:, 4], -0.3, 0.3), 0.4, 0.5 * bsz)
    mu, jac = _model(x, y, n, b, s, cols, rows, fit_sigma)
    mu = np.maximum(mu + read_var, floor)
    info = fisher_information(mu, jac) + eye
    det_ok = np.abs(np.linalg.det(info)) > 0
    cov = np.full_like(info, np.nan)
    if det_ok.any():
        cov[det_ok] = np.linalg.inv(info[det_ok])
    var = np.diagonal(cov, axis1=1, axis2=2)
    with np.errstate(invalid="ignore"):
        err = np.sqrt(var)
    inside = (
        (x > cols[:, 0] - 0.5) & (x < cols[:, -1] + 0.5) & (y > rows[:, 0] - 0.5) & (y < rows[:, -1] + 0.5)
    )
    ok = det_ok & np.isfinite(err).all(axis=1) & inside & (n > 0)
    return Fit(x, y, n, b, s, err[:, 0], err[:, 1], err[:, 2], ok)


def crlb(
    photons: np.ndarray,
    background: np.ndarray,
    sigma: np.ndarray,
    *,
    excess_noise: float = 2.0,
    box: int = 11,
    offset: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Cramer-Rao lower bound on the x precision (px) of a pixelated Gaussian spot.

    Exact Fisher information of the 4-parameter model (x, y, N, b) with known sigma, for Poisson
    data multiplied by the EM-CCD excess-noise factor F^2 (Mortensen et al. 2010: the EM-CCD
    variance is F^2 = 2 times the Poisson one). Used by the benchmark to score RMSE / CRLB.

    Parameters
    ----------
    photons : ndarray
        Expected photons in the spot.
    background : ndarray
        Expected background photons per pixel.
    sigma : ndarray
        PSF s.d. in px.
    excess_noise : float
        F^2 (2 for EM-CCD, 1 for sCMOS).
    box : int
        Side of the (odd) fitting window in px.
    offset : (ndarray, ndarray) or None
        Sub-pixel position (x, y) of the spot relative to the box centre; default centred.

    Returns
    -------
    ndarray
        s.d. bound for x in px (same shape as ``photons``).
    """
    photons, background, sigma = np.broadcast_arrays(
        np.asarray(photons, float), np.asarray(background, float), np.asarray(sigma, float)
    )
    shape = photons.shape
    nn = photons.ravel() / excess_noise
    bb = background.ravel() / excess_noise
    ss = sigma.ravel()
    m = len(nn)
    ar = np.arange(box, dtype=float) - box // 2
    cols = np.broadcast_to(ar, (m, box))
    dx = np.zeros(m) if offset is None else np.asarray(offset[0], float).ravel()
    dy = np.zeros(m) if offset is None else np.asarray(offset[1], float).ravel()
    mu, jac = _model(dx, dy, nn, bb, ss, cols, cols, False)
    cov = np.linalg.inv(fisher_information(np.maximum(mu, 1e-12), jac))
    return np.sqrt(cov[:, 0, 0]).reshape(shape)
