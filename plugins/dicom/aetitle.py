"""The AE title type shared by the DICOM source and destination options."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator


def check_ae_title(value) -> str:
    """1-16 printable ASCII characters other than backslash; surrounding spaces dropped."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("an AE title is text")
    title = value.strip()
    if not 1 <= len(title) <= 16:
        raise ValueError("an AE title has 1 to 16 characters (leading and trailing spaces do not count)")
    if any(not (0x20 <= ord(c) <= 0x7E) or c == "\\" for c in title):
        raise ValueError("an AE title uses printable ASCII characters other than backslash")
    return title


AETitle = Annotated[str, BeforeValidator(check_ae_title)]
