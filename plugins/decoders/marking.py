"""The private blocks of the decoder plugins (group 0011), documented in the README.

Creator ``PACSGUARD SCRAMBLE 1`` (``xx`` is the block byte the creator reserved):

    xx01 LO  scheme and version ("PACSGUARD SCRAMBLE 1")
    xx02 US  block size in pixels
    xx03 CS  negative-positive flip: YES or NO
    xx04 LO  key ID of the secret the keys were derived from
    xx05 UI  Transfer Syntax UID of the object as received
    xx06 OB  the original values of the attributes changed to mark the object
             (DerivationDescription, ImageComments) as an Explicit VR Little Endian data
             set (in clear, as they were in the object received)

Creator ``PACSGUARD INFER 1``:

    xx01 LO  model name and version
    xx02 LO  predicted label
    xx03 FD  probability of every label (VM 1-n, in the order of xx04)
    xx04 LO  the model's labels (VM 1-n)
    xx05 LO  key ID the model was converted with (empty: the plain model on plain pixels)

Creator ``PACSGUARD NEURAL 1`` (experimental ``neural-encrypt``):

    xx01 LO  scheme and version ("PACSGUARD NEURAL 1")
    xx02 LO  model name and version of the encoder / reconstruction networks
    xx03 LO  key ID of the secret the mixing was derived from
    xx04 OB  the object's random 16-byte salt (mixing and AES-GCM associated data)
    xx05 UI  Transfer Syntax UID of the object as received
    xx06 OB  the original values of the marking attributes (as xx06 of SCRAMBLE)
    xx07 CS  the Photometric Interpretation received (MONOCHROME1 or MONOCHROME2)
    xx08 OB  the exact original, only with ``exact: true``: 12-byte nonce || AES-256-GCM
             ciphertext and tag of the original 32 x 32 8-bit pixel values (row-major);
             key HMAC-SHA256(secret, "PACSGUARD NEURAL 1\0exact original"), associated
             data "PACSGUARD NEURAL 1" || salt

Creator ``PACSGUARD ROI 1`` (experimental ``roi``):

    xx01 LO  model name and version
    xx02 US  region of interest: top, left, bottom, right in pixels (VM 4; bottom and
             right exclusive)
    xx03 CS  what the network read: ENCRYPTED (a neural-encrypt cipher image) or PLAIN
"""

from __future__ import annotations

import copy
from io import BytesIO

from pydicom.datadict import add_private_dict_entries
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag

from pacsguard.daemon.errors import QuarantineError

GROUP = 0x0011
SCRAMBLE_CREATOR = "PACSGUARD SCRAMBLE 1"
INFER_CREATOR = "PACSGUARD INFER 1"
NEURAL_CREATOR = "PACSGUARD NEURAL 1"
ROI_CREATOR = "PACSGUARD ROI 1"

SCHEME, BLOCK_SIZE, FLIP, KEY_ID, ORIGINAL_TS, ORIGINALS = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
MODEL, LABEL, PROBABILITIES, LABELS, MODEL_KEY_ID = 0x01, 0x02, 0x03, 0x04, 0x05
N_SCHEME, N_MODEL, N_KEY_ID, N_SALT, N_ORIGINAL_TS, N_ORIGINALS, N_PHOTOMETRIC, N_EXACT = range(1, 9)
ROI_MODEL, ROI_BOX, ROI_INPUT = 0x01, 0x02, 0x03

_ENTRIES = {
    SCRAMBLE_CREATOR: {
        SCHEME: ("LO", "1", "Scramble Scheme"),
        BLOCK_SIZE: ("US", "1", "Scramble Block Size"),
        FLIP: ("CS", "1", "Negative Positive Flip"),
        KEY_ID: ("LO", "1", "Scramble Key ID"),
        ORIGINAL_TS: ("UI", "1", "Received Transfer Syntax UID"),
        ORIGINALS: ("OB", "1", "Original Marking Values"),
    },
    INFER_CREATOR: {
        MODEL: ("LO", "1", "Inference Model"),
        LABEL: ("LO", "1", "Predicted Label"),
        PROBABILITIES: ("FD", "1-n", "Label Probabilities"),
        LABELS: ("LO", "1-n", "Model Labels"),
        MODEL_KEY_ID: ("LO", "1", "Model Conversion Key ID"),
    },
    NEURAL_CREATOR: {
        N_SCHEME: ("LO", "1", "Neural Cipher Scheme"),
        N_MODEL: ("LO", "1", "Neural Cipher Model"),
        N_KEY_ID: ("LO", "1", "Neural Cipher Key ID"),
        N_SALT: ("OB", "1", "Neural Cipher Salt"),
        N_ORIGINAL_TS: ("UI", "1", "Neural Received Transfer Syntax UID"),
        N_ORIGINALS: ("OB", "1", "Neural Original Marking Values"),
        N_PHOTOMETRIC: ("CS", "1", "Neural Received Photometric Interpretation"),
        N_EXACT: ("OB", "1", "Neural Encrypted Exact Original"),
    },
    ROI_CREATOR: {
        ROI_MODEL: ("LO", "1", "ROI Model"),
        ROI_BOX: ("US", "4", "ROI Box"),
        ROI_INPUT: ("CS", "1", "ROI Input"),
    },
}

#: what scrambling changes to mark the object (restored by unscrambling)
MARKING = (Tag("DerivationDescription"), Tag("ImageComments"))


def register_dictionary() -> None:
    """Teach pydicom the blocks' VRs (implicit VR files carry none)."""
    for creator, entries in _ENTRIES.items():
        add_private_dict_entries(creator, {
            (GROUP << 16) | 0x1000 | off: (vr, vm, name, name.replace(" ", ""))
            for off, (vr, vm, name) in entries.items()
        })


def find(ds: Dataset, creator: str):
    try:
        return ds.private_block(GROUP, creator)
    except KeyError:
        return None


def create(ds: Dataset, creator: str):
    remove(ds, creator)
    return ds.private_block(GROUP, creator, create=True)


def remove(ds: Dataset, creator: str) -> None:
    b = find(ds, creator)
    if b is None:
        return
    for tag in [t for t in ds.keys() if t.group == GROUP and (t.element & 0xFF00) == b.block_start]:
        del ds[tag]
    del ds[(GROUP << 16) | (b.block_start >> 8)]


def value(block, offset: int, what: str):
    try:
        return block[offset].value
    except KeyError:
        raise QuarantineError(f"the {block.private_creator} private block is damaged: no {what}") from None


def originals(ds: Dataset) -> bytes:
    """The marking attributes as they are now, encoded (see ``xx06``)."""
    kept = Dataset()
    for t in MARKING:
        if t in ds:
            kept[t] = copy.deepcopy(ds[t])
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, kept)
    return fp.getvalue()


def restore(ds: Dataset, data: bytes) -> None:
    """Put the marking attributes back as :func:`originals` recorded them."""
    try:
        kept = read_dataset(BytesIO(bytes(data)), is_implicit_VR=False, is_little_endian=True) if data else Dataset()
    except Exception:
        raise QuarantineError("the PACSGUARD SCRAMBLE 1 private block is damaged: its original values do not parse") from None
    for t in MARKING:
        if t in kept:
            ds[t] = kept[t]
        elif t in ds:
            del ds[t]
