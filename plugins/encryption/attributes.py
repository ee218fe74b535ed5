"""Attribute scope: the standard's Encrypted Attributes Sequence (PS3.15 Annex, PS3.3
C.12.1.1.4).

One item of Encrypted Attributes Sequence (0400,0500) per encryption: Encrypted Content
Transfer Syntax UID (0400,0510) = Explicit VR Little Endian, and Encrypted Content
(0400,0520) = CMS EnvelopedData (``cryptography``'s ``PKCS7EnvelopeBuilder``: RSA key
transport to each recipient's certificate, AES-256-CBC content encryption) of an encoded
data set whose Modified Attributes Sequence (0400,0550) holds one item with the original
values. Any CMS reader (``openssl cms -decrypt``) opens it.

CMS EnvelopedData has no integrity check of its own, so the encrypted data set also holds,
in pacsguard's private block, the SOP Instance UID it was made for and a SHA-256 digest of
its other elements: a changed ciphertext or a moved item fails instead of restoring wrong
values. The item carries the recipients' key IDs (private block, in clear) for
``pacsguard inspect`` and for choosing the key.
"""

from __future__ import annotations

import hashlib
from io import BytesIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.daemon.errors import QuarantineError
from pacsguard.plugins.deidentify import record as deid_record

from . import block
from .envelope import check_rsa_size

SCHEME = "PACSGUARD ATTRIBUTES 1"
NOT_ENCRYPTED = "object has no Encrypted Attributes Sequence (0400,0500): its attributes are not encrypted"
AUTH_FAILED = ("authentication failed: the Encrypted Content was changed after encryption "
               "(or its wrapped key does not open with this key)")
MOVED = ("authentication failed: the encrypted attributes were made for another object "
         "(SOP Instance UID changed after encryption)")


def _digest(elements: bytes) -> bytes:
    return hashlib.sha256(SCHEME.encode() + b"\0" + elements).digest()


def _raw_elements(data: bytes) -> list[tuple[int, bytes]]:
    """Each top-level element of an encoded data set with its exact bytes."""
    fp, start, out = BytesIO(data), 0, []
    for raw in data_element_generator(fp, False, True):
        end = fp.tell()
        out.append((int(raw.tag), data[start:end]))
        start = end
    if start != len(data):
        raise ValueError("trailing bytes")
    return out


def encrypt(ds: Dataset, recipients, originals: Dataset, remove=()) -> list[str]:
    """Add an Encrypted Attributes item holding ``originals`` for ``recipients`` (RSA keys
    with certificates); delete the attributes in ``remove``. Returns the key IDs."""
    if not len(originals):
        raise QuarantineError("no attribute values to encrypt")
    sop = ds.get("SOPInstanceUID")
    if not sop:
        raise QuarantineError("no SOP Instance UID to bind the encryption to")
    builder = pkcs7.PKCS7EnvelopeBuilder()
    for key in recipients:
        if key.type != "rsa" or key.certificate is None:
            raise QuarantineError(f"recipient key ID {key.key_id} is not an RSA key with a certificate (CMS needs one)")
        check_rsa_size(key)
        builder = builder.add_recipient(key.certificate)
    inner = Dataset()
    b = block.create(inner)
    b.add_new(block.SCHEME, "LO", SCHEME)
    b.add_new(block.BOUND_SOP, "UI", str(sop))
    inner.ModifiedAttributesSequence = Sequence([originals])
    b.add_new(block.DIGEST, "OB", _digest(block.encode(inner)))
    try:
        der = (builder.set_data(block.encode(inner))
               .set_content_encryption_algorithm(algorithms.AES256)
               .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
    except (TypeError, ValueError) as exc:
        raise QuarantineError(f"cannot encode the original attributes ({type(exc).__name__})") from None

    item = Dataset()
    item.EncryptedContentTransferSyntaxUID = ExplicitVRLittleEndian
    item.EncryptedContent = der
    ib = block.create(item)
    ib.add_new(block.SCHEME, "LO", SCHEME)
    ids = [k.key_id for k in recipients]
    ib.add_new(block.KEY_IDS, "LO", ids)
    if "EncryptedAttributesSequence" not in ds:
        ds.EncryptedAttributesSequence = Sequence()
    ds.EncryptedAttributesSequence.append(item)
    for tag in remove:
        if tag in ds:
            del ds[tag]
    return ids


def item_key_ids(item: Dataset) -> list[str]:
    b = block.find(item)
    return block.key_ids(b) if b is not None else []


def decrypt(ds: Dataset, keys) -> None:
    """Put the original values of the first Encrypted Attributes item that one of ``keys``
    opens back into ``ds`` and remove that item. Nothing changes unless every check passed."""
    items = list(ds.get("EncryptedAttributesSequence") or [])
    if not items:
        raise QuarantineError(NOT_ENCRYPTED)
    usable = {k.key_id: k for k in keys if k.private is not None and k.certificate is not None}
    ours = [(i, item, usable[kid]) for i, item in enumerate(items) for kid in item_key_ids(item) if kid in usable]
    if not ours:
        recipients = ", ".join(kid for item in items for kid in item_key_ids(item)) or "not made by pacsguard"
        mine = ", ".join(sorted(usable)) or "none with a private key and certificate"
        raise QuarantineError(f"not encrypted for key ID {mine} (recipients: {recipients})")
    index, item, key = ours[0]
    originals = _open(ds, item, key)
    if deid_record.is_record(originals):  # a deidentify record: its added attributes go, its marker stays out
        deid_record.restore(ds, originals)
    else:
        for elem in originals:
            ds[elem.tag] = elem
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for own, mirror in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"), ("SOPClassUID", "MediaStorageSOPClassUID")):
            if own in originals and mirror in meta:
                setattr(meta, mirror, originals[own].value)
    del ds.EncryptedAttributesSequence[index]
    if not len(ds.EncryptedAttributesSequence):
        del ds.EncryptedAttributesSequence


def _unpadded(der: bytes) -> bytes:
    """The DER without the null byte DICOM adds to an odd-length OB value (the outer
    SEQUENCE's own length says where the DER ends)."""
    if len(der) % 2 or len(der) < 4 or der[0] != 0x30 or der[-1] != 0:
        return der
    n = der[1] & 0x7F if der[1] & 0x80 else 0
    length = 2 + n + (int.from_bytes(der[2:2 + n], "big") if n else der[1])
    return der[:length] if length == len(der) - 1 else der


def _open(ds: Dataset, item: Dataset, key) -> Dataset:
    if item.get("EncryptedContentTransferSyntaxUID") != ExplicitVRLittleEndian or "EncryptedContent" not in item:
        raise QuarantineError("Encrypted Attributes item without Explicit VR Little Endian Encrypted Content")
    try:
        plain = pkcs7.pkcs7_decrypt_der(_unpadded(bytes(item.EncryptedContent)), key.certificate, key.private, [])
        elements = _raw_elements(plain)
        inner = block.decode(plain)
        inner.walk(lambda *_: None)  # parse every element now: a changed byte fails here
        b = block.find(inner)
        rest = b"".join(raw for tag, raw in elements if tag != b.get_tag(block.DIGEST))
        genuine = (b[block.SCHEME].value == SCHEME and bytes(b[block.DIGEST].value) == _digest(rest)
                   and len(inner.ModifiedAttributesSequence) == 1)
    except Exception:  # CMS, padding, parse errors: one reason (no oracle, no content in it)
        genuine = False
    if not genuine:
        raise QuarantineError(AUTH_FAILED)
    if block.BOUND_SOP not in b or b[block.BOUND_SOP].value != ds.get("SOPInstanceUID"):
        raise QuarantineError(MOVED)
    return inner.ModifiedAttributesSequence[0]
