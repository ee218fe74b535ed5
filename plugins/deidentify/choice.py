"""Choosing among a row's alternatives (X/Z, X/D, X/Z/D, Z/D, X/Z/U*), PS3.15 E.3.

The standard: remove (X) unless the IOD needs the attribute; if it is Type 2 there, zero
length (Z); if Type 1, a dummy value (D), or for X/Z/U* a sequence kept with its instance
UIDs replaced (U). Which one applies depends on the attribute's Type in the object's IOD.

pacsguard does not carry the standard's module tables. It keeps this short list instead:
for each attribute of Table E.1-1 that has alternatives, the strongest Type it has in the
composite IODs we know of, and takes the alternative that satisfies that Type in all of
them. So one rule per attribute (and level, for a few sequences), the same in every
object: where an attribute is Type 1 in some IOD it gets a dummy everywhere (still free of
identity), where Type 2 it is emptied, and everything else is removed. The dciodvfy
comparison in the tests checks the list against the bundled corpus.

An attribute of Type 2 whose row offers no Z (X/D) gets the dummy.
"""

from __future__ import annotations

#: Where a Type holds: at the top level of the data set, inside sequence items, or both.
#: It matters for sequences only: an empty Type 3 sequence is not allowed, so a sequence
#: that is Type 2 only inside items is removed at the top level (X) and emptied inside (Z).
TOP, NESTED, ANY = "top", "nested", "any"

#: Attributes with alternatives that are Type 1 in some IOD: (where, scope).
TYPE_1 = {
    "AcquisitionDateTime": ("Waveform Identification module", ANY),
    "ContentDate": ("SR Document General, Waveform Identification, Multi-frame Functional Groups modules", ANY),
    "ContentTime": ("SR Document General, Waveform Identification, Multi-frame Functional Groups modules", ANY),
    "DeviceSerialNumber": ("Enhanced General Equipment module", ANY),
    "SeriesDate": ("PET Series module", ANY),
    "SeriesTime": ("PET Series module", ANY),
    "ReferencedImageSequence": ("Referenced Series Sequence items (Presentation State, Key Object Selection)", ANY),
    "SourceImageSequence": ("Derivation Image Sequence items (Derivation Image macro)", ANY),
    # Type 2 in SR Document Series, Type 3 in General Series: neither removed nor empty
    # satisfies both, a kept sequence (its items de-identified) does
    "ReferencedPerformedProcedureStepSequence": ("SR Document Series (2), General Series (3) modules", TOP),
}

#: Attributes with alternatives that are Type 2 (never Type 1) in some IOD: (where, scope).
TYPE_2 = {
    "AcquisitionContextSequence": ("Acquisition Context module", TOP),
    "AcquisitionDate": ("PET Image module", ANY),
    "AcquisitionTime": ("PET Image module", ANY),
    "ContentCreatorName": ("Presentation State Identification module", ANY),
    "ContrastBolusAgent": ("Contrast/Bolus module", ANY),
    "FirstTreatmentDate": ("RT Treatment Summary Record module", ANY),
    "MostRecentTreatmentDate": ("RT Treatment Summary Record module", ANY),
    "OperatorsName": ("RT Series module", ANY),
    "PatientID": ("Patient module", ANY),
    "PatientSexNeutered": ("Patient module (2C: animals)", ANY),
    "ReferencedStudySequence": ("Referenced Request Sequence items (SR Document General module)", NESTED),
    "RequestedProcedureDescription": ("Referenced Request Sequence items (SR Document General module)", ANY),
    "ReviewerName": ("Approval module (2C)", ANY),
    "RTPlanDate": ("RT General Plan module", ANY),
    "RTPlanTime": ("RT General Plan module", ANY),
    "TreatmentDate": ("RT General Treatment Record module", ANY),
    "TreatmentTime": ("RT General Treatment Record module", ANY),
    "TreatmentMachineName": ("Beam Sequence items (RT Beams module)", ANY),
}


def _holds(entry, nested: bool) -> bool:
    return entry is not None and (entry[1] == ANY or entry[1] == (NESTED if nested else TOP))


def choose(basic: str, keyword: str, nested: bool = False) -> str:
    """One action (X, Z, D or U) for a row's Basic Profile entry with alternatives, at the
    top level of the data set or inside a sequence item (``nested``)."""
    alternatives = basic.split("/")
    if len(alternatives) == 1:
        return basic
    if _holds(TYPE_1.get(keyword), nested):
        return "U" if "U*" in alternatives else "D"
    if _holds(TYPE_2.get(keyword), nested):
        return "Z" if "Z" in alternatives else "D"
    return alternatives[0]
