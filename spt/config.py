"""The run configuration: one :class:`PipelineConfig` gathering each stage's frozen dataclass.

Reads and writes TOML so that the configuration of every run can be saved beside its results.
Unknown keys and values of the wrong type are refused rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from spt import _toml
from spt.detect import DetectConfig
from spt.errors import SptInputError
from spt.flow import FlowConfig
from spt.guided import GuidedConfig
from spt.link import LinkConfig
from spt.segment import SegmentConfig
from spt.stages import StageConfig

__all__ = ["MovieConfig", "OutputConfig", "PipelineConfig", "TABLE_FORMATS", "build_dataclass"]

#: Table formats ``spt run`` can write.
TABLE_FORMATS: tuple[str, ...] = ("csv", "parquet")


@dataclass(frozen=True)
class MovieConfig:
    """How to read a movie.

    Attributes
    ----------
    pixel_size_um : float or None
        Pixel size in micrometres; overrides the file's metadata when given.
    frame_interval_s : float or None
        Time between frames in seconds; overrides the file's metadata when given.
    channel : int or None
        Channel to track in a multi-channel movie.
    z : int or None
        Z-plane to track in a movie with several planes.
    chunk_frames : int
        Frames read and detected at a time; pixel memory per worker is about
        ``chunk_frames * Y * X * 4`` bytes, however long the movie.
    """

    pixel_size_um: float | None = None
    frame_interval_s: float | None = None
    channel: int | None = None
    z: int | None = None
    chunk_frames: int = 64

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        for name in ("pixel_size_um", "frame_interval_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class OutputConfig:
    """What ``spt run`` writes.

    Attributes
    ----------
    table_format : str
        ``"csv"`` or ``"parquet"`` (smaller and faster for large tables; needs pyarrow).
    report : bool
        Write each movie's figures and report.html, and the batch report; false writes the
        tables only (faster for very large batches).
    """

    table_format: str = "csv"
    report: bool = True

    def __post_init__(self) -> None:
        if self.table_format not in TABLE_FORMATS:
            raise ValueError(
                f"table_format must be one of {', '.join(TABLE_FORMATS)}, got {self.table_format!r}"
            )


@dataclass(frozen=True)
class PipelineConfig:
    """Every parameter of a run, one section per pipeline stage.

    Attributes
    ----------
    movie : MovieConfig
        Calibration overrides, channel/plane choice and chunk size.
    detect : DetectConfig
        Spot detection.
    link : LinkConfig
        Linking spots into tracks.
    guided : GuidedConfig
        Track-guided re-detection after linking (fills gaps, extends and joins tracks).
    flow : FlowConfig
        The flow pass at the end of guided re-detection (seeds and follows tracks of particles
        carried by flow along their straight line).
    segment : SegmentConfig
        Motion-state segmentation.
    stages : StageConfig
        Delivery-stage classification.
    output : OutputConfig
        Output table format and reports.
    """

    movie: MovieConfig = field(default_factory=MovieConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    guided: GuidedConfig = field(default_factory=GuidedConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    stages: StageConfig = field(default_factory=StageConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the configuration as nested plain dictionaries (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_toml(self, *, comments: bool = False) -> str:
        """Return the configuration as TOML text.

        Parameters
        ----------
        comments : bool
            Precede every key with its description (from the dataclass docstrings) and list
            unset (``None``) parameters as commented-out lines.
        """
        return _toml.dumps(self.to_dict(), _docs(type(self)) if comments else None)

    def digest(self) -> str:
        """SHA-256 of the configuration (hex): equal digests mean identical parameters."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str | os.PathLike | None = None
    ) -> PipelineConfig:
        """Build a configuration from nested dictionaries; missing keys keep their defaults.

        Raises
        ------
        SptInputError
            Unknown section or key, a value of the wrong type, or a value the section refuses.
        """
        return build_dataclass(cls, "", data, source)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> PipelineConfig:
        """Read a configuration from a TOML file."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SptInputError(path, "config file not found") from None
        except IsADirectoryError:
            raise SptInputError(path, "is a folder, not a config file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise SptInputError(path, f"not valid TOML ({err})") from None
        return cls.from_dict(data, source=path)

    def with_overrides(self, assignments: list[str]) -> PipelineConfig:
        """Return a copy with ``"section.key=value"`` assignments applied (``--set``).

        ``value`` is TOML (``4``, ``0.5``, ``true``, ``"mle"``, ``[1, 2]``); a bare word is taken
        as a string.
        """
        data = self.to_dict()
        for text in assignments:
            match = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*=\s*(.*?)\s*", text)
            if not match or "." not in match.group(1):
                raise SptInputError(
                    "--set", f"expected SECTION.KEY=VALUE (e.g. detect.threshold=4), got {text!r}"
                )
            *path, key = match.group(1).split(".")
            value = _parse_value(match.group(2))
            table = data
            for part in path:
                if not isinstance(table.get(part), dict):
                    table = None
                    break
                table = table[part]
            if table is None:
                raise SptInputError(
                    "--set", f"unknown config section [{'.'.join(path)}] in {text!r}"
                )
            table[key] = value
        return build_dataclass(type(self), "", data, "--set")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ----------------------------------------------------------------------------- building


def build_dataclass(cls: type, name: str, values: Any, source: Any) -> Any:
    """Instantiate dataclass ``cls`` from a dict (as read from TOML), checking every value.

    Handles any frozen-dataclass fields generically by their type hints: ``int``, ``float``
    (TOML integers accepted), ``bool``, ``str``, ``tuple[...]`` (from lists), ``X | None``,
    ``Literal[...]`` and nested dataclasses (sub-tables). Missing keys keep their defaults.

    Parameters
    ----------
    cls : type
        The dataclass.
    name : str
        Its table name in messages, e.g. ``"detect"`` (empty for the top level).
    values : dict
        Key -> value.
    source : str or path-like or None
        The file (or option) the values come from, named in error messages.

    Raises
    ------
    SptInputError
        Unknown keys, values of the wrong type, or values the dataclass refuses.
    """
    where = f"[{name}]" if name else "the config"
    if not isinstance(values, dict):
        raise SptInputError(source, f"{where} must be a table of key = value")
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        what = "section(s)" if not name else "key(s) in " + where
        raise SptInputError(
            source, f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}"
        )
    hints = _hints(cls)
    converted = {}
    for key, value in values.items():
        full = f"{name}.{key}" if name else key
        hint = hints.get(key, Any)
        converted[key] = _convert(value, hint, full, source)
    try:
        return cls(**converted)
    except (TypeError, ValueError) as err:
        raise SptInputError(source, f"invalid value in {where}: {err}") from None


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
        instance = cls()
        return {f.name: type(getattr(instance, f.name)) for f in fields(cls)}


_NON_FINITE = {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan"}


def _convert(value: Any, hint: Any, key: str, source: Any) -> Any:
    """Check ``value`` (as read from TOML) against type ``hint`` and convert it."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is object:
        return tuple(value) if isinstance(value, list) else value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _convert(value, arm, key, source)
            except SptInputError as err:
                errors.append(err)
        raise errors[0] if errors else SptInputError(source, f"{key} cannot be set")
    if origin is typing.Literal:
        if value in args:
            return value
        raise SptInputError(
            source, f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}"
        )
    if is_dataclass(hint):
        return build_dataclass(hint, key, value, source)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise SptInputError(source, f"{key} must be a list, got {value!r}")
        if not args:
            items = list(value)
        elif origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise SptInputError(
                    source, f"{key} must be a list of {len(args)} values, got {len(value)}"
                )
            items = [_convert(v, a, key, source) for v, a in zip(value, args, strict=True)]
        else:
            items = [_convert(v, args[0], key, source) for v in value]
        return tuple(items) if (origin or hint) is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SptInputError(source, f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SptInputError(source, f"{key} must be a whole number, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and value.strip().lower() in _NON_FINITE:
            number = float(value)  # as written in JSON, e.g. a provenance file
        if number is None or math.isnan(number):
            # inf is meaningful for some keys (e.g. a forbidden transition); NaN never is.
            raise SptInputError(source, f"{key} must be a number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise SptInputError(source, f"{key} must be a string, got {value!r}")
    return value


# ----------------------------------------------------------------------------- documentation


def _docs(cls: type, prefix: str = "") -> dict[str, dict[str, str]]:
    """Per-table key descriptions from the numpydoc ``Attributes`` sections of the dataclasses."""
    out: dict[str, dict[str, str]] = {}
    instance = cls()
    own = _attribute_docs(cls)
    for f in fields(cls):
        value = getattr(instance, f.name)
        if is_dataclass(value):
            table = f"{prefix}{f.name}"
            sub = _docs(type(value), f"{table}.")
            sub.setdefault(table, {})
            if f.name in own:
                sub[table][""] = own[f.name]
            out.update(sub)
    if prefix:
        out.setdefault(prefix.rstrip("."), {}).update(
            {k: v for k, v in own.items() if not is_dataclass(getattr(instance, k, None))}
        )
    return out


def _attribute_docs(cls: type) -> dict[str, str]:
    """``{attribute: description}`` parsed from a numpydoc ``Attributes`` section."""
    lines = (cls.__doc__ or "").expandtabs().splitlines()
    docs: dict[str, str] = {}
    base: int | None = None  # indentation of the attribute-name lines
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        for n in names:
            docs[n] = " ".join(text).replace("``", "").strip()

    for i, line in enumerate(lines):
        stripped = line.strip()
        underline = i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}
        if base is None:
            if stripped == "Attributes" and underline:
                base = -1
            continue
        if not stripped or set(stripped) == {"-"}:
            continue
        if underline:  # the next section starts
            break
        indent = len(line) - len(line.lstrip())
        if base < 0:
            base = indent
        if indent <= base:
            flush()
            names = [n.strip() for n in stripped.split(":", 1)[0].split(",")]
            text = []
        else:
            text.append(stripped)
    flush()
    return docs
