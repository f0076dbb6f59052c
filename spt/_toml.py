"""Minimal TOML writer for nested tables of scalars.

The standard library only reads TOML (tomllib); configurations are written with this.
"""

from __future__ import annotations

import math
from typing import Any


def dumps(data: dict[str, Any], comments: dict[str, dict[str, str]] | None = None) -> str:
    """Return TOML for ``{section: {key: value or {subsection}}}``.

    Parameters
    ----------
    data : dict
        Tables of values; a nested dict becomes a sub-table ``[section.key]``.
    comments : dict, optional
        ``{table name: {key: text}}``; each text is written as ``# text`` above its key, and the
        text under the key ``""`` above the table header. With comments, ``None`` values are
        written as a commented-out line (TOML has no null) so that every parameter is listed;
        without, they are omitted.
    """
    lines: list[str] = []
    notes = comments or {}

    def comment(text: str, indent: str = "") -> None:
        for line in text.splitlines():
            lines.append(f"{indent}# {line}".rstrip())

    def table(name: str, values: dict[str, Any]) -> None:
        table_notes = notes.get(name, {})
        if table_notes.get(""):
            comment(table_notes[""])
        lines.append(f"[{name}]")
        nested = {}
        for key, value in values.items():
            if isinstance(value, dict):
                nested[key] = value
                continue
            if key in table_notes:
                comment(table_notes[key])
            if value is None:
                if comments is not None:
                    lines.append(f"# {key} =   (not set)")
                continue
            lines.append(f"{key} = {value_to_toml(value)}")
        lines.append("")
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    for name, values in data.items():
        table(name, values)
    return "\n".join(lines)


def value_to_toml(value: Any) -> str:
    """Return one value as TOML (bool, int, float, str, list/tuple)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_to_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
