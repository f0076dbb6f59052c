"""Coverage-guided fuzzing of the TIFF movie and mask readers (atheris/libFuzzer), run by hand.

Every input is written to a file and opened with :func:`spt.io.read_movie` (then read chunk by
chunk) and :func:`spt.io.read_masks`. Refusing it with :class:`spt.errors.SptInputError` is fine;
any other exception, a hang or running out of memory is a finding. See fuzz/README.md.

    python fuzz/fuzz_tiff.py fuzz/corpus/tiff -max_total_time=600 -rss_limit_mb=3000 -timeout=20
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["spt", "tifffile"]):
    import numpy as np

    from spt.errors import SptInputError
    from spt.io import read_masks, read_movie

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import input_path, main, refusal_allowed  # noqa: E402
from seeds import write_tiff_seeds  # noqa: E402

_PATH = input_path("input.tif")


def test_one_input(data: bytes) -> None:
    _PATH.write_bytes(data)
    with refusal_allowed(SptInputError):
        for _, block in read_movie(_PATH, pixel_size_um=0.1, frame_interval_s=0.1).iter_chunks(2):
            assert block.dtype == np.float32 and np.isfinite(block).all()
    with refusal_allowed(SptInputError):
        read_masks(_PATH, shape=(8, 6), n_frames=3)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(test_one_input, write_tiff_seeds)
