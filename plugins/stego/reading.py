"""Finding a carrier in pixels (either method), and putting the payload's attributes back.

A reversible carrier announces itself by the PEE side information in the image border;
an lsb carrier by the carrier magic in the low bits of the first pixels (1 to 4 bits per
pixel are tried). Anything else is refused: no carrier, or a damaged one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacsguard.daemon.errors import QuarantineError
from pacsguard.plugins.deidentify import record as deid_record

from . import carrier, image, lsb, pee

NONE = ("no pacsguard carrier in the pixel data (none was embedded, or the image was changed or cropped where "
        "the carrier starts)")
DAMAGED = ("the pixels carry a damaged carrier: they were changed after embedding, or cropped, or the image's "
           "geometry, bit depth or padding value was changed")


@dataclass
class Found:
    method: str
    header: carrier.Header
    context: bytes
    threshold: int | None = None
    lsb_bits: int | None = None
    restored: np.ndarray | None = None  # reversible: the original carrier planes
    data: bytes = b""  # reversible: the whole carrier
    planes: np.ndarray | None = None  # the carrier planes as found
    img: image.Image | None = None

    @property
    def size(self) -> int:
        return self.header.total

    def body(self, key: bytes) -> bytes:
        """The sealed body (lsb: read in the order the data key gives)."""
        h = self.header
        if self.method == "reversible":
            return self.data[h.size:]
        return lsb.read_body(self.planes, self.lsb_bits, self.img.rng, h.size, h.body_length,
                             carrier.order_key(key))


def find(ds: Dataset, img: image.Image) -> Found:
    """The carrier in ``img``; QuarantineError (NoCarrier when there is none)."""
    damaged = None
    planes = img.carrier_planes()
    try:
        data, restored, threshold = pee.extract(planes, img.rng)
    except pee.NotEmbedded:
        pass
    except pee.Damaged:
        damaged = DAMAGED
    else:
        try:
            header = carrier.parse_header(data)
            if header.method == "reversible" and header.total == len(data):
                return Found("reversible", header, image.context(ds, img, "reversible", header.params),
                             threshold=threshold, restored=restored, data=data, planes=planes, img=img)
        except (carrier.NoCarrier, carrier.Incomplete):
            pass
        damaged = DAMAGED
    for k in range(1, lsb.MAX_BITS + 1):
        header = _lsb_header(planes, img.rng, k)
        if header is not None:
            return Found("lsb", header, image.context(ds, img, "lsb", header.params), lsb_bits=k, planes=planes,
                         img=img)
    if damaged:
        raise QuarantineError(damaged)
    if "EncryptedAttributesSequence" in ds:
        raise carrier.NoCarrier("no pacsguard carrier in the pixel data; the object carries an Encrypted Attributes "
                                "Sequence (what embed does when the payload does not fit): decrypt it with the "
                                "decrypt stage (scope attributes) or pacsguard decrypt")
    raise carrier.NoCarrier(NONE)


def _lsb_header(planes: np.ndarray, rng: pee.Range, k: int) -> carrier.Header | None:
    need = 4
    while True:
        data = lsb.read_prefix(planes, k, rng, need)
        try:
            header = carrier.parse_header(data)
        except carrier.Incomplete as exc:
            if len(data) < need or exc.need <= need:  # the pixels end first
                return None
            need = exc.need
            continue
        except carrier.NoCarrier:
            return None
        return header if header.method == "lsb" and header.params == bytes([k]) else None


def describe(ds: Dataset, arr) -> dict:
    """What a carrier says without a key: method, size, recipients' key IDs."""
    img = image.load(ds, arr)
    found = find(ds, img)
    return {"method": found.method, "threshold": found.threshold, "lsb_bits": found.lsb_bits,
            "carrier_bytes": found.size,
            "recipients": [{"key_id": w.key_id, "method": w.method} for w in found.header.recipients]}


def restore_header(ds: Dataset, payload: Dataset) -> list[str]:
    """Put the payload's elements into ``ds`` (the file meta's copies of the SOP UIDs too);
    the keywords (or tags) restored."""
    if deid_record.is_record(payload):  # a deidentify record: its added attributes go, its marker stays out
        deid_record.restore(ds, payload)
        restored = deid_record.originals(payload, parsed=False)
    else:
        restored = list(payload)
        for elem in payload:
            ds[elem.tag] = elem
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for own, mirror in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"), ("SOPClassUID", "MediaStorageSOPClassUID")):
            if own in payload and mirror in meta:
                setattr(meta, mirror, payload[own].value)
    return [_name(elem) for elem in restored]


def _name(elem) -> str:
    """An element's keyword, or its tag (private ones); raw or parsed."""
    keyword = elem.keyword if isinstance(elem, DataElement) else keyword_for_tag(elem.tag)
    return keyword or str(Tag(elem.tag))
