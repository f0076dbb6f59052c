"""Minimal TOML writer for nested tables of scalars.

The standard library only reads TOML (tomllib); configurations are written with this.
"""

from __future__ import annotations

from typing import Any


def dumps(data: dict[str, Any]) -> str:
    """Return TOML for ``{section: {key: value or {subsection}}}``, omitting ``None`` values."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {}
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, dict):
                nested[key] = value
            else:
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
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_to_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
