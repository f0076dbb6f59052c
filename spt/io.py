"""Reading and writing spt's inputs and outputs: TIFF movies, mask images, track tables.

Movies are opened lazily with tifffile (memory-mapped when the file allows, page by page
otherwise); physical units come from flags, OME, ImageJ or TIFF resolution metadata, in that order.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from spt.errors import SptInputError
from spt.schema import MASK_LABELS

__all__ = [
    "MAX_COORDINATE_PX",
    "MAX_FRAME",
    "Movie",
    "TRACK_TABLE_COLUMNS",
    "check_float_frames",
    "check_track_table",
    "read_masks",
    "read_movie",
    "read_track_table",
    "tiff_plane_shape",
    "write_movie",
    "write_table",
]

#: Length units (as written by OME, ImageJ and others) in micrometres.
_UM_PER_UNIT: dict[str, float] = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "å": 1e-4,
    "pm": 1e-6,
}
#: Time units in seconds.
_S_PER_UNIT: dict[str, float] = {
    "h": 3600.0,
    "hour": 3600.0,
    "min": 60.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "µs": 1e-6,
    "μs": 1e-6,
    "us": 1e-6,
    "ns": 1e-9,
}
#: Plausible pixel sizes for plain TIFF resolution tags; outside this range the tag is a
#: screen/print default (e.g. 72 dpi = 352.8 um/pixel), not a microscope calibration.
_PLAUSIBLE_TAG_PIXEL_UM = (1e-3, 100.0)
#: tifffile axis letters that may hold the frames of a movie when no ``T`` axis exists.
_GENERIC_TIME_AXES = "IQ"

# tifffile reports damaged files by logging and degrading (fewer pages, another series kind);
# the open phase is serialised so that the records captured belong to this file.
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Movie:
    """A fluorescence movie opened lazily, with its physical calibration.

    Attributes
    ----------
    path : Path
        The file the frames come from.
    frames : array-like
        Lazy ``(T, Y, X)`` frames: supports ``len``, ``.shape``, ``.dtype`` and integer or slice
        indexing returning numpy arrays. A :class:`numpy.memmap` view when the file's pixel data
        are contiguous and uncompressed, otherwise a reader that decodes only the pages asked for.
    pixel_size_um : float
        Pixel size in micrometres.
    frame_interval_s : float
        Time between frames in seconds.
    metadata_source : dict of str to str
        Where each value came from, e.g. ``{"pixel_size_um": "ome", "frame_interval_s": "flag"}``;
        ``"frames"`` describes which axis of the file was read as time.
    """

    path: Path
    frames: Any
    pixel_size_um: float
    frame_interval_s: float
    metadata_source: dict[str, str]

    @property
    def n_frames(self) -> int:
        """Number of frames ``T``."""
        return int(self.frames.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape ``(Y, X)`` in pixels."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def dtype(self) -> np.dtype:
        """Pixel data type of the file (native byte order)."""
        return np.dtype(self.frames.dtype).newbyteorder("=")

    def iter_chunks(self, chunk_frames: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        """Yield the movie in blocks of frames, as float32.

        Parameters
        ----------
        chunk_frames : int
            Frames per block; bounds memory to ``chunk_frames * Y * X * 4`` bytes.

        Yields
        ------
        start : int
            Index of the first frame of the block.
        block : ndarray, float32, shape (n, Y, X)
            The frames ``start .. start + n - 1``.

        Raises
        ------
        SptInputError
            If the data cannot be read (damaged file) or a block holds NaN, infinite or
            out-of-float32-range values (see :func:`check_float_frames`).
        """
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        is_float = np.issubdtype(self.dtype, np.floating)
        for start in range(0, self.n_frames, chunk_frames):
            stop = min(start + chunk_frames, self.n_frames)
            try:
                block = np.asarray(self.frames[start:stop])
            except SptInputError:
                raise
            except Exception as err:  # tifffile/zlib/mmap errors on damaged data
                raise SptInputError(
                    self.path, f"cannot read frames {start}-{stop - 1}: {_one_line(err)}"
                ) from None
            if is_float:
                check_float_frames(block, self.path, start)
            yield start, block.astype(np.float32)

    def max_projection(self, chunk_frames: int = 64) -> np.ndarray:
        """Return the maximum over time, ``(Y, X)`` float32, streamed chunk by chunk."""
        out = np.full(self.shape, -np.inf, dtype=np.float32)
        for _, block in self.iter_chunks(chunk_frames):
            np.maximum(out, block.max(axis=0), out=out)
        return out


def check_float_frames(block: np.ndarray, source: Any, start: int = 0) -> None:
    """Refuse float frames holding NaN, infinity or values beyond the float32 range.

    Parameters
    ----------
    block : ndarray, shape (n, Y, X)
        Frames ``start .. start + n - 1``.
    source : str or os.PathLike or None
        The input, named in the error message.
    start : int
        Index of the first frame of ``block``.

    Raises
    ------
    SptInputError
        Naming the first bad frame. Frames are analysed as float32, so larger magnitudes
        (> 3.4e38) would become infinite.
    """
    flat = block.reshape(len(block), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        bad = start + int(np.flatnonzero(~finite)[0])
        raise SptInputError(source, f"frame {bad} contains NaN or infinite values")
    if block.dtype.itemsize > 4 and block.size:
        big = (np.abs(flat) > np.finfo(np.float32).max).any(axis=1)
        if big.any():
            bad = start + int(np.flatnonzero(big)[0])
            raise SptInputError(
                source, f"frame {bad} holds values beyond the float32 range (|value| > 3.4e38)"
            )


class _PageFrames:
    """Lazy ``(T, Y, X)`` view of a TIFF series that decodes one page per frame on demand.

    Used when the pixel data cannot be memory-mapped (compressed, tiled or scattered pages).
    """

    ndim = 3

    def __init__(
        self,
        tif: tifffile.TiffFile,
        pages: list,
        page_of_frame: np.ndarray,
        page_shape: tuple[int, ...],
        page_index: tuple,
        frame_shape: tuple[int, int],
    ):
        self._tif = tif  # kept open for the lifetime of the reader
        tif.filehandle.set_lock(True)  # pages may be read from several threads
        self._pages = pages
        self._page_of_frame = page_of_frame
        self._page_shape = page_shape
        self._page_index = page_index
        self.dtype = np.dtype(tif.series[0].dtype)
        self.shape = (len(page_of_frame), *frame_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _frame(self, t: int) -> np.ndarray:
        page = self._pages[int(self._page_of_frame[t])]
        return page.asarray().reshape(self._page_shape)[self._page_index]

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            t = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= t < self.shape[0]:
                raise IndexError(f"frame {key} out of range for {self.shape[0]} frames")
            out = self._frame(t)
        elif isinstance(key, slice):
            ts = range(*key.indices(self.shape[0]))
            out = np.empty((len(ts), *self.shape[1:]), dtype=self.dtype)
            for i, t in enumerate(ts):
                out[i] = self._frame(t)
        else:
            raise TypeError(f"frames support integer and slice indexing, not {type(key).__name__}")
        return out[rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"<lazy TIFF frames shape={self.shape} dtype={self.dtype}>"


# --------------------------------------------------------------------------- movies


def read_movie(
    path: str | os.PathLike,
    *,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    channel: int | None = None,
    z: int | None = None,
) -> Movie:
    """Open a TIFF, OME-TIFF or ImageJ hyperstack movie lazily.

    Parameters
    ----------
    path : str or os.PathLike
        The movie file.
    pixel_size_um : float, optional
        Pixel size in micrometres; overrides the file's metadata.
    frame_interval_s : float, optional
        Time between frames in seconds; overrides the file's metadata.
    channel : int, optional
        Channel to read (0-based) when the file holds several channels (or RGB samples).
    z : int, optional
        Z-plane to read (0-based) when the file holds several planes per time point.

    Returns
    -------
    Movie
        Frames ``(T, Y, X)`` (never loaded whole) with pixel size (um) and frame interval (s).

    Raises
    ------
    SptInputError
        Missing, empty, non-TIFF, truncated or corrupt file; a shape that is not a movie
        (single image, fewer than 2 frames, several channels/planes without a choice, unknown
        extra axes); unsupported pixel type; pixel size or frame interval neither in the
        metadata nor given.

    Notes
    -----
    Metadata priority: flag, then OME (``PhysicalSizeX``, ``TimeIncrement`` or the planes'
    ``DeltaT``), then ImageJ (``XResolution`` tag with ``unit``; ``finterval`` with ``tunit``), then
    TIFF ``XResolution`` with ``ResolutionUnit`` inch or centimetre. A file whose only extra axis is
    ``Z`` is read as a time series (ImageJ stacks often label frames as slices, cf. TrackMate).
    """
    path = _check_file(path)
    for name, value in (("pixel_size_um", pixel_size_um), ("frame_interval_s", frame_interval_s)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SptInputError(path, f"{name} must be a positive number, got {value}")
    tif = _open_tiff(path)
    keep_open = False
    try:
        frames, describe, selection = _lazy_frames(tif, path, channel=channel, z=z)
        px = ("flag", pixel_size_um) if pixel_size_um is not None else None
        dt = ("flag", frame_interval_s) if frame_interval_s is not None else None
        px = px or _pixel_size_from_metadata(tif, path)
        dt = dt or _frame_interval_from_metadata(tif, selection)
        missing = [
            f"{what} (pass {flag})"
            for what, flag, found in (
                ("pixel size", "--pixel-size UM, micrometres per pixel", px),
                ("frame interval", "--frame-interval S, seconds between frames", dt),
            )
            if found is None
        ]
        if missing:
            raise SptInputError(path, f"no {' and no '.join(missing)} in the file's metadata")
        keep_open = isinstance(frames, _PageFrames)
    finally:
        if not keep_open:
            tif.close()
    sources = {"pixel_size_um": px[0], "frame_interval_s": dt[0], "frames": describe}
    return Movie(path, frames, float(px[1]), float(dt[1]), sources)


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise SptInputError(path, "file not found")
    if path.is_dir():
        raise SptInputError(path, "is a folder, not a file")
    if path.stat().st_size == 0:
        raise SptInputError(path, "empty file (0 bytes)")
    return path


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.messages.append(record.getMessage())


@contextmanager
def _tifffile_errors():
    """Capture (and silence) tifffile's logged errors, which signal a damaged file."""
    logger = logging.getLogger("tifffile")
    handler = _Collect()
    with _OPEN_LOCK:
        propagate = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield handler.messages
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate


def _open_tiff(path: Path) -> tifffile.TiffFile:
    """Open ``path`` with tifffile, refusing non-TIFF, truncated or corrupt files."""
    size = path.stat().st_size
    with _tifffile_errors() as errors:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as err:
            hint = "; track tables go to `spt classify`" if path.suffix.lower() == ".csv" else ""
            raise SptInputError(
                path, f"not a readable TIFF file ({_one_line(err)}){hint}"
            ) from None
        try:
            _check_ifd_chain(path, size)
            if not tif.series:
                raise SptInputError(path, "TIFF file holds no image data")
            series = tif.series[0]
            pages = list(series.pages) if series.dataoffset is None else []
        except SptInputError:
            tif.close()
            raise
        except Exception as err:
            tif.close()
            raise SptInputError(path, f"corrupt TIFF file ({_one_line(err)})") from None
    problem = None
    if errors:
        problem = f"truncated or corrupt TIFF file ({_one_line(errors[0])})"
    elif series.dataoffset is not None:
        end = series.dataoffset + series.nbytes
        if end > size:
            problem = f"truncated TIFF file: pixel data end at byte {end}, file has {size} bytes"
    elif any(p is None for p in pages):
        problem = "corrupt TIFF file: image pages are missing"
    elif any(len(p.dataoffsets) != len(p.databytecounts) for p in pages):
        problem = "corrupt TIFF file: a page's strip/tile offsets and byte counts disagree"
    else:
        last = pages[-1]
        offsets, counts = last.dataoffsets, last.databytecounts
        end = max((o + c for o, c in zip(offsets, counts, strict=True)), default=0)
        if end > size:
            problem = (
                f"truncated TIFF file: last page's data end at byte {end}, file has {size} bytes"
            )
    if problem is None and len(tif.series) > 1:
        shapes = ", ".join(str(s.shape) for s in tif.series)
        problem = (
            f"file holds {len(tif.series)} image series ({shapes}); spt reads one movie per file"
        )
    if problem:
        tif.close()
        raise SptInputError(path, problem)
    return tif


def _check_ifd_chain(path: Path, size: int) -> None:
    """Refuse a TIFF whose chain of image directories (IFDs) loops or leaves the file.

    tifffile follows a directory that points back to itself (a damaged file) without end, so
    the chain is walked here first: each IFD is read once, only its entry count and next offset.
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return  # tifffile has accepted it, e.g. as a non-classic variant: let it decide
        version = int.from_bytes(head[2:4], "little" if order == "<" else "big")
        big = version == 43
        if version not in (42, 43) or (big and len(head) < 16):
            return
        unsigned = "<Q" if big and order == "<" else ">Q" if big else order + "I"
        count_fmt, entry_size = (order + "Q", 20) if big else (order + "H", 12)
        offset = struct.unpack(unsigned, head[8:16] if big else head[4:8])[0]
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise SptInputError(
                    path, f"corrupt TIFF file: its image directories loop (at byte {offset})"
                )
            if offset >= size:
                return  # truncated: reported by the checks that follow
            seen.add(offset)
            fh.seek(offset)
            raw = fh.read(struct.calcsize(count_fmt))
            if len(raw) < struct.calcsize(count_fmt):
                return
            n_entries = struct.unpack(count_fmt, raw)[0]
            fh.seek(offset + len(raw) + n_entries * entry_size)
            raw = fh.read(struct.calcsize(unsigned))
            if len(raw) < struct.calcsize(unsigned):
                return
            offset = struct.unpack(unsigned, raw)[0]


def _lazy_frames(tif: tifffile.TiffFile, path: Path, *, channel: int | None, z: int | None):
    """Return lazy (T, Y, X) frames of series 0, a description, and the chosen (channel, z)."""
    series = tif.series[0]
    shape = tuple(int(n) for n in series.get_shape(False))
    axes = series.get_axes(False)
    shown = f"shape {tuple(series.shape)}, axes {series.axes}"
    dtype = np.dtype(series.dtype)
    if dtype.kind not in "uif":
        raise SptInputError(
            path, f"unsupported pixel type {dtype} ({shown}); need integer or float"
        )
    if "Y" not in axes or "X" not in axes:
        raise SptInputError(path, f"no Y and X image axes ({shown})")

    index: list[Any] = [0] * len(shape)
    index[axes.index("Y")] = slice(None)
    index[axes.index("X")] = slice(None)
    extra = [i for i, a in enumerate(axes) if a not in "YX" and shape[i] > 1]

    def choose(letters: str, value: int | None, what: str, flag: str) -> int | None:
        found = [i for i in extra if axes[i] in letters]
        if len(found) > 1:
            raise SptInputError(path, f"several {what} axes ({shown}); cannot tell which to use")
        if not found:
            if value not in (None, 0):
                raise SptInputError(
                    path, f"{flag}={value} given but the movie has one {what} ({shown})"
                )
            return None
        i = found[0]
        if value is None:
            return i  # caller decides whether an unchosen axis is an error
        if not 0 <= value < shape[i]:
            raise SptInputError(
                path,
                f"{flag}={value} out of range: the movie has {shape[i]} {what}s "
                f"(0 to {shape[i] - 1})",
            )
        index[i] = value
        extra.remove(i)
        return None

    c_axis = choose("CS", channel, "channel", "channel")
    if c_axis is not None:
        n = shape[c_axis]
        if all(i == c_axis for i in extra):  # e.g. an ImageJ stack saved as channels
            raise SptInputError(
                path,
                f"{n} channels and no time axis ({shown}): if the {n} planes are frames, save "
                f"the file with axes TYX (ImageJ: Image > Properties, Frames = {n})",
            )
        raise SptInputError(
            path, f"movie has {n} channels ({shown}); choose one with --channel N (0 to {n - 1})"
        )
    z_axis = choose("Z", z, "z-plane", "z")
    time_note = ""
    if z_axis is not None:
        others = [i for i in extra if i != z_axis]
        if others:
            raise SptInputError(
                path,
                f"movie has {shape[z_axis]} z-planes ({shown}); choose one with --z N "
                f"(0 to {shape[z_axis] - 1})",
            )
        time_note = " (no T axis: z-planes read as frames)"
    if not extra:
        raise SptInputError(
            path, f"a single 2-D image ({shown}), not a movie: need at least 2 frames"
        )
    if len(extra) > 1:
        raise SptInputError(
            path,
            f"ambiguous shape ({shown}): cannot tell which axis is time; "
            "save the movie with T (and C/Z) axes in its OME or ImageJ metadata",
        )
    t_axis = extra[0]
    if axes[t_axis] not in "T" + _GENERIC_TIME_AXES + "Z":
        raise SptInputError(path, f"axis {axes[t_axis]!r} is not a time axis ({shown})")
    index[t_axis] = slice(None)
    describe = f"{axes[t_axis]} axis of {series.axes} {tuple(series.shape)}{time_note}"
    for label, value in (("channel", channel), ("z", z)):
        if value is not None:
            describe += f", {label} {value}"
    selection = (channel or 0, z or 0)

    if series.dataoffset is not None:
        mm = np.memmap(
            path,
            dtype=dtype.newbyteorder(tif.byteorder),
            mode="r",
            offset=series.dataoffset,
            shape=shape,
        )
        return mm[tuple(index)], describe, selection

    pages = list(series.pages)
    n_seq, prod = 0, 1
    while prod < len(pages) and n_seq < len(shape):
        prod *= shape[n_seq]
        n_seq += 1
    if prod != len(pages) or t_axis >= n_seq:
        raise SptInputError(
            path, f"cannot map the {len(pages)} TIFF pages onto the frames ({shown})"
        )
    if axes.index("Y") < n_seq or axes.index("X") < n_seq:
        raise SptInputError(path, f"cannot map the TIFF pages onto the frames ({shown})")
    n_t = shape[t_axis]
    grid = [np.arange(n_t) if k == t_axis else np.full(n_t, index[k]) for k in range(n_seq)]
    page_of_frame = np.ravel_multi_index(grid, shape[:n_seq])
    frame_shape = (shape[axes.index("Y")], shape[axes.index("X")])
    lazy = _PageFrames(tif, pages, page_of_frame, shape[n_seq:], tuple(index[n_seq:]), frame_shape)
    return lazy, describe, selection


# --------------------------------------------------------------------------- metadata


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _to_um(value: float | None, unit: str | None) -> float | None:
    if value is None:
        return None
    unit = (unit or "µm").strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    scale = _UM_PER_UNIT.get(unit)
    return None if scale is None else value * scale


def _to_s(value: float | None, unit: str | None) -> float | None:
    if value is None:
        return None
    unit = (unit or "s").strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    scale = _S_PER_UNIT.get(unit)
    return None if scale is None else value * scale


def _ome_pixels(tif: tifffile.TiffFile) -> ET.Element | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            return element
    return None


def _ratio(tag: Any) -> float | None:
    value = tag.value if tag is not None else None
    if isinstance(value, tuple) and len(value) == 2 and value[1]:
        return _positive(value[0] / value[1])
    return _positive(value)


def _pixel_size_from_metadata(tif: tifffile.TiffFile, path: Path) -> tuple[str, float] | None:
    pixels = _ome_pixels(tif)
    if pixels is not None:
        sx = _to_um(_positive(pixels.get("PhysicalSizeX")), pixels.get("PhysicalSizeXUnit"))
        sy = _to_um(_positive(pixels.get("PhysicalSizeY")), pixels.get("PhysicalSizeYUnit"))
        if sx is not None:
            _check_square(sx, sy, path, "OME PhysicalSizeX/Y")
            return "ome", sx
    tags = tif.pages.first.tags
    xres, yres = _ratio(tags.get("XResolution")), _ratio(tags.get("YResolution"))
    ij = tif.imagej_metadata
    if ij and xres is not None and "unit" in ij:
        sx = _to_um(1.0 / xres, str(ij["unit"]))
        sy = _to_um(1.0 / yres, str(ij.get("yunit", ij["unit"]))) if yres else None
        if sx is not None:
            _check_square(sx, sy, path, "ImageJ XResolution/YResolution")
            return "imagej", sx
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
    if xres is not None and unit in (2, 3) and not ij:
        um_per_unit = 25400.0 if unit == 2 else 10000.0
        sx = um_per_unit / xres
        low, high = _PLAUSIBLE_TAG_PIXEL_UM
        if low <= sx <= high:
            sy = um_per_unit / yres if yres else None
            _check_square(sx, sy, path, "TIFF XResolution/YResolution")
            return "tiff-resolution", sx
    return None


def _check_square(sx: float, sy: float | None, path: Path, where: str) -> None:
    if sy is not None and abs(sx - sy) > 1e-3 * max(sx, sy):
        raise SptInputError(
            path, f"non-square pixels in {where} ({sx:g} x {sy:g} um); pass --pixel-size UM"
        )


def _frame_interval_from_metadata(
    tif: tifffile.TiffFile, selection: tuple[int, int]
) -> tuple[str, float] | None:
    pixels = _ome_pixels(tif)
    if pixels is not None:
        dt = _to_s(_positive(pixels.get("TimeIncrement")), pixels.get("TimeIncrementUnit"))
        if dt is not None:
            return "ome", dt
        dt = _ome_delta_t(pixels, selection)
        if dt is not None:
            return "ome-deltat", dt
    ij = tif.imagej_metadata
    if ij:
        dt = _to_s(_positive(ij.get("finterval")), str(ij.get("tunit", "s")))
        if dt is not None:
            return "imagej", dt
    return None


def _ome_delta_t(pixels: ET.Element, selection: tuple[int, int]) -> float | None:
    """Median interval between consecutive time points from the OME planes' ``DeltaT``."""
    channel, z = selection
    times: dict[int, float] = {}
    for plane in pixels:
        if plane.tag.rsplit("}", 1)[-1] != "Plane":
            continue
        if int(plane.get("TheC", 0)) != channel or int(plane.get("TheZ", 0)) != z:
            continue
        delta = plane.get("DeltaT")
        if delta is None:
            continue
        try:
            value = _to_s(float(delta), plane.get("DeltaTUnit"))
        except ValueError:
            continue
        if value is not None:
            times[int(plane.get("TheT", 0))] = value
    if len(times) < 2:
        return None
    t = np.array(sorted(times))
    steps = np.diff([times[k] for k in t]) / np.diff(t)
    return _positive(np.median(steps))


def _one_line(err: Any) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def tiff_plane_shape(path: str | os.PathLike) -> tuple[int, int]:
    """Shape ``(Y, X)`` of the images in a TIFF file, with the checks of :func:`read_movie`.

    Raises
    ------
    SptInputError
        Missing, empty, non-TIFF, truncated or corrupt file, or no 2-D image in it.
    """
    path = _check_file(path)
    tif = _open_tiff(path)
    try:
        shape = tif.series[0].shape
    finally:
        tif.close()
    if len(shape) < 2:
        raise SptInputError(path, f"no 2-D image in the file (shape {tuple(shape)})")
    return int(shape[-2]), int(shape[-1])


# --------------------------------------------------------------------------- masks


def read_masks(
    path: str | os.PathLike, *, shape: tuple[int, int], n_frames: int | None = None
) -> np.ndarray:
    """Read a label mask image: 0 background, 1 vessel, 2 cell, 3 nucleus.

    Parameters
    ----------
    path : str or os.PathLike
        TIFF label image, ``(Y, X)`` or one plane per frame ``(T, Y, X)``.
    shape : tuple of int
        The movie's frame shape ``(Y, X)``; the mask must match it.
    n_frames : int, optional
        The movie's frame count; a per-frame mask must have exactly this many planes.

    Returns
    -------
    ndarray of uint8, shape (Y, X) or (T, Y, X)

    Raises
    ------
    SptInputError
        Unreadable file, wrong shape, non-integer data, or labels outside
        :data:`spt.schema.MASK_LABELS`.
    """
    path = _check_file(path)
    tif = _open_tiff(path)
    try:
        with _tifffile_errors() as errors:
            data = tif.series[0].asarray()
        if errors:
            raise SptInputError(path, f"corrupt mask file ({_one_line(errors[0])})")
    except SptInputError:
        raise
    except Exception as err:
        raise SptInputError(path, f"cannot read mask data ({_one_line(err)})") from None
    finally:
        tif.close()
    data = np.asarray(data)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    shape = tuple(int(n) for n in shape)
    if data.ndim == 2:
        ok = data.shape == shape
    elif data.ndim == 3:
        ok = data.shape[1:] == shape and (n_frames is None or data.shape[0] == n_frames)
    else:
        ok = False
    if not ok:
        want = (
            f"{shape}" if n_frames is None else f"{shape} or ({n_frames}, {shape[0]}, {shape[1]})"
        )
        raise SptInputError(path, f"mask shape {data.shape} does not match the movie: need {want}")
    if data.dtype.kind not in "ui":
        raise SptInputError(path, f"mask must hold integer labels, not {data.dtype} data")
    allowed = sorted(MASK_LABELS.values())
    present = np.unique(data)
    bad = present[~np.isin(present, allowed)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:5]) + (" ..." if bad.size > 5 else "")
        names = ", ".join(f"{v} {k}" for k, v in MASK_LABELS.items())
        raise SptInputError(path, f"mask labels {shown} not allowed; use {names}")
    return data.astype(np.uint8)


# --------------------------------------------------------------------------- track tables

_TRACKMATE = {"FRAME": "frame", "POSITION_X": "x", "POSITION_Y": "y", "TRACK_ID": "particle"}
#: Columns every track table needs.
TRACK_TABLE_COLUMNS: tuple[str, ...] = ("frame", "x", "y", "particle")
#: Largest frame number accepted (exclusive): more frames than any TIFF movie holds; larger
#: values are timestamps or ids in the wrong column.
MAX_FRAME = 2**31
#: Largest |x| or |y| accepted, pixels: far beyond any camera, small enough that squared
#: displacements stay exact to well below a pixel in float64.
MAX_COORDINATE_PX = 1e9


def check_track_table(tracks: pd.DataFrame, source: str | os.PathLike = "tracks") -> pd.DataFrame:
    """Validate a track table and return it normalised.

    Parameters
    ----------
    tracks : DataFrame
        ``frame, x, y, particle`` (x, y in pixels) plus any other columns. Values may still be
        text (as read from a file); they must convert to numbers.
    source : str or os.PathLike
        Name of the input, used in error messages.

    Returns
    -------
    DataFrame
        ``frame`` (int64), ``x``, ``y`` (float64, pixels), ``particle`` (int64), then the other
        columns, sorted by particle and frame, with a fresh index. An empty table (header only)
        is valid and comes back empty with these dtypes.

    Raises
    ------
    SptInputError
        Not a DataFrame; missing or non-numeric columns; missing (NaN) or infinite values;
        non-integer, negative or implausibly large (>= 2**31) frames; coordinates beyond
        1e9 px; or a particle with two points in one frame.
    """
    if not isinstance(tracks, pd.DataFrame):
        raise SptInputError(source, f"expected a table (DataFrame), got {type(tracks).__name__}")
    needed = list(TRACK_TABLE_COLUMNS)
    missing = [c for c in needed if c not in tracks.columns]
    if missing:
        found = ", ".join(map(str, tracks.columns)) or "none"
        raise SptInputError(
            source,
            f"missing column(s) {', '.join(missing)}; found {found}. A track table needs frame, "
            "x, y, particle (trackpy) or FRAME, POSITION_X, POSITION_Y, TRACK_ID (TrackMate)",
        )
    if tracks.columns.duplicated().any():
        dup = sorted({str(c) for c in tracks.columns[tracks.columns.duplicated()]})
        raise SptInputError(source, f"duplicate column name(s) {', '.join(dup)}")
    df = tracks.copy()
    for c in needed:
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() & df[c].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise SptInputError(
                source, f"column {c} is not numeric (row {row + 1}: {df[c].iloc[row]!r})"
            )
        df[c] = values.astype(np.float64)
    nan = df[needed].isna().any(axis=1)
    if nan.any():
        first = int(np.flatnonzero(nan.to_numpy())[0]) + 1
        raise SptInputError(
            source,
            f"{int(nan.sum())} row(s) with missing frame/x/y/particle (first: row {first})",
        )
    xy = df[["x", "y"]].to_numpy(np.float64)
    if not np.isfinite(xy).all():
        raise SptInputError(source, "infinite x or y coordinates")
    if xy.size and np.abs(xy).max() > MAX_COORDINATE_PX:
        raise SptInputError(
            source,
            f"x/y coordinate {np.abs(xy).max():g} px is beyond {MAX_COORDINATE_PX:g} px; "
            "positions must be in pixels",
        )
    for c in ("frame", "particle"):
        values = df[c].to_numpy(np.float64)
        if not np.isfinite(values).all():
            raise SptInputError(source, f"infinite values in column {c}")
        if not (values == np.round(values)).all():
            raise SptInputError(source, f"column {c} must hold whole numbers")
        if np.abs(values).max(initial=0) >= 2**63:
            raise SptInputError(source, f"column {c} holds numbers too large for an integer")
        df[c] = values.astype(np.int64)
    if len(df) and df["frame"].min() < 0:
        raise SptInputError(
            source, f"negative frame number {int(df['frame'].min())}; frames count from 0"
        )
    if len(df) and df["frame"].max() >= MAX_FRAME:
        raise SptInputError(
            source,
            f"frame number {int(df['frame'].max())} is not a frame index (at most "
            f"{MAX_FRAME - 1}); for times in seconds name the column t or time_s and give the "
            "frame interval",
        )
    dup = df.duplicated(["particle", "frame"])
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise SptInputError(
            source,
            f"particle {int(first['particle'])} has several points in frame {int(first['frame'])}",
        )
    others = [c for c in df.columns if c not in needed]
    return (
        df[needed + others].sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    )


def read_track_table(
    path: str | os.PathLike,
    *,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
) -> pd.DataFrame:
    """Read a track table: trackpy-style CSV or a TrackMate spots export.

    Parameters
    ----------
    path : str or os.PathLike
        CSV (comma, semicolon or tab separated; detected from the header line; with semicolons,
        decimal commas as written by a European Excel are understood).
        trackpy style: columns ``frame, x, y, particle`` (x, y in pixels) plus any others.
        TrackMate "Spots" export: ``TRACK_ID, POSITION_X, POSITION_Y, FRAME`` with positions in
        the image's physical unit (its extra header rows of names and units are skipped).
    pixel_size_um : float, optional
        Micrometres per pixel; required to convert TrackMate positions to pixels unless the
        export's unit row says ``pixel``.
    frame_interval_s : float, optional
        Seconds per frame; used only to derive ``frame`` from a time column (``t``/``time_s``,
        or TrackMate ``POSITION_T``) when the table has no frame column.

    Returns
    -------
    DataFrame
        ``frame`` (int), ``x``, ``y`` (float, pixels), ``particle`` (int), then the other columns,
        sorted by particle and frame (see :func:`check_track_table`). TrackMate spots without a
        track are dropped. A table with a header but no rows gives an empty table (no tracks).

    Raises
    ------
    SptInputError
        Unreadable or empty file, missing or non-numeric columns, NaN coordinates, negative or
        non-integer frames, or a particle with two points in one frame.
    """
    path = _check_file(path)
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as fh:
            header = fh.readline()
    except UnicodeDecodeError:
        raise SptInputError(path, "not a text table (not UTF-8)") from None
    if "\x00" in header:
        raise SptInputError(path, "not a text table (binary data)")
    sep = max([",", ";", "\t"], key=header.count)
    if header.count(sep) == 0:
        raise SptInputError(
            path, "not a table: no comma, semicolon or tab in the header line (frame,x,y,particle)"
        )
    df = _parse_csv(path, sep, ".")
    if sep == ";" and _has_decimal_commas(df):
        df = _parse_csv(path, sep, ",")
    df.columns = [str(c).strip() for c in df.columns]
    df = df.loc[:, [c for c in df.columns if c and not c.startswith("Unnamed:")]]
    if df.columns.duplicated().any():  # e.g. "x" and "x " (pandas renames exact repeats)
        dup = sorted(set(df.columns[df.columns.duplicated()]))
        raise SptInputError(path, f"duplicate column(s) {', '.join(dup)}")
    for c in list(df.columns):
        if c.endswith(".1") and c[:-2] in df.columns:  # pandas' name for a repeated column
            if not df[c].equals(df[c[:-2]]):
                raise SptInputError(path, f"duplicate column(s) {c[:-2]} with different values")
            df = df.drop(columns=c)  # trackpy's to_csv writes 'frame' as index and column

    px_per_unit = 1.0
    if "POSITION_X" in df.columns or "TRACK_ID" in df.columns:
        df, px_per_unit = _from_trackmate(df, path, pixel_size_um, frame_interval_s)
    elif "frame" not in df.columns:
        time_col = next((c for c in ("time_s", "t") if c in df.columns), None)
        if time_col is not None:
            df = df.rename(columns={time_col: "_time_s"})
            df["frame"] = _frames_from_time(df, "_time_s", frame_interval_s, path)
            df = df.drop(columns="_time_s")
    tracks = check_track_table(df, path)
    if px_per_unit != 1.0:  # TrackMate positions in physical units
        tracks[["x", "y"]] *= px_per_unit
        tracks = check_track_table(tracks, path)
    return tracks


def _parse_csv(path: Path, sep: str, decimal: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, decimal=decimal, encoding="utf-8-sig", low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise SptInputError(path, f"cannot parse table ({_one_line(err)})") from None


def _has_decimal_commas(df: pd.DataFrame) -> bool:
    """Whether x/y (or TrackMate positions) are text like ``12,5`` that parse with a comma."""
    for c in ("x", "y", "POSITION_X", "POSITION_Y"):
        if c in df.columns and not pd.api.types.is_numeric_dtype(df[c]):
            text = df[c].dropna().astype(str).str.strip()
            if len(text) and text.str.fullmatch(r"[-+]?\d+,\d*([eE][-+]?\d+)?").any():
                return True
    return False


def _from_trackmate(
    df: pd.DataFrame, path: Path, pixel_size_um: float | None, frame_interval_s: float | None
) -> tuple[pd.DataFrame, float]:
    """Rename a TrackMate spots export to trackpy columns; return it and its pixels per unit."""
    units = None
    key = "POSITION_X" if "POSITION_X" in df.columns else "FRAME"
    if key in df.columns:
        # TrackMate >= 7 writes three extra header rows: names, short names, units.
        numeric = pd.to_numeric(df[key], errors="coerce")
        n_head = 0
        while (
            n_head < min(3, len(df))
            and pd.isna(numeric.iloc[n_head])
            and pd.notna(df[key].iloc[n_head])
        ):
            n_head += 1
        if n_head == 3 and "POSITION_X" in df.columns:
            units = str(df["POSITION_X"].iloc[2]).strip().strip("()").strip()
        df = df.iloc[n_head:].reset_index(drop=True)
    if "TRACK_ID" in df.columns:
        track = df["TRACK_ID"].astype(str).str.strip()
        untracked = df["TRACK_ID"].isna() | track.isin(["", "None", "nan", "NaN"])
        df = df.loc[~untracked].reset_index(drop=True)
    if "FRAME" not in df.columns and "POSITION_T" in df.columns:
        df = df.assign(FRAME=_frames_from_time(df, "POSITION_T", frame_interval_s, path))
    df = df.rename(columns=_TRACKMATE)
    if units is not None and units.lower() in ("pixel", "pixels"):
        return df, 1.0
    if pixel_size_um is None:
        raise SptInputError(
            path,
            "TrackMate positions are in physical units; pass --pixel-size UM to convert them "
            "to pixels",
        )
    um_per_unit = 1.0 if units is None else _to_um(1.0, units)
    if um_per_unit is None:
        raise SptInputError(path, f"unknown TrackMate position unit {units!r}")
    return df, um_per_unit / pixel_size_um


def _frames_from_time(
    df: pd.DataFrame, column: str, frame_interval_s: float | None, path: Path
) -> pd.Series:
    """Frame numbers from a time column in seconds."""
    if frame_interval_s is None:
        raise SptInputError(
            path,
            f"no frame column, only time column {column}; pass --frame-interval S to convert it",
        )
    t = pd.to_numeric(df[column], errors="coerce") / frame_interval_s
    if t.isna().any():
        raise SptInputError(path, f"column {column} is not numeric")
    frames = np.round(t)
    if (np.abs(t - frames) > 0.1).any():
        raise SptInputError(
            path, f"times in {column} are not multiples of the frame interval {frame_interval_s} s"
        )
    return frames.astype(np.int64)


# --------------------------------------------------------------------------- writing


@contextmanager
def _atomic(path: Path):
    """Yield a temporary path beside ``path``, renamed onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file 0600; give the result the permissions of a normal new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table atomically as ``.csv`` or ``.parquet`` (chosen by the suffix).

    The data go to a temporary file in the same folder, renamed onto ``path`` when complete, so
    an interrupted run never leaves a half-written table.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise SptInputError(path, f"unsupported table format {path.suffix!r}; use .csv or .parquet")
    with _atomic(path) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif not _write_csv_arrow(df, tmp):
            df.to_csv(tmp, index=False)
    return path


def _write_csv_arrow(df: pd.DataFrame, path: Path) -> bool:
    """Write ``df`` as CSV with Arrow's writer, ~8x quicker than pandas; False if it cannot.

    The file reads back (``pandas.read_csv``) to the same table as pandas' own CSV and looks
    the same: plain unquoted header and words, booleans as ``True``/``False``, missing values
    empty. Only float formatting may differ in form (``0.00001`` for ``1e-05``, ``2`` for
    ``2.0``: the same shortest round-trip value). Tables with text that would need quoting
    (commas, quotes, line breaks) or a float column of whole numbers only (it would read back
    as integers), or without pyarrow, are left to pandas.
    """
    try:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
    except ImportError:
        return False
    columns = {}
    for name, column in df.items():
        if not isinstance(name, str):
            return False
        categorical = isinstance(column.dtype, pd.CategoricalDtype)
        if not categorical and column.dtype.kind not in "iufO" and column.dtype != bool:
            return False  # dates, durations, nullable booleans...: Arrow formats them otherwise
        if column.dtype.kind == "f":
            # Arrow writes 2.0 as "2", which reads back as an integer column when every value
            # is a whole number (pandas writes "2.0"): such tables are left to pandas.
            values = column.to_numpy(dtype=float, na_value=np.nan)
            if len(values) and np.isfinite(values).all() and (values == np.round(values)).all():
                return False
        if column.dtype == bool:
            column = pd.Series(np.where(column, "True", "False"), index=column.index)
        columns[name] = column
    try:
        table = pa.Table.from_pandas(pd.DataFrame(columns, copy=False), preserve_index=False)
        options = pa_csv.WriteOptions(quoting_style="none", quoting_header="none")
        pa_csv.write_csv(table, str(path), write_options=options)
    except (pa.ArrowException, TypeError, ValueError):
        return False  # e.g. mixed-type columns or text that needs quotes: pandas writes it
    return True


def write_movie(
    path: str | os.PathLike,
    frames: Any,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    imagej: bool = False,
) -> Path:
    """Write a ``(T, Y, X)`` movie as OME-TIFF (default) or ImageJ TIFF with its calibration.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (written atomically).
    frames : array-like, shape (T, Y, X)
        uint8, uint16 or float32 frames (any other integer/float type is written as is for OME).
    pixel_size_um : float
        Pixel size in micrometres (OME ``PhysicalSizeX/Y``, ImageJ ``XResolution`` + ``unit``,
        and the TIFF resolution tags in centimetres).
    frame_interval_s : float
        Frame interval in seconds (OME ``TimeIncrement``, ImageJ ``finterval``).
    imagej : bool
        Write an ImageJ hyperstack instead of OME-TIFF.
    """
    path = Path(path)
    data = np.asarray(frames)
    if data.ndim != 3:
        raise ValueError(f"frames must have shape (T, Y, X), got {data.shape}")
    if not (pixel_size_um > 0 and frame_interval_s > 0):
        raise ValueError("pixel_size_um and frame_interval_s must be positive")
    if imagej and data.shape[2] == 1:  # tifffile writes these as one (T, Y) page, unreadable
        raise ValueError("ImageJ TIFF cannot hold frames 1 pixel wide; write OME-TIFF instead")
    with _atomic(path) as tmp:
        if imagej:
            tifffile.imwrite(
                tmp,
                data,
                imagej=True,
                resolution=(1.0 / pixel_size_um, 1.0 / pixel_size_um),
                metadata={"axes": "TYX", "unit": "micron", "finterval": frame_interval_s},
            )
        else:
            per_cm = 1e4 / pixel_size_um
            tifffile.imwrite(
                tmp,
                data,
                ome=True,
                photometric="minisblack",
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata={
                    "axes": "TYX",
                    "PhysicalSizeX": pixel_size_um,
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": pixel_size_um,
                    "PhysicalSizeYUnit": "µm",
                    "TimeIncrement": frame_interval_s,
                    "TimeIncrementUnit": "s",
                },
            )
    return path


def release_mapped_pages(frames: Any) -> None:
    """Unmap pages of a memory-mapped movie that have been read.

    Read pages of a file mapping stay in the process (and count in its resident memory) until
    unmapped; dropping them after each chunk keeps a movie larger than RAM within bounded memory.
    They remain in the OS page cache, so nothing is read twice from disk. Anything that is not
    a :class:`numpy.memmap` (or a view of one) is left alone.

    Parameters
    ----------
    frames : array-like
        E.g. :attr:`Movie.frames`.
    """
    mapping = getattr(frames, "_mmap", None)
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass
