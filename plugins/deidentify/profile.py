"""The table and a route's options, compiled once into tag -> action.

Actions (PS3.15 E.1-1 legend), as the walker applies them:

- ``X`` remove; ``Z`` zero length (an empty sequence for SQ); ``D`` a dummy value of the
  VR (a sequence: kept, its items de-identified, free text and names inside replaced);
- ``K`` keep (a sequence: kept, its items de-identified); ``U`` a keyed UID;
- ``C`` clean: dates shifted (Modified Dates), free text with the object's own
  identifiers masked, AE titles keyed, a sequence kept with its items cleaned; for a VR
  that cannot be cleaned (a time of day is kept, as the shift is whole days) see
  :mod:`.values`;
- ``P`` the keyed pseudonym (Patient's Name and Patient ID, whose Z or D it implements).

Where several enabled options give an action for one row (a detector calibration date
under both Retain Device Identity and Modified Dates), clean wins over keep: each option
then got what it asked for, and no date leaks in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from pydicom.datadict import DicomDictionary, keyword_for_tag

from . import table
from .choice import choose

PSEUDONYMIZED = ("PatientName", "PatientID")


@dataclass(frozen=True)
class Profile:
    actions: dict  # tag -> action, at the top level of the data set
    nested: dict  # tag -> action, inside sequence items
    fallback: dict  # tag -> the Basic Profile action, for C where a VR cannot be cleaned
    curve: str  # 50xx groups
    overlay_data: str  # 60xx3000 (X removes the whole overlay plane: its other elements need the data)
    overlay_comments: str  # 60xx4000
    private: str  # X, or C: keep the configured safe private attributes

    @cached_property
    def plain_keep(self) -> frozenset:
        """Standard attributes (plain ``int`` tags) that no action names at the top level:
        kept as they are unless a sequence (the walk looks into it) or of unknown VR. Not
        pixel data, group lengths, curves (50xx) or overlays (60xx): those the walk decides."""
        return _plain(self.actions)

    @cached_property
    def plain_keep_nested(self) -> frozenset:
        """:attr:`plain_keep` inside sequence items."""
        return _plain(self.nested)

    @cached_property  # once per profile (it reads every action), not per object
    def cleans(self) -> bool:
        """Whether any action cleans text (so the object's identifiers must be known)."""
        return "C" in (self.curve, self.overlay_data, self.overlay_comments) or "C" in self.actions.values()


def _plain(actions: dict) -> frozenset:
    return frozenset(
        t for t in DicomDictionary
        if t not in actions and not (t >> 16) & 1 and t >> 16 != 0x7FE0 and t & 0xFFFF
        and not 0x5000 <= t >> 16 <= 0x601E)


def resolve(row: table.Row, enabled: set[str], keyword: str | None = None, nested: bool = False) -> str:
    """The action for one row under the enabled options (names of OPTION_COLUMNS values)."""
    given = [action for col, action in row.options.items() if table.OPTION_COLUMNS[col] in enabled]
    if given:
        return "C" if "C" in given else "K"
    return choose(row.basic, keyword or "", nested)


def compile_profile(enabled: set[str], pseudonyms: bool = True) -> Profile:
    actions, nested, fallback = {}, {}, {}
    special = {}
    for row in table.rows():
        keyword = keyword_for_tag(row.tag) if row.tag is not None else None
        if row.tag is None:
            special[row.id] = resolve(row, enabled, keyword)
            continue
        for level, table_ in ((False, actions), (True, nested)):
            action = resolve(row, enabled, keyword, level)
            if keyword in PSEUDONYMIZED and action in ("Z", "D") and pseudonyms:
                action = "P"
            table_[row.tag] = action
            if action == "C":
                fallback[row.tag] = choose(row.basic, keyword or "")  # C's VRs never differ by level
    return Profile(actions, nested, fallback, special[table.CURVE_DATA], special[table.OVERLAY_DATA],
                   special[table.OVERLAY_COMMENTS], special[table.PRIVATE])
