"""Coverage-guided fuzzing of the TIFF movie and mask readers (atheris/libFuzzer), run by hand.

Every input is written to a file and opened with :func:`spt.io.read_movie` (then read chunk by
chunk) and :func:`spt.io.read_masks`. Refusing it with :class:`spt.errors.SptInputError` is fine;
any other exception, a hang or running out of memory is a finding. See fuzz/README.md.

    python fuzz/fuzz_tiff.py fuzz/corpus/tiff -max_total_time=600 -rss_limit_mb=3000 -timeout=20
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["spt", "tifffile"]):
    import numpy as np

    from spt.errors import SptInputError
    from spt.io import read_masks, read_movie

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeds import write_tiff_seeds  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="spt-fuzz-tiff-")
_PATH = Path(_DIR) / "input.tif"


def test_one_input(data: bytes) -> None:
    _PATH.write_bytes(data)
    try:
        movie = read_movie(_PATH, pixel_size_um=0.1, frame_interval_s=0.1)
    except SptInputError as err:
        assert "\n" not in str(err), repr(str(err))
    else:
        try:
            for _, block in movie.iter_chunks(2):
                assert block.dtype == np.float32 and np.isfinite(block).all()
        except SptInputError as err:
            assert "\n" not in str(err), repr(str(err))
        del movie
    try:
        read_masks(_PATH, shape=(8, 6), n_frames=3)
    except SptInputError as err:
        assert "\n" not in str(err), repr(str(err))


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not Path(corpus[0]).is_file() and not any(Path(corpus[0]).glob("*")):
        write_tiff_seeds(Path(corpus[0]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
