"""Tissue masks from a second channel: threshold a vessel dye (or cell / nuclear stain) image.

The result is the label image :func:`spt.stages.classify_stages` takes: 0 background,
1 vessel lumen, 2 cell, 3 nucleus (:data:`spt.schema.MASK_LABELS`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from spt.errors import SptInputError
from spt.schema import MASK_LABELS

__all__ = ["label_image", "masks_from_channels", "threshold_mask"]


def threshold_mask(
    image: np.ndarray,
    *,
    threshold: float | None = None,
    smooth_sigma_px: float = 1.0,
    min_size_px: int = 20,
    fill_holes: bool = True,
) -> np.ndarray:
    """Foreground of a fluorescence image: smooth, threshold, clean up.

    Steps: Gaussian smoothing (``smooth_sigma_px``, px) to suppress shot noise; a global
    threshold, Otsu's by default (Otsu, IEEE Trans. SMC 9:62, 1979: the level that best separates
    the intensity histogram into two classes); removal of connected objects smaller than
    ``min_size_px`` pixels; filling of holes enclosed by the foreground.

    Parameters
    ----------
    image : ndarray, shape (Y, X) or (T, Y, X)
        Intensity image; a stack is thresholded plane by plane (each with its own Otsu level
        when ``threshold`` is None).
    threshold : float, optional
        Intensity above which a (smoothed) pixel is foreground.
    smooth_sigma_px : float
        Standard deviation of the Gaussian smoothing, px (0 for none).
    min_size_px : int
        Smallest object kept, px.
    fill_holes : bool
        Fill holes in the foreground (e.g. a dark nucleus inside a stained cell).

    Returns
    -------
    ndarray of bool, same shape as ``image``
    """
    image = np.asarray(image)
    if image.ndim == 3:
        return np.stack(
            [
                threshold_mask(
                    plane,
                    threshold=threshold,
                    smooth_sigma_px=smooth_sigma_px,
                    min_size_px=min_size_px,
                    fill_holes=fill_holes,
                )
                for plane in image
            ]
        )
    if image.ndim != 2 or image.size == 0:
        raise SptInputError("image", f"expected a (Y, X) or (T, Y, X) image, got {image.shape}")
    if not np.isfinite(image).all():
        raise SptInputError("image", "contains NaN or inf")
    smooth = image.astype(np.float64)
    if smooth_sigma_px > 0:
        smooth = ndimage.gaussian_filter(smooth, smooth_sigma_px)
    if threshold is None:
        if smooth.min() == smooth.max():
            raise SptInputError("image", "is uniform: no threshold separates foreground")
        threshold = threshold_otsu(smooth)
    mask = smooth > threshold
    if min_size_px > 1:
        objects, _ = ndimage.label(mask)
        sizes = np.bincount(objects.ravel())
        mask = (sizes >= min_size_px)[objects] & mask
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def label_image(
    *,
    vessel: np.ndarray | None = None,
    cell: np.ndarray | None = None,
    nucleus: np.ndarray | None = None,
) -> np.ndarray:
    """Combine boolean masks into one label image (nucleus over cell over vessel).

    Returns
    -------
    ndarray of uint8
        0 background, 1 vessel, 2 cell, 3 nucleus.
    """
    given = {
        k: v for k, v in (("vessel", vessel), ("cell", cell), ("nucleus", nucleus)) if v is not None
    }
    if not given:
        raise SptInputError("masks", "give at least one of vessel, cell, nucleus")
    shapes = {np.shape(v) for v in given.values()}
    if len(shapes) > 1:
        raise SptInputError("masks", f"masks differ in shape: {sorted(shapes)}")
    labels = np.zeros(shapes.pop(), np.uint8)
    for name in ("vessel", "cell", "nucleus"):
        if name in given:
            labels[np.asarray(given[name], bool)] = MASK_LABELS[name]
    return labels


def masks_from_channels(
    *,
    vessel: np.ndarray | None = None,
    cell: np.ndarray | None = None,
    nucleus: np.ndarray | None = None,
    per_frame: bool = False,
    smooth_sigma_px: float = 1.0,
    min_size_px: int = 20,
) -> np.ndarray:
    """Label image from the images of a vessel dye, a cell stain and/or a nuclear stain.

    Each given channel is thresholded with :func:`threshold_mask` (Otsu) and the results are
    combined by :func:`label_image`. A channel given as a movie (T, Y, X) is averaged over time
    first (static masks) unless ``per_frame`` is set (one mask per frame, for moving tissue).

    Examples
    --------
    >>> import numpy as np
    >>> dye = np.zeros((32, 32)); dye[5:12] = 100.0  # a bright horizontal vessel
    >>> labels = masks_from_channels(vessel=dye, min_size_px=5)
    >>> int(labels[8, 16]), int(labels[25, 16])
    (1, 0)
    """
    masks = {}
    for name, image in (("vessel", vessel), ("cell", cell), ("nucleus", nucleus)):
        if image is None:
            continue
        image = np.asarray(image, dtype=np.float64)
        if image.ndim == 3 and not per_frame:
            image = image.mean(axis=0)
        masks[name] = threshold_mask(
            image, smooth_sigma_px=smooth_sigma_px, min_size_px=min_size_px
        )
    return label_image(**masks)
