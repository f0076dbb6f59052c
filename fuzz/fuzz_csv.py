"""Coverage-guided fuzzing of the track-table reader (atheris/libFuzzer), run by hand.

Every input is written to a file and read with :func:`spt.io.read_track_table`. Refusing it with
:class:`spt.errors.SptInputError` is fine; any other exception, a table that breaks the reader's
promises (int frames >= 0, finite pixel coordinates, one point per particle and frame), a hang
or running out of memory is a finding. See fuzz/README.md.

    python fuzz/fuzz_csv.py fuzz/corpus/csv -max_total_time=600 -rss_limit_mb=3000 -timeout=20
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["spt"]):
    import numpy as np

    from spt.errors import SptInputError
    from spt.io import MAX_COORDINATE_PX, read_track_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeds import write_csv_seeds  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="spt-fuzz-csv-")
_PATH = Path(_DIR) / "input.csv"


def test_one_input(data: bytes) -> None:
    _PATH.write_bytes(data)
    try:
        table = read_track_table(_PATH, pixel_size_um=0.1, frame_interval_s=0.033)
    except SptInputError as err:
        assert "\n" not in str(err), repr(str(err))
        return
    assert list(table.columns[:4]) == ["frame", "x", "y", "particle"]
    assert table["frame"].dtype == np.int64 and table["particle"].dtype == np.int64
    xy = table[["x", "y"]].to_numpy(np.float64)
    assert np.isfinite(xy).all() and (np.abs(xy) <= MAX_COORDINATE_PX).all()
    assert (table["frame"] >= 0).all()
    assert not table.duplicated(["particle", "frame"]).any()


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not Path(corpus[0]).is_file() and not any(Path(corpus[0]).glob("*")):
        write_csv_seeds(Path(corpus[0]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
