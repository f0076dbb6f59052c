"""Provenance of a result folder: what was run, on which input, with which software, how long.

``provenance.json`` is the last file written into a movie's result folder; a folder whose
provenance matches the current input and configuration is complete and up to date.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import spt

__all__ = [
    "PROVENANCE_FILE",
    "environment",
    "file_record",
    "read_provenance",
    "read_provenance_file",
    "sha256_file",
    "up_to_date",
]

PROVENANCE_FILE = "provenance.json"
#: Libraries whose versions are recorded (those that shape the numbers).
_LIBRARIES = ("numpy", "scipy", "pandas", "tifffile", "scikit-image", "trackpy", "numba")


def sha256_file(path: str | os.PathLike, block_bytes: int = 8 << 20) -> str:
    """SHA-256 of a file's bytes (hex), read in blocks of ``block_bytes`` (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{path, bytes, mtime_ns, sha256}`` of an input file.

    For a source that is not a file (e.g. frames handed over by napari) only ``path`` is
    recorded, and such results never count as up to date.
    """
    path = Path(path)
    if not path.is_file():
        return {"path": str(path)}
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256_file(path),
    }


def environment() -> dict[str, Any]:
    """Software and machine that produced a result: spt, Python and library versions, host."""
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "spt": spt.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "libraries": versions,
    }


def now_utc() -> str:
    """The current time as an ISO 8601 UTC string."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_provenance(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance of a result folder, or ``None`` if it has none or it is unreadable."""
    return read_provenance_file(Path(folder) / PROVENANCE_FILE) or None


def read_provenance_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``; empty if the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _same_file(record: dict[str, Any] | None, path: Path | None) -> bool:
    """Whether ``path`` still holds the bytes described by ``record`` (hash only if touched)."""
    if record is None or path is None:
        return record is None and path is None
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != record.get("bytes"):
        return False
    if stat.st_mtime_ns == record.get("mtime_ns"):
        return True
    return sha256_file(path) == record.get("sha256")


def up_to_date(
    folder: str | os.PathLike, movie: Path, masks: Path | None, config_digest: str
) -> tuple[bool, str]:
    """Whether ``folder`` holds complete results of this movie, masks and configuration.

    Complete means: ``provenance.json`` present (it is written last), every output it lists
    present with its recorded size, the same configuration digest, and input files of the same
    size and content (content hashed only when the modification time changed).

    Returns
    -------
    ok : bool
    reason : str
        Why the results must be (re)computed, empty when ``ok``.
    """
    folder = Path(folder)
    prov = read_provenance(folder)
    if prov is None:
        return False, "no complete results"
    if prov.get("config_digest") != config_digest:
        return False, "configuration changed"
    inputs = prov.get("inputs", {})
    if not _same_file(inputs.get("movie"), movie):
        return False, "movie changed"
    if not _same_file(inputs.get("masks"), masks):
        return False, "masks changed"
    for name, size in prov.get("outputs", {}).items():
        try:
            if (folder / name).stat().st_size != size:
                return False, f"output {name} changed"
        except OSError:
            return False, f"output {name} missing"
    return True, ""
