"""Destination path templates: ``{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``.

Attribute values are sanitized so no value can leave the destination root: separators,
NUL and control characters become ``_``, ``.``/``..`` and leading dots are neutralised,
and over-long components are cut (with a hash suffix so distinct values stay distinct).
"""

from __future__ import annotations

import hashlib
import string
from pathlib import PurePosixPath

from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

DEFAULT_TEMPLATE = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
MAX_COMPONENT = 120
MISSING = "UNKNOWN"


def template_fields(template: str) -> list[str]:
    """Validate a template; return the attribute keywords it uses."""
    if not template or template.startswith("/"):
        raise ValueError("template must be a relative path")
    fields = []
    for literal, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name:
            raise ValueError("'{}' names no attribute: write '{Keyword}'")
        if spec or conv:
            raise ValueError(f"'{{{name}}}': format specs and conversions are not supported")
        if tag_for_keyword(name) is None:
            raise ValueError(f"'{{{name}}}' is not a DICOM keyword")
        fields.append(name)
    literal_parts = PurePosixPath(template.replace("{", "").replace("}", "")).parts
    if ".." in literal_parts:
        raise ValueError("template must not contain '..'")
    if not _parts(template.format(**{name: "x" for name in fields})):
        raise ValueError("template renders no file path")
    return fields


def _parts(rendered: str) -> list[str]:
    return [p for p in PurePosixPath(rendered).parts if p not in ("", "/", ".")]


def sanitize_component(value: str) -> str:
    """One path component from an attribute value; never a separator, '..' or empty."""
    out = []
    for ch in value:
        if ch in "/\\\0" or ord(ch) < 32 or ord(ch) == 127:
            out.append("_")
        else:
            out.append(ch)
    s = "".join(out).strip()
    s = s.lstrip(".") if set(s) != {"."} else "_" * len(s)
    if not s:
        s = "_"
    encoded = s.encode("utf-8")
    if len(encoded) > MAX_COMPONENT:
        digest = hashlib.sha256(encoded).hexdigest()[:12]
        s = encoded[: MAX_COMPONENT - 13].decode("utf-8", "ignore") + "-" + digest
    return s


def _value(header, keyword: str) -> str:
    if keyword not in header:
        return MISSING
    v = header[keyword].value
    if v is None or v == "":
        return MISSING
    if isinstance(v, (MultiValue, list, tuple)):
        v = "\\".join(str(x) for x in v)
    elif isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    return str(v)


def render(template: str, header) -> PurePosixPath:
    """The relative path for ``header``: every substituted value is one safe component."""
    values = {name: sanitize_component(_value(header, name)) for name in template_fields(template)}
    rendered = template.format(**values)
    parts = _parts(rendered)
    safe = [sanitize_component(p) if p == ".." else p for p in parts]
    if not safe:
        raise ValueError("template produced an empty path")
    return PurePosixPath(*safe)
