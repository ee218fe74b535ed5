"""Choosing among a row's alternatives (X/Z, X/D, X/Z/D, Z/D, X/Z/U*), PS3.15 E.3.

The standard: remove (X) unless the IOD needs the attribute; if it is Type 2 there, zero
length (Z); if Type 1, a dummy value (D), or for X/Z/U* a sequence kept with its instance
UIDs replaced (U). Which one applies depends on the attribute's Type in the object's IOD.

pacsguard does not carry the standard's module tables. It keeps this short list instead:
for each attribute of Table E.1-1 that has alternatives, the strongest Type it has in the
composite IODs we know of (at the top level or inside a sequence item), and takes the
alternative that satisfies that Type in all of them. So one rule per attribute, the same
in every object: where an attribute is Type 1 in some IOD it gets a dummy everywhere
(still free of identity), where Type 2 it is emptied, and everything else is removed.
The dciodvfy comparison in the tests checks the list against the bundled corpus.

An attribute of Type 2 whose row offers no Z (X/D) gets the dummy.
"""

from __future__ import annotations

#: Attributes with alternatives that are Type 1 in some IOD, with where.
TYPE_1 = {
    "AcquisitionDateTime": "Waveform Identification module",
    "ContentDate": "SR Document General, Waveform Identification, Multi-frame Functional Groups modules",
    "ContentTime": "SR Document General, Waveform Identification, Multi-frame Functional Groups modules",
    "DeviceSerialNumber": "Enhanced General Equipment module",
    "SeriesDate": "PET Series module",
    "SeriesTime": "PET Series module",
    "ReferencedImageSequence": "Referenced Series Sequence items (Presentation State, Key Object Selection)",
    "SourceImageSequence": "Derivation Image Sequence items (Derivation Image macro)",
}

#: Attributes with alternatives that are Type 2 (never Type 1) in some IOD, with where.
TYPE_2 = {
    "AcquisitionContextSequence": "Acquisition Context module",
    "AcquisitionDate": "PET Image module",
    "AcquisitionTime": "PET Image module",
    "ContentCreatorName": "Presentation State Identification module",
    "ContrastBolusAgent": "Contrast/Bolus module",
    "FirstTreatmentDate": "RT Treatment Summary Record module",
    "MostRecentTreatmentDate": "RT Treatment Summary Record module",
    "PatientID": "Patient module",
    "PatientSexNeutered": "Patient module (2C: animals)",
    "ReferencedStudySequence": "Referenced Request Sequence items (SR Document General)",
    "RequestedProcedureDescription": "Referenced Request Sequence items (SR Document General)",
    "ReviewerName": "Approval module (2C)",
    "RTPlanDate": "RT General Plan module",
    "RTPlanTime": "RT General Plan module",
    "TreatmentDate": "RT General Treatment Record module",
    "TreatmentTime": "RT General Treatment Record module",
    "TreatmentMachineName": "Beam Sequence items (RT Beams module)",
}


def choose(basic: str, keyword: str) -> str:
    """One action (X, Z, D or U) for a row's Basic Profile entry with alternatives."""
    alternatives = basic.split("/")
    if len(alternatives) == 1:
        return basic
    if keyword in TYPE_1:
        return "U" if "U*" in alternatives else "D"
    if keyword in TYPE_2:
        return "Z" if "Z" in alternatives else "D"
    return alternatives[0]
