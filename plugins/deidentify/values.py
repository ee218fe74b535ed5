"""Replacement values: dummies per VR, shifted dates, masked free text.

A dummy (action D) is a fixed value that is valid for the VR and says nothing about the
patient: ``ANONYMIZED`` for text and names, 1900-01-01 for dates, midnight for times, 0
for numbers, zero bytes for binary VRs. UIDs get keyed UIDs instead (:mod:`.keyed`), so
references stay consistent.

Clean (action C) keeps what it can:

- a date (DA) or date-time (DT) moves by the patient's day offset (Modified Dates);
  partial DT values keep their precision, times and time zone offsets stay;
- a time of day (TM) is kept: the shift is a whole number of days;
- free text keeps its words, except the object's own identifiers (names and their
  components, IDs, accession number, birth date, institution and station names, ... as
  recorded in the object before it was de-identified), each masked with ``X`` of its
  length, so every VR length rule still holds. Text naming someone the header does not
  name is not found: that limit is the reason Clean Descriptors is an option.
"""

from __future__ import annotations

import datetime as dt
import re

DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D",
    "IS": "0", "DS": "0", "UR": "urn:oid:2.25.0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
}
BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
#: Free text and names: replaced or masked where no row of the table covers them, inside
#: sequences that the profile dummies or cleans (SR content, graphic annotations).
FREE_TEXT_VRS = {"LT", "ST", "UT", "UC", "PN"}


def dummy(vr: str):
    if vr in BINARY_VRS:
        return b"\0" * 8
    if vr in TEXT_VRS:
        return DUMMY_TEXT
    return _DUMMY.get(vr, DUMMY_TEXT)


_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(.*)$")


def shift_da(value: str, days: int) -> str | None:
    """The date moved by ``days``, or None if it is not a date."""
    m = _DA.match(value.strip())
    if not m:
        return None
    try:
        d = dt.date(int(m[1]), int(m[2]), int(m[3])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return d.strftime("%Y%m%d")


def shift_dt(value: str, days: int) -> str | None:
    """The date-time moved by ``days`` (whole days: the time stays), or None."""
    m = _DT.match(value.strip())
    if not m or (m[3] and not m[2]):
        return None
    try:
        d = dt.date(int(m[1]), int(m[2] or 1), int(m[3] or 1)) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    if m[4] and not m[3]:
        return None  # a time without a full date
    date = d.strftime("%Y%m%d")[: 4 + (2 if m[2] else 0) + (2 if m[3] else 0)]
    return date + m[4]


def identifier_pattern(values: list[str]) -> re.Pattern | None:
    """One case-insensitive pattern matching any of ``values`` as a whole word."""
    words = sorted({v.strip() for v in values if len(v.strip()) >= 2}, key=len, reverse=True)
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.IGNORECASE)


def mask(text: str, pattern: re.Pattern | None) -> str:
    if pattern is None or not text:
        return text
    return pattern.sub(lambda m: "X" * len(m.group()), text)
