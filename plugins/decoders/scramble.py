"""The ``scramble`` and ``unscramble`` stages: keyed block scrambling of the pixels (numpy).

::

    - scramble: {key: vit-key, block_size: 16}            # flip: true adds negative-positive
    - unscramble: {key: vit-key}                          # the key holders' side

People cannot read the output; a model converted with the key (``infer``) can classify
it. A perceptual scrambler, not a cipher: see the README for what it does not protect.
What is refused, and why (nothing is padded: padding would change the geometry):

- pixel data that is not 8- or 16-bit integers (1-bit, 32-bit, float), or not 1 or 3
  samples per pixel;
- rows or columns that are not multiples of the block size;
- objects with overlay planes (60xx,3000) or an icon image (0088,0200): they would stay
  readable beside the scrambled pixels.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from pydantic import Field
from pydicom.dataset import Dataset

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.extension import Options, Stage
from pacsguard.daemon.keys import KeyUse

from . import blocks, marking, pixeldata

MARK = "PACSGUARD SCRAMBLED"
_SECRET = frozenset({"secret"})


class ScrambleOptions(Options):
    key: str = Field(description="name of a secret key in the key store; the keyed orders are derived from it")
    block_size: int = Field(16, ge=2, le=64, description="block size in pixels (the model's patch size); rows and "
                                                         "columns must be multiples of it")
    flip: bool = Field(False, description="also turn the values at keyed positions of every block negative-positive "
                                          "over the stored range")


class UnscrambleOptions(Options):
    key: str = Field(description="name of the secret key the object was scrambled with")


def _key(item, name: str):
    try:
        return item.keys[name]
    except KeyError:
        raise QuarantineError(f"key {name!r} is not loaded in the key store") from None


def check(ds: Dataset, block: int | None) -> None:
    """Refuse, with the reason, what scrambling cannot handle (before decoding anything)."""
    if "PixelData" not in ds:
        what = "float" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "no"
        raise QuarantineError(f"{what} pixel data: scramble handles 8- and 16-bit integer pixels only")
    bits = int(ds.get("BitsAllocated") or 0)
    if bits not in pixeldata.BITS:
        raise QuarantineError(f"Bits Allocated {bits}: scramble handles 8- and 16-bit pixels only")
    frames, rows, columns, samples = pixeldata.geometry(ds)
    if samples not in (1, 3):
        raise QuarantineError(f"{samples} samples per pixel: scramble handles 1 (grey, palette) and 3 (colour)")
    if block is not None and (rows % block or columns % block):
        raise QuarantineError(f"{rows} x {columns} pixels is not a multiple of the block size {block}: scramble "
                              f"refuses rather than pads; choose a block size that divides both")
    if any(t.group & 0xFF00 == 0x6000 and t.element == 0x3000 for t in ds.keys()):
        raise QuarantineError("the object has overlay planes (60xx,3000), which would stay readable: remove them first")
    if "IconImageSequence" in ds:
        raise QuarantineError("the object has an icon image (0088,0200), which would stay readable: remove it first")


def _block_key(ds: Dataset, secret: bytes, block: int, flip: bool) -> blocks.BlockKey:
    _, rows, columns, samples = pixeldata.geometry(ds)
    return blocks.derive(secret, rows=rows, columns=columns, samples=samples, block=block, flip=flip)


def _pixels(item, ds: Dataset) -> np.ndarray:
    return pixeldata.as_frames(item.pixels(), ds)


class Scramble(Stage):
    """Scramble the pixels block-wise with a key (models converted with it still classify)."""

    name = "scramble"
    inverse = "unscramble"
    Options = ScrambleOptions

    @classmethod
    def key_uses(cls, options: ScrambleOptions) -> list[KeyUse]:
        return [KeyUse("key", options.key, _SECRET)]

    def process(self, item):
        key = _key(item, self.options.key)
        header = item.header
        if marking.find(header, marking.SCRAMBLE_CREATOR) is not None:
            raise QuarantineError("the object is already scrambled (it carries a PACSGUARD SCRAMBLE 1 block)")
        block, flip = self.options.block_size, self.options.flip
        check(header, block)
        ds = item.dataset
        received_ts = pixeldata.transfer_syntax(ds)
        plain = _pixels(item, ds)
        try:
            out = blocks.scramble(plain, _block_key(ds, key.secret, block, flip), pixeldata.stored_range(ds))
        except ValueError as exc:
            raise QuarantineError(f"cannot scramble: {exc}") from None
        # everything that can fail has run: change the object
        kept = marking.originals(ds)
        pixeldata.store(ds, out)
        ds.DerivationDescription = (f"{MARK} block {block}{' negative-positive' if flip else ''} "
                                    f"for key ID {key.key_id}")
        ds.ImageComments = f"{MARK}: the pixels are block-scrambled; pacsguard unscramble restores them"
        b = marking.create(ds, marking.SCRAMBLE_CREATOR)
        b.add_new(marking.SCHEME, "LO", blocks.SCHEME)
        b.add_new(marking.BLOCK_SIZE, "US", block)
        b.add_new(marking.FLIP, "CS", "YES" if flip else "NO")
        b.add_new(marking.KEY_ID, "LO", key.key_id)
        b.add_new(marking.ORIGINAL_TS, "UI", str(received_ts))
        b.add_new(marking.ORIGINALS, "OB", kept)
        item.results["scramble"] = {"block_size": block, "flip": flip, "key_id": key.key_id}
        return item


def scrambled_with(ds: Dataset) -> Optional[dict]:
    """What a scramble stage recorded in ``ds`` (block size, flip, key ID), or None."""
    b = marking.find(ds, marking.SCRAMBLE_CREATOR)
    if b is None:
        return None
    scheme = marking.value(b, marking.SCHEME, "scheme")
    if scheme != blocks.SCHEME:
        raise QuarantineError(f"the PACSGUARD SCRAMBLE 1 block holds {str(scheme)[:40]!r}, not {blocks.SCHEME!r}")
    return {"block_size": int(marking.value(b, marking.BLOCK_SIZE, "block size")),
            "flip": str(marking.value(b, marking.FLIP, "flip")) == "YES",
            "key_id": str(marking.value(b, marking.KEY_ID, "key ID")), "block": b}


class Unscramble(Stage):
    """Restore the pixels a scramble stage scrambled, exactly (the key holders' side)."""

    name = "unscramble"
    Options = UnscrambleOptions

    @classmethod
    def key_uses(cls, options: UnscrambleOptions) -> list[KeyUse]:
        return [KeyUse("key", options.key, _SECRET, private=True)]

    def process(self, item):
        key = _key(item, self.options.key)
        found = scrambled_with(item.header)
        if found is None:
            raise QuarantineError("the object is not scrambled by pacsguard (no PACSGUARD SCRAMBLE 1 block)")
        if found["key_id"] != key.key_id:
            raise QuarantineError(f"the object was scrambled with key ID {found['key_id']}; key "
                                  f"{self.options.key!r} has key ID {key.key_id}")
        check(item.header, found["block_size"])
        ds = item.dataset
        kept = marking.value(found["block"], marking.ORIGINALS, "original values")
        scrambled = _pixels(item, ds)
        try:
            plain = blocks.unscramble(scrambled, _block_key(ds, key.secret, found["block_size"], found["flip"]),
                                      pixeldata.stored_range(ds))
        except ValueError as exc:
            raise QuarantineError(f"cannot unscramble: {exc}") from None
        pixeldata.store(ds, plain)
        marking.restore(ds, kept)
        marking.remove(ds, marking.SCRAMBLE_CREATOR)
        return item
