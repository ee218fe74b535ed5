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

SCHEME, BLOCK_SIZE, FLIP, KEY_ID, ORIGINAL_TS, ORIGINALS = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
MODEL, LABEL, PROBABILITIES, LABELS, MODEL_KEY_ID = 0x01, 0x02, 0x03, 0x04, 0x05

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
