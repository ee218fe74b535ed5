"""Embedding into, and revealing from, one data set: the work of the ``embed`` and
``reveal`` stages and of ``pacsguard reveal``, without the pipeline around it.

Embedding seals the payload into a carrier (:mod:`.carrier`) bound to the image's
geometry and to a digest of its original pixels, hides it (:mod:`.pee` or :mod:`.lsb`)
and writes the marked pixels back natively. Revealing finds the carrier
(:mod:`.reading`), opens it with a recipient's key, restores the pixels (method
reversible) and checks them against the digest, then puts the payload's attributes back.
Nothing in the data set changes unless every step succeeded.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from pacsguard.daemon.errors import QuarantineError

from . import carrier, image, lsb, pee
from .reading import find, restore_header

PREDICTOR = b"\x01"  # the carrier parameter of method reversible: rhombus, two passes
CHANGED = ("the pixels were changed after embedding: the carrier authenticated but the restored pixels are "
           "not the original ones")


class NoRoom(QuarantineError):
    """The payload does not fit the pixels (the reason names needed and available bits)."""


def embed(ds: Dataset, arr, payload: Dataset, recipients, *, method: str = "reversible", max_threshold: int = 32,
          lsb_bits: int = 1) -> dict:
    """Hide ``payload`` for ``recipients`` in ``ds`` (decoded pixels ``arr``); the
    distortion record. NoRoom when it does not fit (``ds`` unchanged)."""
    arr = np.asarray(arr)
    img = image.load(ds, arr)
    if method == "reversible":
        params, digest = PREDICTOR, image.digest(arr)
    else:
        params, digest = bytes([lsb_bits]), image.digest(img.array(lsb.masked(img.planes, lsb_bits)))
    sealed = carrier.seal(payload, digest, recipients, method, params, image.context(ds, img, method, params))
    used = img.carrier_planes()
    try:
        if method == "reversible":
            done = pee.embed(used, sealed.data, img.rng, max_threshold=max_threshold)
            marked, threshold = done.planes, done.threshold
        else:
            h = sealed.header
            marked = lsb.embed(used, h.raw, sealed.data[h.size:], carrier.order_key(sealed.data_key), lsb_bits,
                               img.rng)
            threshold = None
    except pee.NoCapacity as exc:
        raise NoRoom(f"the payload does not fit the pixels: it needs {exc.needed} bits, {exc.available} are "
                     f"available ({exc.why})") from None
    planes = img.with_carrier(marked)
    image.store(ds, img.array(planes))
    record = {"embedded": True, "method": method, "threshold": threshold,
              "lsb_bits": lsb_bits if method == "lsb" else None, "carrier_bytes": len(sealed.data),
              "bits_per_pixel": round(8 * len(sealed.data) / used.size, 5), "key_ids": sealed.header.key_ids}
    record.update(pee.distortion(img.planes, planes, img.rng))
    return record


def reveal(ds: Dataset, arr, keys) -> dict:
    """Undo an embedding in ``ds`` (decoded pixels ``arr``) with one of ``keys``: the
    original pixels (method reversible) and the payload's attributes are put back.
    Returns what was done (keywords, never values)."""
    img = image.load(ds, arr)
    found = find(ds, img)
    key = carrier.data_key(found.header, keys)
    payload, digest = carrier.open_(found.header, found.body(key), key, found.context)
    restored = img.planes if found.restored is None else img.with_carrier(found.restored)
    check = img.array(restored) if found.method == "reversible" else img.array(lsb.masked(restored, found.lsb_bits))
    if image.digest(check) != digest:
        raise QuarantineError(CHANGED)
    if found.method == "reversible":
        image.store(ds, img.array(restored))
    names = restore_header(ds, payload)
    opened = next(w.key_id for w in found.header.recipients if any(k.key_id == w.key_id for k in keys))
    return {"method": found.method, "threshold": found.threshold, "carrier_bytes": found.size, "key_id": opened,
            "pixels": "restored" if found.method == "reversible" else "unchanged (method lsb is irreversible)",
            "attributes": names}
