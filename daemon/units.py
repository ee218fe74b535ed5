"""Durations ("500ms", "2s", "5m", "1h", "1d") and sizes ("512MiB", "10GB") for config."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, None: 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_duration(value) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"invalid duration {value!r} (use e.g. 500ms, 30s, 5m, 1h, 1d)")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


def parse_size(value) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 500MiB or 10GB")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"invalid size {value!r} (use e.g. 500MiB, 10GB, 2TiB)")
        unit = m.group(2).lower() if m.group(2) else None
        size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if size < 0:
        raise ValueError("size must not be negative")
    return size


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda v: v, return_type=float),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "pattern": _DURATION.pattern}],
                    "description": "seconds, or a string such as 500ms, 30s, 5m, 1h, 1d"}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": _SIZE.pattern}],
                    "description": "bytes, or a string such as 500MiB, 10GB"}),
]


def _absolute(path):
    from pathlib import Path

    return Path(path).expanduser().absolute()


from pathlib import Path  # noqa: E402
from pydantic import AfterValidator  # noqa: E402

#: A filesystem path; relative paths are taken from the working directory at load time.
AbsPath = Annotated[Path, AfterValidator(_absolute)]
