"""The run configuration: one :class:`PipelineConfig` gathering each stage's frozen dataclass.

Reads and writes TOML so that the configuration of every run can be saved beside its results.
Unknown keys are refused rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from spt import _toml
from spt.detect import DetectConfig
from spt.errors import SptInputError
from spt.link import LinkConfig
from spt.segment import SegmentConfig
from spt.stages import StageConfig


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
    """

    pixel_size_um: float | None = None
    frame_interval_s: float | None = None
    channel: int | None = None
    z: int | None = None


@dataclass(frozen=True)
class PipelineConfig:
    """Every parameter of a run, one section per pipeline stage."""

    movie: MovieConfig = field(default_factory=MovieConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    stages: StageConfig = field(default_factory=StageConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the configuration as nested plain dictionaries (``None`` values omitted)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)}

    def to_toml(self) -> str:
        """Return the configuration as TOML text."""
        return _toml.dumps(self.to_dict())

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str | os.PathLike | None = None
    ) -> PipelineConfig:
        """Build a configuration from nested dictionaries, refusing unknown sections and keys."""
        kwargs = {}
        sections = {f.name: f for f in fields(cls)}
        for name, values in data.items():
            if name not in sections:
                raise SptInputError(
                    source, f"unknown config section [{name}]; known: {', '.join(sections)}"
                )
            section_cls = type(getattr(cls(), name))
            kwargs[name] = _build_section(section_cls, name, values, source)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> PipelineConfig:
        """Read a configuration from a TOML file."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SptInputError(path, "config file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise SptInputError(path, f"not valid TOML ({err})") from None
        return cls.from_dict(data, source=path)


def _build_section(section_cls: type, name: str, values: Any, source: Any) -> Any:
    if not isinstance(values, dict):
        raise SptInputError(source, f"config section [{name}] must be a table of key = value")
    known = {f.name: f for f in fields(section_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SptInputError(
            source, f"unknown key(s) in [{name}]: {', '.join(unknown)}; known: {', '.join(known)}"
        )
    converted = {}
    for key, value in values.items():
        default = getattr(section_cls(), key)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if is_dataclass(default):
            value = _build_section(type(default), f"{name}.{key}", value, source)
        converted[key] = value
    try:
        return section_cls(**converted)
    except (TypeError, ValueError) as err:
        raise SptInputError(source, f"invalid value in [{name}]: {err}") from None
