"""Errors raised for bad input.

Every refusal of user input is an :class:`SptInputError` whose message names the input and says
what is wrong, so the CLI can print it as one line and exit non-zero.
"""

from __future__ import annotations

import os


class SptInputError(ValueError):
    """Input that spt cannot use: unreadable file, wrong shape, missing metadata, bad table.

    Parameters
    ----------
    source : str or os.PathLike or None
        The file (or other input) at fault; shown first in the message.
    problem : str
        What is wrong, and where possible what would be accepted.
    """

    def __init__(self, source: str | os.PathLike | None, problem: str):
        self.source = None if source is None else os.fspath(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)

    def __reduce__(self):
        # Rebuild from (source, problem), so the error survives pickling between processes.
        return type(self), (self.source, self.problem)
