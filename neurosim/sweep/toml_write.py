"""A small TOML writer for model files (the project reads TOML with tomllib, which cannot
write). It writes what model files hold: top-level tables (``[training]``), arrays of tables
(``[[population]]``), and inside them strings, booleans, integers, finite floats, arrays and
inline tables. ``tomllib.loads(dumps(data)) == data`` for every such document; comments and
the key order within the original text are not kept (keys keep their order in ``data``)."""
from __future__ import annotations

import json
import math
import re

from ..errors import ConfigError

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes (TOML shares them: ``\\n``, ``\\uXXXX``) for
    the control characters JSON escapes (U+0000-U+001F), and ``\\u007f`` for DEL, which
    JSON leaves raw but TOML forbids."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"TOML keys are text, got {key!r}.")
    return key if _BARE.match(key) else _string(key)


def value_text(value) -> str:
    """One TOML value (scalars, arrays, inline tables) as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{value!r} is not a finite number; model files hold finite ones.")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {value_text(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} as TOML; use text, "
                      "numbers, booleans, arrays or tables.")


def _body(table: dict) -> list[str]:
    return [f"{_key(k)} = {value_text(v)}" for k, v in table.items()]


def dumps(data: dict) -> str:
    """A TOML document from a parsed one: top-level dicts become ``[table]`` sections,
    top-level lists of dicts ``[[table]]`` sections, anything below them inline."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items()
               if not isinstance(v, dict) and not _table_array(v)}
    lines += _body(scalars)
    for key, value in data.items():
        if key in scalars:
            continue
        if isinstance(value, dict):
            lines += ["" if lines else None, f"[{_key(key)}]", *_body(value)]
        else:
            for item in value:
                lines += ["" if lines else None, f"[[{_key(key)}]]", *_body(item)]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _table_array(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


__all__ = ["dumps", "value_text"]
