"""pacsguard's private block (group 0011, creator ``PACSGUARD 1``) and dataset bytes.

The elements (``xx`` is the block byte the creator reserved, usually ``10``), documented
in the README with their meaning per scope:

    xx01 LO  scheme and version ("PACSGUARD PIXELS 1", "PACSGUARD ATTRIBUTES 1")
    xx02 UI  original Transfer Syntax UID
    xx03 OB  base nonce (12 bytes; chunk i uses base XOR i)
    xx04 UL  chunk size (plaintext bytes per AES-GCM call)
    xx05 OB  AES-GCM tags, 16 bytes per chunk, in order
    xx10 LO  recipient key IDs (VM 1-n)
    xx11 LO  wrapping method per recipient (VM 1-n)
    xx12 UL  wrapped data key length per recipient (VM 1-n)
    xx13 OB  the wrapped data keys, concatenated in order
    xx20 AT  attributes changed to mark the object as encrypted
    xx21 OB  their original values: AES-256-GCM(data set) + tag, nonce base XOR 2^95
    xx30 UI  (inside the encrypted attributes) the SOP Instance UID they were made for
    xx31 OB  (inside the encrypted attributes) SHA-256 of the other elements' encoding

Multi-valued elements instead of private sequences, so the block reads the same in
implicit VR (where a reader without this dictionary sees bytes).
"""

from __future__ import annotations

from io import BytesIO

from pydicom.datadict import add_private_dict_entries
from pydicom.dataset import Dataset, PrivateBlock
from pydicom.filereader import read_dataset

from pacsguard.daemon import rawvalues
from pacsguard.daemon.dicomwrite import encode_dataset
from pacsguard.daemon.elements import new_element
from pacsguard.daemon.errors import QuarantineError

from .envelope import Wrapped

GROUP = 0x0011
CREATOR = "PACSGUARD 1"

SCHEME, ORIGINAL_TS, NONCE, CHUNK_SIZE, TAGS = 0x01, 0x02, 0x03, 0x04, 0x05
KEY_IDS, METHODS, WRAP_LENGTHS, WRAPPED = 0x10, 0x11, 0x12, 0x13
CHANGED, ORIGINALS = 0x20, 0x21
BOUND_SOP, DIGEST = 0x30, 0x31

_ENTRIES = {
    SCHEME: ("LO", "1", "Scheme"),
    ORIGINAL_TS: ("UI", "1", "Original Transfer Syntax UID"),
    NONCE: ("OB", "1", "Base Nonce"),
    CHUNK_SIZE: ("UL", "1", "Chunk Size"),
    TAGS: ("OB", "1", "Authentication Tags"),
    KEY_IDS: ("LO", "1-n", "Recipient Key IDs"),
    METHODS: ("LO", "1-n", "Key Wrapping Methods"),
    WRAP_LENGTHS: ("UL", "1-n", "Wrapped Key Lengths"),
    WRAPPED: ("OB", "1", "Wrapped Data Keys"),
    CHANGED: ("AT", "1-n", "Marking Attributes"),
    ORIGINALS: ("OB", "1", "Sealed Original Marking Values"),
    BOUND_SOP: ("UI", "1", "Bound SOP Instance UID"),
    DIGEST: ("OB", "1", "Content Digest"),
}


def register_dictionary() -> None:
    """Teach pydicom the block's VRs (implicit VR files carry none)."""
    add_private_dict_entries(CREATOR, {
        (GROUP << 16) | 0x1000 | off: (vr, vm, name, name.replace(" ", ""))
        for off, (vr, vm, name) in _ENTRIES.items()
    })


def find(ds: Dataset):
    """The block in ``ds``, or None (as ``ds.private_block(GROUP, CREATOR)``, without its
    sorted slice of the data set: only group 0011's creator elements are read)."""
    for tag in list(ds._dict):
        if tag >> 16 == GROUP and 0x10 <= tag & 0xFFFF <= 0xFF and _creator(ds, tag) == CREATOR:
            return _block(ds, tag & 0xFF)
    return None


def _creator(ds: Dataset, tag: int):
    v = rawvalues.value(ds, tag, "LO")
    return ds[tag].value if v is rawvalues.CONVERT else v


def create(ds: Dataset):
    """The block in ``ds``, created in the first free block of group 0011 if it is not there."""
    found = find(ds)
    if found is not None:
        return found
    free = next(el for el in range(0x10, 0x100) if (GROUP << 16 | el) not in ds._dict)
    creator = new_element(GROUP << 16 | free, "LO", CREATOR)
    ds._dict[creator.tag] = creator  # ds.add_new(...): a creator element is itself no private element
    return _block(ds, free)


def _block(ds: Dataset, element: int) -> PrivateBlock:
    block = PrivateBlock((GROUP, CREATOR), ds, element)
    ds._private_blocks[(GROUP, CREATOR)] = block  # pydicom's own cache, as private_block keeps it
    return block


def remove(ds: Dataset) -> None:
    """Delete the block and its creator element."""
    block = find(ds)
    if block is None:
        return
    for tag in [t for t in ds.keys() if t.group == GROUP and (t.element & 0xFF00) == block.block_start]:
        del ds[tag]
    del ds[(GROUP << 16) | (block.block_start >> 8)]


def value(block, offset: int, what: str):
    """An element's value (read from its raw bytes where :mod:`rawvalues` can: lists for
    several values); QuarantineError naming it when it is missing."""
    try:
        v = rawvalues.value(block.dataset, block.get_tag(offset), _ENTRIES[offset][0])
        return block[offset].value if v is rawvalues.CONVERT else v
    except KeyError:
        raise QuarantineError(f"the PACSGUARD private block is damaged: no {what} ({_tag(block, offset)})") from None


def _tag(block, offset: int) -> str:
    tag = block.get_tag(offset)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def as_list(v) -> list:
    """A value of VM 1-n as a list (pydicom gives a single value for VM 1)."""
    if v is None or v == "":
        return []
    if isinstance(v, (str, bytes, int)):
        return [v]
    return list(v)


def write_recipients(block, wrapped: list[Wrapped]) -> None:
    put(block, KEY_IDS, "LO", [w.key_id for w in wrapped])
    put(block, METHODS, "LO", [w.method for w in wrapped])
    put(block, WRAP_LENGTHS, "UL", [len(w.data) for w in wrapped])
    put(block, WRAPPED, "OB", b"".join(w.data for w in wrapped))


def put(block: PrivateBlock, offset: int, vr: str, value) -> None:
    """``block.add_new(offset, vr, value)`` for the stage's own values (nonces, tags, key
    IDs, lengths, sealed bytes): not validated by pydicom, and put into the data set
    directly (the creator is known: no search of the data set for it)."""
    tag = block.get_tag(offset)
    element = new_element(tag, vr, value)
    element.private_creator = CREATOR
    block.dataset._dict[tag] = element


def key_ids(block) -> list[str]:
    return [str(k) for k in as_list(block[KEY_IDS].value)] if KEY_IDS in block else []


def read_recipients(block) -> list[Wrapped]:
    ids = [str(k) for k in as_list(value(block, KEY_IDS, "recipient key IDs"))]
    methods = [str(m) for m in as_list(value(block, METHODS, "key wrapping methods"))]
    lengths = [int(n) for n in as_list(value(block, WRAP_LENGTHS, "wrapped key lengths"))]
    data = bytes(value(block, WRAPPED, "wrapped data keys"))
    if not (len(ids) == len(methods) == len(lengths)) or sum(lengths) != len(data):
        raise QuarantineError("the PACSGUARD private block is damaged: its recipient lists do not agree")
    out, pos = [], 0
    for key_id, method, n in zip(ids, methods, lengths):
        out.append(Wrapped(key_id, method, data[pos:pos + n]))
        pos += n
    return out


# -- a dataset as bytes (Explicit VR Little Endian, no file meta) ---------------------------
def encode(ds: Dataset) -> bytes:
    return encode_dataset(ds, implicit=False)


def decode(data: bytes) -> Dataset:
    return read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=True)
