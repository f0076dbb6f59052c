"""Coverage-guided fuzzing of the track-table reader (atheris/libFuzzer), run by hand.

Every input is written to a file and read with :func:`spt.io.read_track_table`. Refusing it with
:class:`spt.errors.SptInputError` is fine; any other exception, a table that breaks the reader's
promises (int frames >= 0, finite pixel coordinates, one point per particle and frame), a hang
or running out of memory is a finding. See fuzz/README.md.

    python fuzz/fuzz_csv.py fuzz/corpus/csv -max_total_time=600 -rss_limit_mb=3000 -timeout=20
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["spt"]):
    import numpy as np

    from spt.errors import SptInputError
    from spt.io import MAX_COORDINATE_PX, read_track_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import input_path, main, refusal_allowed  # noqa: E402
from seeds import write_csv_seeds  # noqa: E402

_PATH = input_path("input.csv")


def test_one_input(data: bytes) -> None:
    _PATH.write_bytes(data)
    with refusal_allowed(SptInputError):
        table = read_track_table(_PATH, pixel_size_um=0.1, frame_interval_s=0.033)
        assert list(table.columns[:4]) == ["frame", "x", "y", "particle"]
        assert table["frame"].dtype == np.int64 and table["particle"].dtype == np.int64
        xy = table[["x", "y"]].to_numpy(np.float64)
        assert np.isfinite(xy).all() and (np.abs(xy) <= MAX_COORDINATE_PX).all()
        assert (table["frame"] >= 0).all()
        assert not table.duplicated(["particle", "frame"]).any()


if __name__ == "__main__":
    main(test_one_input, write_csv_seeds)
