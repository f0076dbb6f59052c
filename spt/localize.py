"""Maximum-likelihood fitting of a pixel-integrated Gaussian PSF, vectorised over many spots.

Owns the PSF model, the Fisher-scoring Newton fit and its Cramer-Rao error bars (Smith et al.,
Nat Methods 2010; Mortensen et al., Nat Methods 2010). Inputs are in effective photons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit
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
        jac.append(
            n[:, None]
            * (dsy[:, :, None] * ex[:, None, :] + ey[:, :, None] * dsx[:, None, :]).reshape(m, -1)
        )
    return mu, np.stack(jac, axis=1)


def fisher_information(mu: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """Poisson Fisher information ``I_ij = sum_k d_i mu_k d_j mu_k / mu_k`` (Smith et al. 2010).

    Parameters
    ----------
    mu : ndarray, shape (n, K)
        Expected counts per pixel (effective photons, read-noise variance added).
    jac : ndarray, shape (n, P, K)
        Derivatives of ``mu`` with respect to the P parameters.
    """
    w = jac / mu[:, None, :]
    return np.einsum("npk,nqk->npq", w, jac)


#: Floating-point licences for the fitting kernels: reassociation lets LLVM vectorise the sums
#: over pixels; NaN/inf semantics are kept (the fits test for non-finite values).
_FAST = {"nsz", "arcp", "contract", "reassoc"}


@njit(cache=True, nogil=True)
def _solve_small(a: np.ndarray, v: np.ndarray, p: int) -> bool:
    """Solve ``a x = v`` in place (v <- x) for a small p x p matrix; False if singular."""
    for k in range(p):
        piv = k
        for r in range(k + 1, p):
            if abs(a[r, k]) > abs(a[piv, k]):
                piv = r
        if a[piv, k] == 0.0 or not np.isfinite(a[piv, k]):
            return False
        if piv != k:
            for c in range(p):
                a[k, c], a[piv, c] = a[piv, c], a[k, c]
            v[k], v[piv] = v[piv], v[k]
        for r in range(k + 1, p):
            f = a[r, k] / a[k, k]
            for c in range(k, p):
                a[r, c] -= f * a[k, c]
            v[r] -= f * v[k]
    for k in range(p - 1, -1, -1):
        acc = v[k]
        for c in range(k + 1, p):
            acc -= a[k, c] * v[c]
        v[k] = acc / a[k, k]
    return True


@njit(cache=True, nogil=True)
def _bounds(info: np.ndarray, work: np.ndarray, unit: np.ndarray, out: np.ndarray) -> bool:
    """Cramer-Rao bounds: ``out[a] = sqrt((info^-1)_aa)``; False if ``info`` is singular.

    ``work`` (p, p) and ``unit`` (p) are scratch space.
    """
    p = info.shape[0]
    for k in range(p):
        work[:, :] = info
        unit[:] = 0.0
        unit[k] = 1.0
        if not _solve_small(work, unit, p):
            return False
        out[k] = math.sqrt(unit[k]) if unit[k] > 0 else np.nan
    return True


@njit(cache=True, nogil=True, fastmath=_FAST)
def _integrals(centre, origin, s, e, de, ds):
    """:func:`pixel_integrals` of the pixels ``origin, origin + 1, ...`` (len(e) of them).

    Each pixel edge's erf and Gaussian are computed once and shared by the two pixels it
    separates (half the transcendental functions of a per-pixel evaluation).
    """
    inv = 1.0 / (math.sqrt(2.0) * s)
    norm = 1.0 / (math.sqrt(2.0 * math.pi) * s)
    lo = origin - 0.5 - centre
    z = lo * inv
    erf_lo = math.erf(z)
    g_lo = math.exp(-z * z)
    for k in range(e.shape[0]):
        hi = lo + 1.0
        z = hi * inv
        erf_hi = math.erf(z)
        g_hi = math.exp(-z * z)
        e[k] = 0.5 * (erf_hi - erf_lo)
        de[k] = (g_lo - g_hi) * norm
        ds[k] = -(hi * g_hi - lo * g_lo) * norm / s
        lo, erf_lo, g_lo = hi, erf_hi, g_hi


@njit(cache=True, nogil=True, fastmath=_FAST)
def _poisson_scoring(jac, mu, data, resid, info, score):
    """Score and Fisher information of a Poisson model (Smith et al. 2010).

    ``jac`` (p, K) holds the derivatives of the expected counts ``mu`` (K) with respect to the
    p parameters and ``data`` (K) the counts. Fills ``score`` (p) and ``info`` (p, p); ``mu``
    is overwritten by ``1 / mu`` and ``resid`` by ``data / mu - 1``. Written as dot products over
    the pixels so that they vectorise.
    """
    p, k = jac.shape
    for j in range(k):
        inv = 1.0 / max(mu[j], 1e-6)
        mu[j] = inv
        resid[j] = data[j] * inv - 1.0
    for a in range(p):
        acc = 0.0
        for j in range(k):
            acc += jac[a, j] * resid[j]
        score[a] = acc
        for q in range(a, p):
            acc = 0.0
            for j in range(k):
                acc += jac[a, j] * jac[q, j] * mu[j]
            info[a, q] = acc
            info[q, a] = acc


@njit(cache=True, nogil=True, fastmath=_FAST)
def _fit_kernel(boxes, extra, ox, oy, x, y, n, b, s, fit_sigma, read_var, n_iter, err, ok):
    m, bsz, _ = boxes.shape
    npix = bsz * bsz
    p = 5 if fit_sigma else 4
    has_extra = extra.shape[0] == m
    ex = np.empty(bsz)
    dex = np.empty(bsz)
    dsx = np.empty(bsz)
    ey = np.empty(bsz)
    dey = np.empty(bsz)
    dsy = np.empty(bsz)
    data = np.empty(npix)
    known = np.empty(npix)
    mu = np.empty(npix)
    resid = np.empty(npix)
    jac = np.empty((p, npix))
    info = np.empty((p, p))
    work = np.empty((p, p))
    score = np.empty(p)
    unit = np.empty(p)
    for i in range(m):
        # read noise is added to both the data and the model (Huang et al. 2013)
        for r in range(bsz):
            for c in range(bsz):
                data[r * bsz + c] = boxes[i, r, c] + read_var
                known[r * bsz + c] = read_var + (extra[i, r, c] if has_extra else 0.0)
        for it in range(n_iter + 1):
            _integrals(x[i], ox[i], s[i], ex, dex, dsx)
            _integrals(y[i], oy[i], s[i], ey, dey, dsy)
            nn, bb = n[i], b[i]
            for r in range(bsz):
                for c in range(bsz):
                    j = r * bsz + c
                    psf = ey[r] * ex[c]
                    mu[j] = known[j] + bb + nn * psf
                    jac[0, j] = nn * ey[r] * dex[c]
                    jac[1, j] = nn * dey[r] * ex[c]
                    jac[2, j] = psf
                    jac[3, j] = 1.0
                    if fit_sigma:
                        jac[4, j] = nn * (dsy[r] * ex[c] + ey[r] * dsx[c])
            _poisson_scoring(jac, mu, data, resid, info, score)
            if it == n_iter:
                ok[i] = _bounds(info, work, unit, err[i])
                break
            work[:, :] = info
            if not _solve_small(work, score, p):
                break
            dx = min(max(score[0], -1.0), 1.0)
            dy = min(max(score[1], -1.0), 1.0)
            x[i] += dx
            y[i] += dy
            n[i] = max(nn + score[2], 0.5 * nn)
            b[i] = max(bb + score[3], 0.5 * bb + 1e-6)
            if fit_sigma:
                s[i] = min(max(s[i] + min(max(score[4], -0.3), 0.3), 0.4), 0.5 * bsz)
            if abs(dx) < 1e-4 and abs(dy) < 1e-4:
                # converged: the information barely changes over so small a step, so its value
                # before the step gives the Cramer-Rao bounds (no extra pass over the pixels)
                ok[i] = _bounds(info, work, unit, err[i])
                break


@njit(cache=True, nogil=True, fastmath=_FAST)
def _group_model(theta, ex, dex, ey, dey, read_var, mu, jac):
    """Expected counts (and, if ``jac`` has rows, their derivatives) of K spots on a window."""
    k_em, bsz = ex.shape
    p = 3 * k_em + 1
    with_jac = jac.shape[0] == p
    b = theta[p - 1] + read_var
    for r in range(bsz):
        for c in range(bsz):
            j = r * bsz + c
            total = b
            for k in range(k_em):
                nk = theta[3 * k + 2]
                psf = ey[k, r] * ex[k, c]
                total += nk * psf
                if with_jac:
                    jac[3 * k, j] = nk * ey[k, r] * dex[k, c]
                    jac[3 * k + 1, j] = nk * dey[k, r] * ex[k, c]
                    jac[3 * k + 2, j] = psf
            if with_jac:
                jac[p - 1, j] = 1.0
            mu[j] = total


@njit(cache=True, nogil=True, fastmath=_FAST)
def _group_kernel(boxes, ox, oy, theta, prior, s, read_var, n_iter, err, ok, loglik):
    m, bsz, _ = boxes.shape
    has_prior = prior.shape[0] == m
    npix = bsz * bsz
    p = theta.shape[1]
    k_em = (p - 1) // 3
    ex = np.empty((k_em, bsz))
    dex = np.empty((k_em, bsz))
    ey = np.empty((k_em, bsz))
    dey = np.empty((k_em, bsz))
    tmp = np.empty(bsz)
    data = np.empty(npix)
    mu = np.empty(npix)
    resid = np.empty(npix)
    jac = np.empty((p, npix))
    no_jac = np.empty((0, npix))
    info = np.empty((p, p))
    work = np.empty((p, p))
    score = np.empty(p)
    unit = np.empty(p)
    for i in range(m):
        for r in range(bsz):
            for c in range(bsz):
                data[r * bsz + c] = boxes[i, r, c] + read_var
        for it in range(n_iter + 1):
            for k in range(k_em):
                _integrals(theta[i, 3 * k], ox[i], s, ex[k], dex[k], tmp)
                _integrals(theta[i, 3 * k + 1], oy[i], s, ey[k], dey[k], tmp)
            _group_model(theta[i], ex, dex, ey, dey, read_var, mu, jac)
            _poisson_scoring(jac, mu, data, resid, info, score)
            if has_prior:
                # Gaussian priors on positions and photons: MAP instead of ML (means, precisions)
                for k in range(k_em):
                    w = prior[i, k, 2]
                    info[3 * k, 3 * k] += w
                    info[3 * k + 1, 3 * k + 1] += w
                    score[3 * k] += w * (prior[i, k, 0] - theta[i, 3 * k])
                    score[3 * k + 1] += w * (prior[i, k, 1] - theta[i, 3 * k + 1])
                    w = prior[i, k, 4]
                    info[3 * k + 2, 3 * k + 2] += w
                    score[3 * k + 2] += w * (prior[i, k, 3] - theta[i, 3 * k + 2])
            if it < n_iter:
                work[:, :] = info
                if not _solve_small(work, score, p):
                    break
                moved = 0.0
                for k in range(k_em):
                    dx = min(max(score[3 * k], -1.0), 1.0)
                    dy = min(max(score[3 * k + 1], -1.0), 1.0)
                    theta[i, 3 * k] += dx
                    theta[i, 3 * k + 1] += dy
                    nk = theta[i, 3 * k + 2]
                    theta[i, 3 * k + 2] = max(nk + score[3 * k + 2], 0.5 * nk)
                    moved = max(moved, abs(dx), abs(dy))
                b = theta[i, p - 1]
                theta[i, p - 1] = max(b + score[p - 1], 0.5 * b + 1e-6)
                if moved >= 1e-4:
                    continue
                # converged: the bounds from the information before this last small step
                for k in range(k_em):
                    _integrals(theta[i, 3 * k], ox[i], s, ex[k], dex[k], tmp)
                    _integrals(theta[i, 3 * k + 1], oy[i], s, ey[k], dey[k], tmp)
            _group_model(theta[i], ex, dex, ey, dey, read_var, mu, no_jac)
            ll = 0.0
            for j in range(npix):
                ll += data[j] * math.log(max(mu[j], 1e-6)) - mu[j]
            loglik[i] = ll
            ok[i] = _bounds(info, work, unit, err[i])
            break


def fit_groups(
    boxes: np.ndarray,
    origin_x: np.ndarray,
    origin_y: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    photons0: np.ndarray,
    background0: np.ndarray,
    sigma: float,
    *,
    read_var: float = 0.0,
    n_iter: int = 15,
    prior_sd: np.ndarray | None = None,
    photons_prior_sd: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit K overlapping spots at once in each window (multi-emitter Poisson MLE or MAP).

    The model is ``mu_k = b + sum_j N_j dE_x(x_j) dE_y(y_j)`` with one shared background per
    window and a fixed PSF width: the single-emitter model of Smith et al. (2010) extended to
    several emitters (as in multi-emitter fitting, Huang et al., Biomed Opt Express 2011).

    Parameters
    ----------
    boxes : ndarray, shape (n, W, W)
        Windows in effective photons.
    origin_x, origin_y : ndarray of int, shape (n,)
        Image column/row of each window's top-left pixel.
    x0, y0, photons0 : ndarray, shape (n, K)
        Starting positions (px) and photons of the K spots of each window.
    background0 : ndarray, shape (n,)
        Starting background per pixel.
    sigma : float
        PSF s.d. in px.
    read_var : float
        Read-noise variance in effective photons squared.
    n_iter : int
        Maximum Fisher-scoring iterations.
    prior_sd : ndarray, shape (n, K), optional
        S.d. (px, per axis) of a Gaussian prior on each spot's position, centred on ``x0, y0``
        (``inf``: none). The estimate is then the maximum a posteriori: where two spots are
        closer than the PSF width the image fixes their summed light and its centroid but
        hardly their separation, and positions known from elsewhere (e.g. a track's spots in
        the frames around) resolve what the image alone cannot.
    photons_prior_sd : ndarray, shape (n, K), optional
        S.d. (effective photons) of a Gaussian prior on each spot's light, centred on
        ``photons0`` (``inf``: none), e.g. a quantum dot's brightness known from its track.

    Returns
    -------
    x, y, photons : ndarray, shape (n, K)
    errors : ndarray, shape (n, K, 3)
        Cramer-Rao s.d. of x, y and photons (from the joint Fisher information, plus the
        prior's information when given).
    ok : ndarray of bool, shape (n,)
    loglik : ndarray, shape (n,)
        Poisson log-likelihood at the estimate (up to a data-only constant), for model selection.
    """
    m, k_em = np.shape(x0)
    theta = np.empty((m, 3 * k_em + 1))
    theta[:, 0:-1:3] = x0
    theta[:, 1:-1:3] = y0
    theta[:, 2:-1:3] = np.maximum(photons0, 1.0)
    theta[:, -1] = np.maximum(background0, 1e-3)
    err = np.full((m, 3 * k_em + 1), np.nan)
    ok = np.zeros(m, bool)
    loglik = np.full(m, -np.inf)
    if prior_sd is None and photons_prior_sd is None:
        prior = np.zeros((0, k_em, 5))
    else:
        prior = np.zeros((m, k_em, 5))
        prior[:, :, 0], prior[:, :, 1], prior[:, :, 3] = x0, y0, photons0
        if prior_sd is not None:
            prior[:, :, 2] = 1.0 / np.maximum(np.asarray(prior_sd, float), 1e-6) ** 2
        if photons_prior_sd is not None:
            prior[:, :, 4] = 1.0 / np.maximum(np.asarray(photons_prior_sd, float), 1e-6) ** 2
    _group_kernel(
        np.ascontiguousarray(boxes, np.float32),
        np.asarray(origin_x, np.int64),
        np.asarray(origin_y, np.int64),
        theta,
        prior,
        float(sigma),
        float(read_var),
        int(n_iter),
        err,
        ok,
        loglik,
    )
    errors = err[:, :-1].reshape(m, k_em, 3)
    ok &= np.isfinite(errors).all(axis=(1, 2))
    return theta[:, 0:-1:3], theta[:, 1:-1:3], theta[:, 2:-1:3], errors, ok, loglik


@njit(cache=True, nogil=True)
def _models_kernel(ox, oy, x, y, n, s, out):
    m, side, _ = out.shape
    ex = np.empty(side)
    ey = np.empty(side)
    unused = np.empty(side)
    for i in range(m):
        _integrals(x[i], ox[i], s[i], ex, unused, unused)
        _integrals(y[i], oy[i], s[i], ey, unused, unused)
        for r in range(side):
            for c in range(side):
                out[i, r, c] = n[i] * ey[r] * ex[c]


def spot_models(
    origin_x: np.ndarray,
    origin_y: np.ndarray,
    side: int,
    x: np.ndarray,
    y: np.ndarray,
    photons: np.ndarray,
    sigma: np.ndarray,
) -> np.ndarray:
    """Each spot's expected photons (no background) in its ``side`` px window, float32 (n, B, B).

    Windows have top-left pixels (``origin_x``, ``origin_y``); the PSF is the pixel-integrated
    Gaussian of :func:`pixel_integrals`.
    """
    out = np.empty((len(x), side, side), np.float32)
    _models_kernel(
        np.asarray(origin_x, np.int64),
        np.asarray(origin_y, np.int64),
        np.asarray(x, np.float64),
        np.asarray(y, np.float64),
        np.asarray(photons, np.float64),
        np.broadcast_to(np.asarray(sigma, np.float64), (len(x),)),
        out,
    )
    return out


@njit(cache=True, nogil=True)
def _light_kernel(order, first, t, ox, oy, models, wt, wox, woy, exclude, out):
    m, wside, _ = out.shape
    side = models.shape[1]
    for i in range(m):
        f = wt[i]
        for jj in range(first[f], first[f + 1]):
            j = order[jj]
            skip = False
            for e in range(exclude.shape[1]):
                skip |= exclude[i, e] == j
            r0, r1 = max(oy[j], woy[i]), min(oy[j] + side, woy[i] + wside)
            c0, c1 = max(ox[j], wox[i]), min(ox[j] + side, wox[i] + wside)
            if skip or r0 >= r1 or c0 >= c1:
                continue
            for yy in range(r0, r1):
                for xx in range(c0, c1):
                    out[i, yy - woy[i], xx - wox[i]] += models[j, yy - oy[j], xx - ox[j]]


def window_light(
    t: np.ndarray,
    origin_x: np.ndarray,
    origin_y: np.ndarray,
    models: np.ndarray,
    window_t: np.ndarray,
    window_x: np.ndarray,
    window_y: np.ndarray,
    side: int,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Light of spots falling in other windows of the same frames (their known model term).

    The same as rendering every spot's model into an image of the movie and cutting the windows
    out of it, without the full-size image: only spots of a window's frame are visited.

    Parameters
    ----------
    t, origin_x, origin_y : ndarray of int, shape (n,)
        Frame and top-left pixel (column, row) of each spot's model window.
    models : ndarray, shape (n, B, B)
        Each spot's expected photons in its window (:func:`spot_models`).
    window_t, window_x, window_y : ndarray of int, shape (m,)
        Frame and top-left pixel of each output window.
    side : int
        Side of the output windows (px).
    exclude : ndarray of int, shape (m, K), or None
        Spots (indices into the n) left out of each window's sum, e.g. the ones being fitted
        there; -1 pads.

    Returns
    -------
    ndarray of float32, shape (m, side, side)
    """
    t = np.asarray(t, np.int64)
    window_t = np.asarray(window_t, np.int64)
    out = np.zeros((len(window_t), side, side), np.float32)
    if len(t) == 0 or len(window_t) == 0:
        return out
    order = np.argsort(t, kind="stable")
    n_frames = int(max(t.max(), window_t.max())) + 1
    first = np.searchsorted(t[order], np.arange(n_frames + 1))
    skip = np.full((len(window_t), 0), -1, np.int64) if exclude is None else exclude
    _light_kernel(
        order,
        first,
        t,
        np.asarray(origin_x, np.int64),
        np.asarray(origin_y, np.int64),
        np.ascontiguousarray(models, np.float32),
        window_t,
        np.asarray(window_x, np.int64),
        np.asarray(window_y, np.int64),
        np.ascontiguousarray(skip, np.int64),
        out,
    )
    return out


@njit(cache=True, nogil=True)
def _cut_kernel(image, t, ox, oy, out):
    side = out.shape[1]
    for i in range(out.shape[0]):
        for r in range(side):
            src = image[t[i], oy[i] + r]
            dst = out[i, r]
            for c in range(side):
                dst[c] = src[ox[i] + c]


def cut_windows(
    image: np.ndarray, t: np.ndarray, origin_x: np.ndarray, origin_y: np.ndarray, side: int
) -> np.ndarray:
    """Copies of ``side`` px square windows of a (T, Y, X) stack: frame ``t[i]``, top-left pixel
    (``origin_y[i]``, ``origin_x[i]``); every window must lie inside the frames."""
    t, ox, oy = (np.asarray(a, np.int64) for a in (t, origin_x, origin_y))
    _, ny, nx = image.shape
    if len(t) and (ox.min() < 0 or oy.min() < 0 or ox.max() + side > nx or oy.max() + side > ny):
        raise ValueError("windows must lie inside the frames")
    out = np.empty((len(t), side, side), image.dtype)
    _cut_kernel(image, t, ox, oy, out)
    return out


@njit(cache=True, nogil=True)
def subtract_windows(image, scale, t, ox, oy, windows):
    """``image -= windows / scale`` for windows (n, B, B) placed at frame ``t[i]``, top-left
    (``oy[i]``, ``ox[i]``) of ``image`` and ``scale`` (T, Y, X); parts outside are dropped."""
    _, ny, nx = image.shape
    side = windows.shape[1]
    for i in range(windows.shape[0]):
        f = t[i]
        for r in range(side):
            yy = oy[i] + r
            if yy < 0 or yy >= ny:
                continue
            for c in range(side):
                xx = ox[i] + c
                if 0 <= xx < nx:
                    image[f, yy, xx] -= windows[i, r, c] / scale[f, yy, xx]


@njit(cache=True, nogil=True)
def _border_median(boxes, out):
    """``out[i]``: median of box ``i``'s border pixels as :func:`numpy.median` gives it (the
    mean of the two middle values in float32; NaN if any is NaN), at least 1e-3."""
    m, bsz, _ = boxes.shape
    inner = max(bsz - 2, 0)
    k = 2 * bsz + 2 * inner
    edge = np.empty(k, np.float32)
    half = k // 2
    for i in range(m):
        j = 0
        for c in range(bsz):
            edge[j] = boxes[i, 0, c]
            edge[j + bsz] = boxes[i, bsz - 1, c]
            j += 1
        j = 2 * bsz
        for r in range(1, bsz - 1):
            edge[j] = boxes[i, r, 0]
            edge[j + inner] = boxes[i, r, bsz - 1]
            j += 1
        e = np.sort(edge)
        if np.isnan(e[k - 1]):
            out[i] = np.nan
            continue
        med = e[half] if k % 2 else (e[half - 1] + e[half]) * np.float32(0.5)
        out[i] = max(np.float64(med), 1e-3)


@njit(cache=True, nogil=True)
def _accept(x, y, n, err, ox, oy, bsz, ok):
    """Keep ``ok[i]`` only for fits inside their box, with finite errors and positive light."""
    for i in range(x.shape[0]):
        finite = True
        for q in range(err.shape[1]):
            if not np.isfinite(err[i, q]):
                finite = False
        inside = ox[i] - 0.5 < x[i] < ox[i] + bsz - 0.5 and oy[i] - 0.5 < y[i] < oy[i] + bsz - 0.5
        ok[i] = ok[i] and finite and inside and n[i] > 0


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
    extra: np.ndarray | None = None,
    photons0: np.ndarray | None = None,
    background0: np.ndarray | None = None,
) -> Fit:
    """Fit a pixel-integrated Gaussian to each box by Poisson maximum likelihood.

    Fisher scoring (Newton's method with the expected Hessian) maximises the Poisson likelihood of
    ``mu_k = b + N dE_x dE_y (+ extra_k)`` (Smith et al., Nat Methods 2010), which reaches the
    Cramer-Rao bound (Mortensen et al. 2010). Read noise of variance ``c`` is handled by adding
    ``c`` to both the data and the model (Huang et al., Nat Methods 2013). Compiled with numba;
    iterations stop early once the position moves less than 1e-4 px, and the Cramer-Rao bounds
    then come from the information of that last iteration.

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
        Maximum number of Fisher-scoring iterations.
    extra : ndarray, shape (n, B, B), or None
        Known expected counts added to the model (light of neighbouring spots in joint fitting).
    photons0, background0 : ndarray or None
        Starting values (default: from the box sum and its border median).

    Returns
    -------
    Fit
    """
    m, bsz, _ = boxes.shape
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    x = np.array(x0, dtype=np.float64)
    y = np.array(y0, dtype=np.float64)
    s = np.empty(m)
    s[:] = sigma
    if background0 is None:
        b = np.empty(m)
        _border_median(boxes, b)
    else:
        b = np.maximum(np.asarray(background0, dtype=np.float64), 1e-3)
    if photons0 is None:
        total = boxes.reshape(m, -1).sum(axis=1, dtype=np.float64)
        n = np.maximum(total - b * bsz * bsz, 1.0)
    else:
        n = np.maximum(np.asarray(photons0, dtype=np.float64), 1.0)
    ext = (
        np.zeros((0, bsz, bsz), np.float32)
        if extra is None
        else np.ascontiguousarray(extra, np.float32)
    )
    p = 5 if fit_sigma else 4
    err = np.full((m, p), np.nan)
    ok = np.zeros(m, bool)
    ox = np.asarray(origin_x, np.int64)
    oy = np.asarray(origin_y, np.int64)
    _fit_kernel(boxes, ext, ox, oy, x, y, n, b, s, fit_sigma, float(read_var), int(n_iter), err, ok)
    _accept(x, y, n, err, ox, oy, bsz, ok)
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
