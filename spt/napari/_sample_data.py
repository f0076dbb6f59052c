"""Sample data: the bundled simulated QD movie (250 frames, 128 x 128 px) with its masks.

The movie lives in the source repository's ``sample_data/`` folder, beside the ``spt`` package,
not inside it; an installed wheel has no copy.
"""

from __future__ import annotations

from pathlib import Path

from spt.errors import SptInputError
from spt.io import read_masks, read_movie
from spt.napari._layers import LayerDataTuple, masks_layer, movie_layer

#: Where the sample lives in a source checkout (or an editable install).
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_data"
REGENERATE = "spt simulate --out sample_data --name sample --preset sample --seed 2007"


def sample_paths(folder: Path | None = None) -> tuple[Path, Path]:
    """Paths of the sample movie and its masks.

    Raises
    ------
    SptInputError
        The movie is not there (e.g. spt installed from a wheel, without the repository).
    """
    folder = SAMPLE_DIR if folder is None else Path(folder)
    movie, masks = folder / "sample.ome.tif", folder / "sample_masks.tif"
    if not movie.is_file():
        raise SptInputError(
            movie,
            "sample movie not found: it ships with the spt source repository (sample_data/), "
            f"not with the installed package; clone the repository or make it with `{REGENERATE}`",
        )
    return movie, masks


def make_sample_data(folder: Path | None = None) -> list[LayerDataTuple]:
    """Layers of the sample: the movie (um, s) and, when present, its vessel/cell/nucleus masks."""
    movie_path, masks_path = sample_paths(folder)
    movie = read_movie(movie_path)
    layers = [movie_layer(movie, "sample")]
    if masks_path.is_file():
        masks = read_masks(masks_path, shape=movie.shape, n_frames=movie.n_frames)
        layers.append(
            masks_layer(masks, movie.pixel_size_um, movie.frame_interval_s, name="sample masks")
        )
    return layers
