"""Clean Recognizable Visual Features (PS3.15 E.3.2): photographs are quarantined unless the
route allows them (the option not claimed) or vouches that they are cleaned (claimed, 113102)."""

from __future__ import annotations

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import VideoPhotographicImageStorage, VLPhotographicImageStorage

from pacsguard.daemon.errors import QuarantineError
from pacsguard.plugins.deidentify import Deidentify
from pacsguard.plugins.deidentify.keyed import Keyed

KEYED = Keyed(b"visual features test secret key!")
CLAIM = "113102"


def stage(**options) -> Deidentify:
    return Deidentify(Deidentify.Options.model_validate({"key": "k", **options}))


def photo(sop_class=VLPhotographicImageStorage, modality="XC") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.99.9"
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "DOE^JOHN", "PID-1"
    return ds


def codes(ds: Dataset) -> list[str]:
    return [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]


@pytest.mark.parametrize("ds", [photo(), photo(VideoPhotographicImageStorage, "ES"), photo("1.2.3", "XC")],
                         ids=["vl-photo", "video-photo", "modality-xc"])
def test_a_photograph_is_quarantined_by_default(ds):
    with pytest.raises(QuarantineError, match="Clean Recognizable Visual Features Option is not applied"):
        stage().apply(ds, KEYED)
    assert ds.PatientName == "DOE^JOHN"  # nothing changed before the refusal


def test_allow_passes_it_without_claiming_the_option():
    ds = photo()
    stage(visual_features="allow").apply(ds, KEYED)
    assert ds.PatientIdentityRemoved == "YES" and CLAIM not in codes(ds)
    assert "Clean Recognizable Visual Features Option" not in str(ds.DeidentificationMethod)


def test_cleaned_claims_the_option():
    ds = photo()
    stage(visual_features="cleaned").apply(ds, KEYED)
    assert codes(ds) == ["113100", CLAIM]
    assert "Clean Recognizable Visual Features Option" in list(ds.DeidentificationMethod)


def test_a_ct_is_not_affected_unless_its_class_is_configured():
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    st = stage(burned_in="allow")
    out = ct.copy()
    st.apply(out, KEYED)
    assert CLAIM not in codes(out)
    with pytest.raises(QuarantineError, match="recognizable visual features possible"):
        stage(burned_in="allow", visual_features_sop_classes=[str(ct.SOPClassUID)]).apply(ct.copy(), KEYED)


def test_classes_must_be_uids():
    with pytest.raises(ValidationError):
        stage(visual_features_sop_classes=["CT Image Storage"])
    with pytest.raises(ValidationError):
        stage(visual_features="maybe")
