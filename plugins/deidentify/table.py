"""DICOM PS3.15 Table E.1-1 as shipped data (see PROVENANCE.md beside this file).

The table is read once per process. Each row says what the Basic Application Level
Confidentiality Profile does to one attribute and, per option column, what an option
changes. Three rows name repeating groups (curve data 50xx, overlay data and comments
60xx) and one names every private attribute; all the others name one tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

FILE = "ps3.15-confidentiality-profile-attributes.json"

#: The table's option columns -> the stage option (an Options field) that enables each.
OPTION_COLUMNS = {
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnUIDsOpt": "retain_uids",
    "rtnSafePrivOpt": "retain_safe_private",
}

#: Row ids of the rows that do not name a single tag.
CURVE_DATA = "50xxxxxx"
OVERLAY_DATA = "60xx3000"
OVERLAY_COMMENTS = "60xx4000"
PRIVATE = "ggggeeee-where-gggg-is-odd"
SPECIAL = (CURVE_DATA, OVERLAY_DATA, OVERLAY_COMMENTS, PRIVATE)


@dataclass(frozen=True)
class Row:
    name: str
    id: str  # 8 hex digits, or one of SPECIAL
    basic: str  # D, Z, X, K, C, U or a combination such as X/Z/D
    options: dict  # option column -> action (only the columns the standard fills)

    @property
    def tag(self) -> int | None:
        return None if self.id in SPECIAL else int(self.id, 16)


@lru_cache(maxsize=1)
def rows() -> tuple[Row, ...]:
    raw = json.loads(resources.files(__package__).joinpath(FILE).read_text(encoding="utf-8"))
    out = []
    for r in raw:
        opts = {col: r[col] for col in OPTION_COLUMNS if r.get(col)}
        out.append(Row(r["name"], r["id"].lower(), r["basicProfile"], opts))
    return tuple(out)
