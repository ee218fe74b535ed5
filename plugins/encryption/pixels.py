"""Pixel scope: the Pixel Data becomes AES-256-GCM ciphertext of the same length.

The object stays a valid DICOM object of the same geometry (a viewer shows noise, a PACS
stores it). What is encrypted is the native pixel data:

- native transfer syntaxes (implicit/explicit little endian, explicit big endian,
  deflated): the Pixel Data value exactly as stored (its padding byte included); the
  object keeps its transfer syntax, and decryption gives back the very same bytes;
- compressed (encapsulated) transfer syntaxes: the pixels decoded through the item's
  decoding path, as native little endian bytes; the output is Explicit VR Little Endian
  with the Image Pixel attributes of the decoded pixels (YBR colour decoded to RGB,
  Planar Configuration 0). Decryption gives these native pixels back bit-exactly; the
  original transfer syntax is recorded, not re-encoded.

The private block (see :mod:`.block`) holds the nonce, the tags, the wrapped data keys
and the original values of the attributes changed to mark the object (DerivationDescription
and ImageComments "PACSGUARD ENCRYPTED ..."), those sealed
under the same data key. The associated data binds the SOP Instance UID, the geometry,
Bits Allocated/Stored, Pixel Representation, the original transfer syntax, the length and
the chunk size: a ciphertext moved to another object, or a re-labelled one, fails.
"""

from __future__ import annotations

import copy
import json
import os

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsguard.daemon import rawvalues
from pacsguard.daemon.elements import new_dataset, new_element
from pacsguard.daemon.errors import QuarantineError

from . import aead, block
from .envelope import new_data_key, unwrap, wrap_all

SCHEME = "PACSGUARD PIXELS 1"
WRAP_CONTEXT = b"PACSGUARD PIXELS 1 data key"
MARK = "PACSGUARD ENCRYPTED"
#: what encryption changes to mark the object (restored by decryption). Not Image Type:
#: its value 1 decides, in enhanced multi-frame objects, which attributes must be present
MARKING = (Tag("DerivationDescription"), Tag("ImageComments"))
#: the nonce of the sealed marking values: base XOR this (chunk counters never get there)
ORIGINALS_COUNTER = 1 << 95

NOT_ENCRYPTED = "object is not encrypted by pacsguard (no PACSGUARD private block)"
AUTH_FAILED = ("authentication failed: pixel data or its context (SOP Instance UID, geometry, "
               "transfer syntax) was changed after encryption")
_PIXEL_DATA = Tag("PixelData")
_EXTENDED_OFFSETS = (Tag(0x7FE00001), Tag(0x7FE00002))


def is_encrypted(ds: Dataset) -> bool:
    b = block.find(ds)
    return b is not None and block.SCHEME in b and b[block.SCHEME].value == SCHEME


def transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = None
    if meta is not None and _TRANSFER_SYNTAX in meta._dict:
        ts = rawvalues.value(meta, _TRANSFER_SYNTAX, "UI")
        if ts is rawvalues.CONVERT:
            ts = meta.TransferSyntaxUID
    if not ts:
        raise QuarantineError("no Transfer Syntax UID in the file meta information")
    return UID(ts)


_SOP_INSTANCE, _ROWS, _COLUMNS, _SAMPLES, _FRAMES = 0x00080018, 0x00280010, 0x00280011, 0x00280002, 0x00280008
_BITS_ALLOCATED, _BITS_STORED, _PIXEL_REPRESENTATION = 0x00280100, 0x00280101, 0x00280103
_MISSING = object()
_DERIVATION_DESCRIPTION, _IMAGE_COMMENTS, _TRANSFER_SYNTAX = 0x00082111, 0x00204000, 0x00020010


#: the VRs of the context's elements read from their raw bytes where :mod:`rawvalues` can
_VRS = {_SOP_INSTANCE: "UI", _ROWS: "US", _COLUMNS: "US", _SAMPLES: "US", _BITS_ALLOCATED: "US",
        _BITS_STORED: "US", _PIXEL_REPRESENTATION: "US"}


def _get(ds: Dataset, tag: int, default=_MISSING):
    """``ds.get(keyword, default)`` by tag (no keyword lookup); KeyError without a default."""
    if tag in ds._dict:
        vr = _VRS.get(tag)
        v = rawvalues.value(ds, tag, vr) if vr else rawvalues.CONVERT
        return ds[tag].value if v is rawvalues.CONVERT else v
    if default is _MISSING:
        raise KeyError(tag)
    return default


def _context(ds: Dataset, ts: str, length: int, chunk_size: int) -> bytes:
    sop = _get(ds, _SOP_INSTANCE, None)
    if not sop:
        raise QuarantineError("no SOP Instance UID to bind the encryption to")
    try:
        bits = int(_get(ds, _BITS_ALLOCATED))
        fields = {
            "scheme": SCHEME, "sop": str(sop), "rows": int(_get(ds, _ROWS)), "columns": int(_get(ds, _COLUMNS)),
            "samples": int(_get(ds, _SAMPLES, 1)), "frames": int(_get(ds, _FRAMES, 1) or 1),
            "bits_allocated": bits, "bits_stored": int(_get(ds, _BITS_STORED, None) or bits),
            "pixel_representation": int(_get(ds, _PIXEL_REPRESENTATION, 0)),
            "transfer_syntax": str(ts), "length": length, "chunk_size": chunk_size,
        }
    except (KeyError, AttributeError, TypeError, ValueError):
        raise QuarantineError("cannot read the image geometry (Rows, Columns, Bits Allocated, Number of Frames)") from None
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _marking_context(context: bytes, tags) -> bytes:
    return context + b"\0marking\0" + ",".join(f"{int(t):08X}" for t in tags).encode()


def _native(ds: Dataset, arr) -> tuple[bytes, dict]:
    """Native little endian bytes of decoded pixels, and the Image Pixel values they need."""
    import numpy as np

    arr = np.asarray(arr)  # a decoder plugin may hand back any array-like
    bits = int(ds.BitsAllocated)
    if bits == 1:
        from pydicom.pixels import pack_bits

        data = pack_bits(arr, pad=False)
    else:
        if arr.dtype.itemsize * 8 != bits:
            raise QuarantineError(f"decoded pixels are {arr.dtype.itemsize * 8}-bit; Bits Allocated is {bits}")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = -(-int(ds.Rows) * int(ds.Columns) * samples * frames * bits // 8)
    if len(data) != expected:
        raise QuarantineError(f"decoded pixel data has {len(data)} bytes; the geometry needs {expected}")
    if len(data) % 2:
        data += b"\0"
    updates = {}
    if samples > 1:
        updates["PlanarConfiguration"] = 0  # decoders return interleaved samples
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            updates["PhotometricInterpretation"] = "RGB"  # pydicom's decoders return RGB
    return data, updates


def encrypt(ds: Dataset, recipients, decode, chunk_size: int = aead.DEFAULT_CHUNK) -> list[str]:
    """Encrypt the pixel data of ``ds`` in place for ``recipients`` (keys); ``decode()``
    gives the decoded pixels of a compressed object. Returns the recipients' key IDs."""
    if _PIXEL_DATA not in ds:
        raise QuarantineError("no Pixel Data (7FE0,0010) to encrypt")
    if block.find(ds) is not None:
        raise QuarantineError("the object already carries a PACSGUARD private block (encrypted twice?)")
    ts = transfer_syntax(ds)
    updates: dict = {}
    if ts.is_compressed:
        plain, updates = _native(ds, decode())
    else:
        plain = ds.PixelData
        if plain is None or ds[_PIXEL_DATA].is_undefined_length:
            raise QuarantineError("native Pixel Data without a defined length")
    context = _context(ds, ts, len(plain), chunk_size)
    data_key = new_data_key()
    wrapped = wrap_all(data_key, recipients, WRAP_CONTEXT)
    base = os.urandom(aead.NONCE_BYTES)
    cipher, tags = aead.seal(data_key, base, plain, context, chunk_size)

    changed = list(MARKING)
    originals = new_dataset()
    for t in changed:
        if t in ds:
            originals[t] = copy.deepcopy(ds[t])
    sealed = aead.seal_small(data_key, aead.nonce(base, ORIGINALS_COUNTER), block.encode(originals),
                             _marking_context(context, changed))

    # everything that can fail has run: change the object
    ids = [w.key_id for w in wrapped]
    if ts.is_compressed:
        # parse every element while the encoding it was read in still applies (some files
        # mix implicit VR into an explicit VR transfer syntax)
        ds.walk(lambda *_: None)
        for keyword, v in updates.items():
            setattr(ds, keyword, v)
        for t in _EXTENDED_OFFSETS:
            if t in ds:
                del ds[t]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = bytes(cipher)
    elem = ds[_PIXEL_DATA]
    elem.is_undefined_length = False
    if ts.is_compressed:
        elem.VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    _mark(ds, ids)
    b = block.create(ds)
    block.put(b, block.SCHEME, "LO", SCHEME)
    block.put(b, block.ORIGINAL_TS, "UI", str(ts))
    block.put(b, block.NONCE, "OB", base)
    block.put(b, block.CHUNK_SIZE, "UL", chunk_size)
    block.put(b, block.TAGS, "OB", tags)
    block.write_recipients(b, wrapped)
    block.put(b, block.CHANGED, "AT", list(changed))
    block.put(b, block.ORIGINALS, "OB", sealed)
    return ids


def _mark(ds: Dataset, ids: list[str]) -> None:
    for element in (new_element(_DERIVATION_DESCRIPTION, "ST",
                                f"{MARK} pixels (AES-256-GCM) for key IDs {', '.join(ids)}"[:1024]),
                    new_element(_IMAGE_COMMENTS, "LT",
                                f"{MARK}: the pixel data is AES-256-GCM ciphertext; pacsguard decrypt restores it")):
        ds._dict[element.tag] = element  # ds.DerivationDescription = ...: standard, ASCII, valid


def decrypt(ds: Dataset, keys, transfer_syntax: str = "native") -> str:
    """Restore the pixel data (and the marking attributes) of ``ds`` in place with one of
    ``keys``. Nothing changes unless every check passed. ``transfer_syntax``: for a
    compressed original, ``native`` keeps the decoded pixels native, ``original``
    re-encodes them losslessly where :func:`reencode` can. Returns the transfer syntax UID
    the object now has."""
    b = block.find(ds)
    if b is None:
        raise QuarantineError(NOT_ENCRYPTED)
    scheme = block.value(b, block.SCHEME, "scheme")
    if scheme != SCHEME:
        raise QuarantineError(f"the PACSGUARD private block holds {str(scheme)[:40]!r}, not {SCHEME!r}")
    if _PIXEL_DATA not in ds or ds.PixelData is None:
        raise QuarantineError("encrypted object without its Pixel Data")
    ts = UID(str(block.value(b, block.ORIGINAL_TS, "original transfer syntax")))
    chunk_size = int(block.value(b, block.CHUNK_SIZE, "chunk size"))
    base = bytes(block.value(b, block.NONCE, "nonce"))
    tags = bytes(block.value(b, block.TAGS, "authentication tags"))
    changed = [Tag(t) for t in block.as_list(block.value(b, block.CHANGED, "marking attributes"))]
    sealed = bytes(block.value(b, block.ORIGINALS, "sealed marking values"))
    if chunk_size < 1:
        raise QuarantineError(AUTH_FAILED)
    data_key = unwrap(block.read_recipients(b), keys, WRAP_CONTEXT)
    cipher = ds.PixelData
    context = _context(ds, ts, len(cipher), chunk_size)
    try:
        plain = aead.open_(data_key, base, cipher, tags, context, chunk_size)
        originals = block.decode(aead.open_small(data_key, aead.nonce(base, ORIGINALS_COUNTER), sealed,
                                                 _marking_context(context, changed)))
    except aead.AuthenticationError:
        raise QuarantineError(AUTH_FAILED) from None

    ds.PixelData = bytes(plain)
    for t in changed:
        if t in originals:
            ds[t] = originals[t]
        elif t in ds:
            del ds[t]
    block.remove(ds)
    if transfer_syntax == "original" and ts.is_compressed:
        reencode(ds, ts)
    return str(ds.file_meta.TransferSyntaxUID)


#: lossless syntaxes: re-encoding decoded pixels in them loses nothing (JPEG 2000 "Image
#: Compression" and the JPEG processes may be lossy: never re-encoded into)
LOSSLESS = frozenset({
    "1.2.840.10008.1.2.5",      # RLE Lossless
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.201",  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless, SV1
})


def reencode(ds: Dataset, ts: UID) -> bool:
    """Re-encode the native pixels of ``ds`` in ``ts`` if it is lossless and pydicom has an
    encoder for it, keeping the result only if it decodes to the very same pixels; else
    leave ``ds`` native. True when it was re-encoded."""
    import numpy as np
    from pydicom.pixels import get_encoder

    if str(ts) not in LOSSLESS:
        return False
    try:
        encoder = get_encoder(ts)
        if encoder is None or not encoder.is_available:
            return False
    except (NotImplementedError, ValueError):
        return False
    native = ds.pixel_array.copy()
    keep = {t: copy.deepcopy(ds[t]) for t in (_PIXEL_DATA, Tag("PhotometricInterpretation"),
                                              Tag("PlanarConfiguration"), Tag("LossyImageCompression")) if t in ds}
    meta_ts = ds.file_meta.TransferSyntaxUID
    try:
        ds.compress(ts)
        again = ds.pixel_array
        if again.shape == native.shape and np.array_equal(again, native):
            return True
    except Exception:
        pass  # an encoder that refuses these pixels: native it stays
    for t in (Tag("PhotometricInterpretation"), Tag("PlanarConfiguration"), Tag("LossyImageCompression")):
        if t in ds and t not in keep:
            del ds[t]
    for t, elem in keep.items():
        ds[t] = elem
    ds.file_meta.TransferSyntaxUID = meta_ts
    ds._pixel_array, ds._pixel_id = None, {}
    return False
