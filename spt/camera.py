"""Camera models: converting raw ADU to (effective) photons, and estimating the camera from data.

Owns the noise model that :mod:`spt.localize` fits: Poisson photons, optionally amplified by an
EM gain register (excess-noise factor F^2 = 2), then read noise and an ADU offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Excess-noise factor F^2 of each camera type: 2 for an EM-CCD at high gain (Hirsch et al.,
#: PLoS ONE 2013; Mortensen et al., Nat Methods 2010), 1 for sCMOS and conventional CCDs.
EXCESS_NOISE: dict[str, float] = {"emccd": 2.0, "scmos": 1.0, "ccd": 1.0}


@dataclass(frozen=True)
class Camera:
    """How raw ADU relate to photons.

    Attributes
    ----------
    offset_adu : float
        Mean ADU of a pixel that received no light (bias).
    adu_per_photon : float
        Mean ADU produced by one detected photon: ``em_gain / e_per_adu``.
    excess_noise : float
        Excess-noise factor F^2 (2 for EM-CCD, 1 otherwise).
    read_noise_photons : float
        Read noise expressed in photon units (``read_noise_e / em_gain``); s.d.
    calibrated : bool
        True when the parameters came from the user (so signals can be reported in photons),
        False when they were estimated from the movie itself.
    """

    offset_adu: float
    adu_per_photon: float
    excess_noise: float = 2.0
    read_noise_photons: float = 0.0
    calibrated: bool = True

    def to_effective(self, adu: np.ndarray) -> np.ndarray:
        """Convert ADU to *effective* photons, whose variance equals their mean.

        Dividing photons by the excess-noise factor turns EM-CCD data into Poisson-like counts, so a
        Poisson maximum-likelihood fit on them attains the EM-CCD Cramer-Rao bound, which is the
        Poisson bound times F^2 (Mortensen et al. 2010).

        Parameters
        ----------
        adu : ndarray
            Raw pixel values in ADU.

        Returns
        -------
        ndarray of float32
            Effective photons per pixel.
        """
        scale = 1.0 / (self.adu_per_photon * self.excess_noise)
        out = np.asarray(adu, dtype=np.float32) - np.float32(self.offset_adu)
        out *= np.float32(scale)
        return out

    @property
    def read_var_effective(self) -> float:
        """Read-noise variance in effective-photon units squared."""
        return (self.read_noise_photons / self.excess_noise) ** 2


def camera_from_parameters(
    em_gain: float, e_per_adu: float, offset_adu: float, read_noise_e: float, kind: str
) -> Camera:
    """Build a calibrated :class:`Camera` from datasheet numbers.

    Parameters
    ----------
    em_gain : float
        EM gain (1 for sCMOS/CCD).
    e_per_adu : float
        Electrons per ADU of the analogue-to-digital converter.
    offset_adu : float
        Bias level in ADU.
    read_noise_e : float
        Read noise s.d. in electrons.
    kind : {"emccd", "scmos", "ccd"}
        Camera type, which sets the excess-noise factor.
    """
    return Camera(
        offset_adu=float(offset_adu),
        adu_per_photon=float(em_gain) / float(e_per_adu),
        excess_noise=EXCESS_NOISE[kind],
        read_noise_photons=float(read_noise_e) / float(em_gain),
        calibrated=True,
    )


def estimate_camera(frames: np.ndarray, kind: str = "emccd", max_frames: int = 20) -> Camera:
    """Estimate offset and gain from the movie itself, from noise cumulants of background pixels.

    Photon noise makes each pixel a compound-Poisson variable: with ``b`` photons per pixel and a
    gain of ``g`` ADU per photon, the second and third cumulants are ``k2 = 2 g^2 b`` and
    ``k3 = 6 g^3 b`` for an EM-CCD (exponentially distributed EM gain of each photon; Hirsch et
    al., PLoS ONE 2013), ``k2 = g^2 b`` and ``k3 = g^3 b`` for a shot-noise-limited sCMOS/CCD. So
    ``g = k3 / (3 k2)`` (EM-CCD) or ``k3 / k2``, ``b = k2 / (F^2 g^2)`` and the offset is the mean
    minus ``g b``. Gaussian read noise has no third cumulant; it is neglected in ``k2``, which is
    right for an EM-CCD at gain; for an sCMOS camera give ``offset_adu`` and ``e_per_adu`` instead.
    The cumulants are measured on residuals from a 7 x 7 local mean (so a non-uniform background
    does not matter), away from spots.

    If the estimate is not physical (e.g. a flat, noise-free or clipped image), the result falls
    back to Gaussian noise of the measured variance at the median level, which turns the MLE fit
    into (nearly) unweighted least squares.

    Parameters
    ----------
    frames : ndarray, shape (T, Y, X) or (Y, X)
        Raw movie in ADU (only the first ``max_frames`` frames are used).
    kind : {"emccd", "scmos", "ccd"}
        Camera type.
    max_frames : int
        Frames used for the estimate.

    Returns
    -------
    Camera
        With ``calibrated=False``.
    """
    data = np.asarray(
        frames[:max_frames] if np.ndim(frames) == 3 else frames[None], dtype=np.float64
    )
    f2 = EXCESS_NOISE[kind]
    local = ndimage.uniform_filter(data, (1, 7, 7), mode="reflect")
    resid = (data - local)[:, 3:-3, 3:-3]
    level = local[:, 3:-3, 3:-3]
    # exclude spots: pixels whose 7x7 mean stands out from the frame's robust spread
    med = np.median(level)
    spread = 1.4826 * np.median(np.abs(level - med)) + 1e-12
    smooth_res = ndimage.uniform_filter(resid, (1, 3, 3))
    mad_r = 1.4826 * np.median(np.abs(smooth_res)) + 1e-12
    quiet = (np.abs(level - med) < 4 * spread) & (smooth_res < 3 * mad_r)
    quiet = ndimage.binary_erosion(quiet, np.ones((1, 5, 5), bool))
    r = resid[quiet]
    if r.size < 2:  # a crop too small or too crowded for quiet background: use every pixel
        r = (data - local).ravel()
    n_local = 49.0
    k2 = float(np.mean(r**2)) / (1 - 1 / n_local)
    k3 = float(np.mean(r**3)) / (1 - 3 / n_local)
    mean = float(np.mean(level[quiet])) if quiet.any() else float(np.median(data))
    ratio = 3.0 if kind == "emccd" else 1.0
    if r.size > 1000 and k2 > 0 and k3 > 0:
        g = k3 / (ratio * k2)
        b = k2 / (f2 * g * g)
        offset = mean - g * b
        if b > 0.05 and np.isfinite(offset):
            return Camera(offset_adu=offset, adu_per_photon=g, excess_noise=f2, calibrated=False)
    # Fallback: a flat background of 1e4 effective counts makes Poisson weights ~uniform.
    scale = np.sqrt(max(k2, 1e-12) / 1e4)
    return Camera(
        offset_adu=mean - 1e4 * scale, adu_per_photon=scale / f2, excess_noise=f2, calibrated=False
    )
