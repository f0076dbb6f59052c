"""What the fuzz harnesses share: the file every input is written to, the rule for a refusal and
libFuzzer's main (which writes the seeds into an empty corpus folder first)."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import atheris


def input_path(name: str) -> Path:
    """``name`` in a fresh temporary folder: the readers are fed files, not bytes."""
    return Path(tempfile.mkdtemp(prefix="spt-fuzz-")) / name


@contextlib.contextmanager
def refusal_allowed(error: type[Exception]) -> Iterator[None]:
    """Refusing an input with ``error`` is fine (the block ends there), with a one-line message;
    any other exception is a finding."""
    try:
        yield
    except error as err:
        assert "\n" not in str(err), repr(str(err))


def main(test_one_input: Callable[[bytes], None], write_seeds: Callable[[Path], object]) -> None:
    """Run libFuzzer on ``sys.argv``; an empty corpus folder (first argument) gets the seeds."""
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not Path(corpus[0]).is_file() and not any(Path(corpus[0]).glob("*")):
        write_seeds(Path(corpus[0]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
