"""Attribute scope: the Encrypted Attributes Sequence (CMS EnvelopedData of a Modified
Attributes Sequence) round-trips on every bundled image, opens with ``openssl cms``, and
every tamper case is quarantined with its reason."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.plugins.encryption import attributes, pixels
from pacsguard.plugins.encryption.stages import Decrypt, Encrypt
from tests.plugins.encryption_corpus import differing, ident, image, images
from tests.plugins.encryption_keys import make_key, pem_files, public_only

FACTS = TransportFacts(source="test", source_type="folder")
LISTED = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs",
          "InstitutionName", "ReferringPhysicianName", "AccessionNumber", "StudyDate"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def encrypt_stage(recipients=("r",), listed=LISTED) -> Encrypt:
    opts = {"scope": "attributes", "recipients": list(recipients)}
    if listed:
        opts["attributes"] = list(listed)
    return Encrypt(Encrypt.Options.model_validate(opts))


def decrypt_stage(name="me") -> Decrypt:
    return Decrypt(Decrypt.Options.model_validate({"scope": "attributes", "key": name}))


def encrypt_file(src: Path, dst: Path, key=None, stage=None) -> Path:
    key = key or make_key("rsa")
    item = Item(1, src, FACTS, keys={"r": public_only(key)})
    (stage or encrypt_stage()).process(item).write(dst)
    return dst


def decrypt_file(src: Path, dst: Path, key=None) -> Path:
    item = Item(1, src, FACTS, keys={"me": key or make_key("rsa")})
    decrypt_stage().process(item).write(dst)
    return dst


def with_patient(ds_path: Path, dst: Path) -> Path:
    """A copy that surely holds a few of the listed attributes."""
    ds = pydicom.dcmread(ds_path)
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "PID-0001"
    ds.save_as(dst, enforce_file_format=True)
    return dst


def rewritable(path: Path) -> bool:
    """Whether pydicom can write the file again after any change (one bundled file mixes
    implicit VR into an explicit VR data set: the pipeline quarantines it at write time,
    whatever the stages; the pixel scope re-encodes every element and so copes)."""
    ds = pydicom.dcmread(path, defer_size=8192)
    ds.ImageComments = "x"
    try:
        ds.save_as(BytesIO(), enforce_file_format=True)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("path", [p for p in images() if rewritable(p)], ids=ident)
def test_round_trip_restores_the_attributes(path, tmp_path):
    original = pydicom.dcmread(path)
    listed = [k for k in LISTED if k in original]
    enc = pydicom.dcmread(encrypt_file(path, tmp_path / "enc.dcm"))
    if not listed:
        assert "EncryptedAttributesSequence" not in enc  # nothing to protect: unchanged
        return
    assert [k for k in LISTED if k in enc] == []
    (item,) = enc.EncryptedAttributesSequence
    assert item.EncryptedContentTransferSyntaxUID == ExplicitVRLittleEndian
    assert attributes.item_key_ids(item) == [make_key("rsa").key_id]
    assert enc.PixelData == original.PixelData  # the pixels are not this scope's

    dec = pydicom.dcmread(decrypt_file(tmp_path / "enc.dcm", tmp_path / "dec.dcm"))
    assert "EncryptedAttributesSequence" not in dec
    assert differing(dec, original) == []
    assert dec.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


def test_deidentify_results_are_the_default(tmp_path):
    """What a deidentify stage recorded goes in; the de-identified values stay in clear;
    decryption puts the originals back, SOP Instance UID (and its file meta copy) too."""
    src = with_patient(image("CT_small.dcm"), tmp_path / "in.dcm")
    original = pydicom.dcmread(src)
    item = Item(1, src, FACTS, keys={"r": public_only(make_key("rsa"))})
    ds = item.dataset
    recorded = Dataset()
    for keyword in ("PatientName", "PatientID", "SOPInstanceUID"):
        recorded[keyword] = original[keyword]
    ds.PatientName, ds.PatientID = "ANONYMOUS", "PSEUDO-1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    item.results["deidentify"] = {"original": recorded}
    encrypt_stage(listed=()).process(item).write(tmp_path / "enc.dcm")
    enc = pydicom.dcmread(tmp_path / "enc.dcm")
    assert (enc.PatientName, enc.PatientID) == ("ANONYMOUS", "PSEUDO-1")

    dec = pydicom.dcmread(decrypt_file(tmp_path / "enc.dcm", tmp_path / "dec.dcm"))
    assert differing(dec, original) == []
    assert dec.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID


def test_without_deidentify_results_or_a_list_it_is_quarantined(tmp_path):
    with pytest.raises(QuarantineError, match="no deidentify stage recorded original values"):
        encrypt_stage(listed=()).process(Item(1, image("CT_small.dcm"), FACTS,
                                              keys={"r": public_only(make_key("rsa"))}))


def test_openssl_cms_decrypts_the_encrypted_content(tmp_path):
    """An independent CMS reader opens the Encrypted Content; pydicom reads the result as
    a data set whose Modified Attributes Sequence holds the original values."""
    key = make_key("rsa")
    src = with_patient(image("MR_small.dcm"), tmp_path / "in.dcm")
    enc = pydicom.dcmread(encrypt_file(src, tmp_path / "enc.dcm"))
    content = tmp_path / "content.der"
    content.write_bytes(enc.EncryptedAttributesSequence[0].EncryptedContent)
    private, cert = pem_files(key, tmp_path / "keys")
    out = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(content),
                          "-inkey", str(private), "-recip", str(cert), "-binary"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    inner = read_dataset(BytesIO(out.stdout), is_implicit_VR=False, is_little_endian=True)
    (values,) = inner.ModifiedAttributesSequence
    assert (values.PatientName, values.PatientID) == ("DOE^JANE", "PID-0001")
    original = pydicom.dcmread(src)
    assert all(values[k] == original[k] for k in LISTED if k in original)


def test_several_recipients_each_decrypt(tmp_path):
    a, b = make_key("rsa"), make_key("rsa", "second")
    src = with_patient(image("CT_small.dcm"), tmp_path / "in.dcm")
    item = Item(1, src, FACTS, keys={"a": public_only(a), "b": public_only(b)})
    encrypt_stage(recipients=("a", "b")).process(item).write(tmp_path / "enc.dcm")
    for key in (a, b):
        dec = pydicom.dcmread(decrypt_file(tmp_path / "enc.dcm", tmp_path / f"dec-{key.name}.dcm", key))
        assert dec.PatientName == "DOE^JANE"


def test_attributes_then_pixels_decrypt_in_reverse(tmp_path):
    key = make_key("rsa")
    src = with_patient(image("MR_small_RLE.dcm"), tmp_path / "in.dcm")
    original = pydicom.dcmread(src)
    item = Item(1, src, FACTS, keys={"r": public_only(key)})
    pix = Encrypt(Encrypt.Options.model_validate({"scope": "pixels", "recipients": ["r"]}))
    pix.process(encrypt_stage().process(item)).write(tmp_path / "enc.dcm")
    item = Item(1, tmp_path / "enc.dcm", FACTS, keys={"me": key})
    Decrypt(Decrypt.Options.model_validate({"scope": "pixels", "key": "me"})).process(item)
    decrypt_stage().process(item).write(tmp_path / "dec.dcm")
    dec = pydicom.dcmread(tmp_path / "dec.dcm")
    assert (dec.pixel_array == original.pixel_array).all()
    assert differing(dec, original, ignore={"PixelData"}) == []


# --- tampering and wrong keys -----------------------------------------------------------


def _flip_content(find):
    def change(ds):
        item = ds.EncryptedAttributesSequence[0]
        data = bytearray(item.EncryptedContent)
        data[find(bytes(data))] ^= 0x01
        item.EncryptedContent = bytes(data)
    return change


def _wrapped_key(der: bytes) -> int:
    return der.index(b"\x04\x82\x01\x80") + 4 + 100  # the 384-byte RSA-wrapped content key


def _iv(der: bytes) -> int:
    aes256_cbc = bytes.fromhex("060960864801650304012a")  # OID 2.16.840.1.101.3.4.1.42
    return der.index(aes256_cbc) + len(aes256_cbc) + 2 + 5  # the IV's OCTET STRING


def _set_sop(ds):
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"


TAMPERING = {
    "ciphertext-end": (_flip_content(lambda d: len(d) - 5), attributes.AUTH_FAILED),
    "ciphertext-middle": (_flip_content(lambda d: len(d) - 100), attributes.AUTH_FAILED),
    "wrapped-key": (_flip_content(_wrapped_key), attributes.AUTH_FAILED),
    "iv": (_flip_content(_iv), attributes.AUTH_FAILED),
    "sop-instance-uid": (_set_sop, attributes.MOVED),
    "truncated-content": (lambda ds: setattr(ds.EncryptedAttributesSequence[0], "EncryptedContent",
                                             ds.EncryptedAttributesSequence[0].EncryptedContent[:-32]),
                          attributes.AUTH_FAILED),
    "sequence-removed": (lambda ds: delattr(ds, "EncryptedAttributesSequence"), attributes.NOT_ENCRYPTED),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_is_quarantined_with_its_reason(case, tmp_path):
    change, reason = TAMPERING[case]
    src = with_patient(image("CT_small.dcm"), tmp_path / "in.dcm")
    ds = pydicom.dcmread(encrypt_file(src, tmp_path / "enc.dcm"))
    change(ds)
    ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    item = Item(1, tmp_path / "bad.dcm", FACTS, keys={"me": make_key("rsa")})
    with pytest.raises(QuarantineError) as excinfo:
        decrypt_stage().process(item)
    assert reason in excinfo.value.reason
    assert "PatientName" not in item.dataset  # nothing restored
    assert "DOE" not in excinfo.value.reason and "PID-0001" not in excinfo.value.reason


def test_an_item_moved_to_another_object_fails(tmp_path):
    src = with_patient(image("CT_small.dcm"), tmp_path / "in.dcm")
    enc = pydicom.dcmread(encrypt_file(src, tmp_path / "enc.dcm"))
    other = pydicom.dcmread(image("MR_small.dcm"))
    other.EncryptedAttributesSequence = enc.EncryptedAttributesSequence
    other.save_as(tmp_path / "moved.dcm", enforce_file_format=True)
    with pytest.raises(QuarantineError) as excinfo:
        decrypt_stage().process(Item(1, tmp_path / "moved.dcm", FACTS, keys={"me": make_key("rsa")}))
    assert excinfo.value.reason == attributes.MOVED


def test_a_wrong_key_names_the_key_ids(tmp_path):
    src = with_patient(image("CT_small.dcm"), tmp_path / "in.dcm")
    encrypt_file(src, tmp_path / "enc.dcm")
    other = make_key("rsa", "someone-else")
    with pytest.raises(QuarantineError) as excinfo:
        decrypt_stage().process(Item(1, tmp_path / "enc.dcm", FACTS, keys={"me": other}))
    assert excinfo.value.reason == (f"not encrypted for key ID {other.key_id} "
                                    f"(recipients: {make_key('rsa').key_id})")


def test_a_missing_key_and_a_never_encrypted_object_are_quarantined(tmp_path):
    src = with_patient(image("CT_small.dcm"), tmp_path / "in.dcm")
    encrypt_file(src, tmp_path / "enc.dcm")
    with pytest.raises(QuarantineError, match="key 'me' is not loaded"):
        decrypt_stage().process(Item(1, tmp_path / "enc.dcm", FACTS, keys={}))
    with pytest.raises(QuarantineError) as excinfo:
        decrypt_stage().process(Item(1, src, FACTS, keys={"me": make_key("rsa")}))
    assert excinfo.value.reason == attributes.NOT_ENCRYPTED


def test_cms_recipients_must_be_rsa_with_a_certificate(tmp_path):
    src = with_patient(image("CT_small.dcm"), tmp_path / "in.dcm")
    with pytest.raises(QuarantineError, match="is not an RSA key with a certificate"):
        encrypt_stage().process(Item(1, src, FACTS, keys={"r": public_only(make_key("x25519"))}))
    (use,) = Encrypt.key_uses(encrypt_stage().options)
    assert use.types == {"rsa"} and use.certificate and not use.private
    (use,) = Decrypt.key_uses(decrypt_stage().options)
    assert use.types == {"rsa"} and use.certificate and use.private


def test_options_are_checked():
    from pydantic import ValidationError

    for bad, why in [({"scope": "pixels", "recipients": ["r"], "attributes": ["PatientName"]}, "scope attributes only"),
                     ({"scope": "attributes", "recipients": ["r"], "attributes": ["PixelData"]}, "use scope pixels"),
                     ({"scope": "attributes", "recipients": ["r"], "attributes": ["NoSuchThing"]}, "not a DICOM keyword"),
                     ({"scope": "attributes", "recipients": []}, "at least 1 item"),
                     ({"scope": "pixels", "recipients": ["r", "r"]}, "named twice")]:
        with pytest.raises(ValidationError, match=why):
            Encrypt.Options.model_validate(bad)
    for bad, why in [({"scope": "pixels"}, "give key or keys"),
                     ({"scope": "pixels", "key": "a", "keys": ["b"]}, "give key or keys"),
                     ({"scope": "file", "key": "a"}, "pacsguard decrypt")]:
        with pytest.raises(ValidationError, match=why):
            Decrypt.Options.model_validate(bad)
    assert pixels.SCHEME != attributes.SCHEME


def test_decrypt_restores_a_real_deidentify_record_exactly(tmp_path):
    """The record of a real deidentify stage (with its marker block: the attributes it
    added, the file meta's Media Storage SOP Instance UID) encrypted, then decrypted: the
    original header exactly, no marker block and no added attribute left behind."""
    from pacsguard.daemon.keys import Key, secret_key_id
    from pacsguard.plugins.deidentify import Deidentify

    secret = bytes(range(32))
    src = with_patient(image("CT_small.dcm"), tmp_path / "in.dcm")
    original = pydicom.dcmread(src)
    assert "PatientIdentityRemoved" not in original
    rsa_key = make_key("rsa")
    keys = {"r": public_only(rsa_key), "k": Key("k", "secret", secret_key_id(secret), "/test/k.key", secret=secret)}
    item = Item(1, src, FACTS, keys=keys)
    Deidentify(Deidentify.Options(key="k")).process(item)
    encrypt_stage(listed=()).process(item).write(tmp_path / "enc.dcm")
    enc = pydicom.dcmread(tmp_path / "enc.dcm")
    assert enc.PatientIdentityRemoved == "YES" and enc.SOPInstanceUID != original.SOPInstanceUID

    dec = pydicom.dcmread(decrypt_file(tmp_path / "enc.dcm", tmp_path / "dec.dcm", key=rsa_key))
    assert differing(dec, original) == []
    assert dec.file_meta.MediaStorageSOPInstanceUID == original.file_meta.MediaStorageSOPInstanceUID
    marker = [t for t in dec.keys() if t.group == 0x0011 and "PACSGUARD" in str(dec[t].value)]
    assert marker == [] and [t for t in dec.keys() if t.group == 0x0011] == [t for t in original.keys() if t.group == 0x0011]
