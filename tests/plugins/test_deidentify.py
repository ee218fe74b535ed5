"""The ``deidentify`` stage through its config and an Item: options checked at load, the key
from the key store, the method recorded (CID 7050), keyed values in the documented form."""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.errors import ConfigError, QuarantineError
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.keys import Key, secret_key_id
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.plugins.deidentify import Deidentify
from pacsguard.plugins.deidentify.keyed import Keyed

SECRET = bytes(range(32))
KEY = Key("pseudo", "secret", secret_key_id(SECRET), "/test/pseudo.key", secret=SECRET)
FACTS = TransportFacts(source="test", source_type="folder")
CT = Path(get_testdata_file("CT_small.dcm"))


def stage(**options) -> Deidentify:
    return Deidentify(Deidentify.Options.model_validate({"key": "pseudo", **options}))


def run(path: Path, st: Deidentify, tmp_path: Path, keys=None) -> pydicom.Dataset:
    item = Item(1, path, FACTS, keys={"pseudo": KEY} if keys is None else keys)
    st.process(item)
    out = tmp_path / "out.dcm"
    item.write(out)
    return pydicom.dcmread(out)


def test_a_ct_is_de_identified_through_an_item(tmp_path):
    original = pydicom.dcmread(CT)
    out = run(CT, stage(), tmp_path)
    k = Keyed(SECRET)
    assert out.PatientName == out.PatientID == "ANON-" + k.patient_hash("id:" + original.PatientID)[:8]
    assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID == k.uid(original.SOPInstanceUID)
    assert out.StudyInstanceUID == k.uid(original.StudyInstanceUID)
    assert "InstitutionName" not in out and out.StudyDate == "" and out.PatientBirthDate == ""
    assert not [t for t in out.keys() if t.group & 1]  # private attributes removed
    assert out.PatientIdentityRemoved == "YES"
    assert [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence] \
        == [("113100", "DCM")]
    assert out.PixelData == original.PixelData


def test_keyed_uids_are_uuid_derived():
    new = Keyed(SECRET).uid("1.2.3.4")
    assert new.startswith("2.25.") and len(new) <= 64
    u = uuid.UUID(int=int(new[5:]))
    assert u.version == 8 and u.variant == uuid.RFC_4122
    assert Keyed(SECRET).uid("1.2.3.4 ") == new  # padding is not part of the UID
    assert Keyed(b"another key of thirty-two bytes!").uid("1.2.3.4") != new


def test_every_option_used_is_recorded_with_its_cid_7050_code(tmp_path):
    options = dict(retain_longitudinal_modified_dates=True, retain_patient_characteristics=True,
                   retain_device_identity=True, retain_institution_identity=True, retain_uids=True,
                   retain_safe_private={"GEMS_IDEN_01": ["0009,xx01"]}, clean_descriptors=True,
                   clean_structured_content=True, clean_graphics=True)
    out = run(CT, stage(**options), tmp_path)
    got = [(i.CodeValue, i.CodeMeaning) for i in out.DeidentificationMethodCodeSequence]
    want = ["BasicApplicationConfidentialityProfile", "CleanGraphicsOption", "CleanStructuredContentOption",
            "CleanDescriptorsOption", "RetainLongitudinalTemporalInformationModifiedDatesOption",
            "RetainPatientCharacteristicsOption", "RetainDeviceIdentityOption", "RetainUidsOption",
            "RetainSafePrivateOption", "RetainInstitutionIdentityOption"]
    assert got == [(getattr(codes.DCM, w).value, getattr(codes.DCM, w).meaning) for w in want]
    assert [c for c, _ in got] == ["113100", "113103", "113104", "113105", "113107", "113108", "113109",
                                   "113110", "113111", "113112"]
    assert list(out.DeidentificationMethod)[1:] == [m for _, m in got[1:]]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    original = pydicom.dcmread(CT)
    assert out.SOPInstanceUID == original.SOPInstanceUID and out.InstitutionName == original.InstitutionName
    assert out[0x00091001].value == original[0x00091001].value and 0x00091002 not in out


def test_an_earlier_de_identification_is_kept_in_the_method(tmp_path):
    ds = pydicom.dcmread(CT)
    ds.DeidentificationMethod = "SITE SCRIPT 2"
    src = tmp_path / "in.dcm"
    ds.save_as(src)
    out = run(src, stage(), tmp_path)
    assert list(out.DeidentificationMethod) == ["SITE SCRIPT 2", "pacsguard deidentify: PS3.15 Basic Profile"]


def test_a_missing_key_is_a_quarantine_naming_it(tmp_path):
    with pytest.raises(QuarantineError, match="key 'pseudo' is not loaded"):
        run(CT, stage(), tmp_path, keys={})


@pytest.mark.parametrize(("options", "message"), [
    ({"pseudonym": "ANON"}, "needs {hash}"),
    ({"pseudonym": "ANON-{hash:4}"}, "N is 6 to 64"),
    ({"pseudonym": "{name}-{hash}"}, "only {hash}"),
    ({"pseudonym": "A\\{hash}"}, "without backslashes"),
    ({"pseudonym": "X" * 60 + "{hash:8}"}, "longer than 64"),
    ({"retain_longitudinal_full_dates": True, "retain_longitudinal_modified_dates": True}, "exclude each other"),
    ({"keep_weekday": True}, "keep_weekday applies"),
    ({"retain_safe_private": {"ACME": ["0010,xx01"]}}, "odd group"),
    ({"retain_safe_private": {"ACME": ["0019,1001"]}}, "gggg,xxee"),
    ({"retain_safe_private": {"ACME": []}}, "list its safe elements"),
    ({"clean_pixel_data": [{"match": {"Manufacturr": "X"}, "rectangles": [[0, 0, 1, 1]]}]}, "not a DICOM keyword"),
    ({"clean_pixel_data": [{"match": {"Rows": 10}, "rectangles": [[0, 0, 0, 1]]}]}, "width and height"),
    ({"clean_pixel_data": [{"match": {"Rows": 10}, "rectangles": []}]}, "at least 1"),
    ({"unknown": 1}, "Extra inputs"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValidationError, match=message):
        Deidentify.Options.model_validate({"key": "pseudo", **options})


def _config(tmp_path: Path, key_yaml: str, options: str) -> str:
    return textwrap.dedent(f"""\
        keys:
        {textwrap.indent(key_yaml, "  ")}
        destinations:
          out: {{type: folder, path: "{tmp_path / 'out'}"}}
        routes:
          - name: r
            to: [out]
            pipeline:
              - deidentify: {options}
        """)


def test_the_config_names_a_secret_key(tmp_path):
    registry = collect(get_plugin_manager(entry_points=False))
    secret = tmp_path / "pseudo.key"
    secret.write_text(SECRET.hex())
    os.chmod(secret, 0o600)
    loaded = load_config_text(_config(tmp_path, f"pseudo: {{secret: {secret}}}", "{key: pseudo}"), registry)
    assert loaded.keys["pseudo"].secret == SECRET
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config_text(_config(tmp_path, f"pseudo: {{secret: {secret}}}", "{key: nope}"), registry)


def test_the_config_refuses_a_key_that_is_not_a_secret(tmp_path):
    from tests.plugins.encryption_keys import make_key, pem_files

    registry = collect(get_plugin_manager(entry_points=False))
    (private,) = pem_files(make_key("x25519"), tmp_path / "keys")
    os.chmod(private, 0o600)
    with pytest.raises(ConfigError, match="is a x25519 key; deidentify needs secret"):
        load_config_text(_config(tmp_path, f"pseudo: {{private: {private}}}", "{key: pseudo}"), registry)
