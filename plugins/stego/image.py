"""The pixels a carrier lives in: which kinds are supported, as planes of integers, and
back into the data set as native pixel data (lossless).

The pixels are what the item's decoding path gives (``item.pixels()``: compressed data is
decoded first), values masked to Bits Stored (sign-extended when signed), colour as RGB
with interleaved samples. They become planes (one per frame and sample) of integers; the
embedding writes them back as native pixel data: a native transfer syntax stays (big
endian data is written big endian), a compressed one becomes Explicit VR Little Endian;
the Image Pixel attributes become those of the decoded pixels (YBR colour decoded to RGB,
Planar Configuration 0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from pacsguard.daemon.errors import QuarantineError

from .pee import Range

_PIXEL_DATA = Tag("PixelData")
#: the most samples a carrier spreads over (see :meth:`Image.used_frames`)
MAX_SAMPLES = 1 << 23
_EXTENDED_OFFSETS = (Tag(0x7FE00001), Tag(0x7FE00002))


def check_supported(ds: Dataset) -> None:
    """Refuse, with the reason, pixel kinds a carrier cannot live in without corrupting them."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise QuarantineError("float pixel data cannot carry an embedded payload (only integer pixels)")
    if _PIXEL_DATA not in ds:
        raise QuarantineError("the object has no pixel data to embed into")
    bits = ds.get("BitsAllocated")
    if bits == 1:
        raise QuarantineError("1-bit pixel data (segmentations, overlays) cannot carry an embedded payload")
    if bits not in (8, 16, 32):
        raise QuarantineError(f"Bits Allocated {bits!r} is not supported for embedding (8, 16 or 32)")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        raise QuarantineError("palette colour pixel data cannot carry an embedded payload "
                              "(its values are indices into a colour table)")
    if int(ds.get("SamplesPerPixel", 1) or 1) not in (1, 3):
        raise QuarantineError(f"Samples per Pixel {ds.get('SamplesPerPixel')!r} is not supported for embedding")


@dataclass
class Image:
    """Decoded pixels as planes, with what it takes to put them back."""

    planes: np.ndarray  # (frames x samples, rows, columns), int32 (int64 above 28 bits stored)
    shape: tuple  # the decoded array's shape
    dtype: np.dtype
    frames: int
    samples: int
    rng: Range
    bits_stored: int
    signed: bool

    def used_frames(self) -> np.ndarray:
        """The frames the carrier lives in: all of them, or every n-th frame when there
        are more than :data:`MAX_SAMPLES` samples (memory and time stay bounded; the
        payload is still spread over the whole series). Fixed by the geometry alone."""
        per_frame = self.planes[0].size * self.samples
        step = max(1, -(-per_frame * self.frames // MAX_SAMPLES))
        return np.arange(0, self.frames, step)

    def carrier_planes(self, planes: np.ndarray | None = None) -> np.ndarray:
        """The planes of :meth:`used_frames` (all of them: the planes themselves)."""
        planes = self.planes if planes is None else planes
        if len(self.used_frames()) == self.frames:
            return planes
        rows, cols = planes.shape[1:]
        by_frame = planes.reshape(self.frames, self.samples, rows, cols)
        return by_frame[self.used_frames()].reshape(-1, rows, cols)

    def with_carrier(self, carrier: np.ndarray) -> np.ndarray:
        """All planes, those of :meth:`used_frames` replaced by ``carrier``."""
        if len(self.used_frames()) == self.frames:
            return carrier
        rows, cols = self.planes.shape[1:]
        out = self.planes.copy().reshape(self.frames, self.samples, rows, cols)
        out[self.used_frames()] = carrier.reshape(-1, self.samples, rows, cols)
        return out.reshape(-1, rows, cols)

    def array(self, planes: np.ndarray) -> np.ndarray:
        """Planes back into the decoded array's shape and type."""
        rows, cols = planes.shape[1:]
        arr = planes.reshape(self.frames, self.samples, rows, cols).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(arr.reshape(self.shape).astype(self.dtype))


def padding(ds: Dataset, signed: bool, bits_allocated: int) -> tuple[int, int] | None:
    """The padding values (Pixel Padding Value, up to Pixel Padding Range Limit) as stored
    values, or None."""
    values = [ds.get(k) for k in ("PixelPaddingValue", "PixelPaddingRangeLimit")]
    values = [int(v) for v in values if isinstance(v, int)]
    if not values or "PixelPaddingValue" not in ds:
        return None
    span = 1 << bits_allocated
    if signed:
        values = [v - span if v >= span // 2 else v for v in values]
    else:
        values = [v % span for v in values]
    return min(values), max(values)


def load(ds: Dataset, arr) -> Image:
    """The planes of decoded pixels ``arr`` of ``ds``."""
    check_supported(ds)
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise QuarantineError(f"decoded pixels are {arr.dtype} values: only integer pixels can carry a payload")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits_allocated = int(ds.BitsAllocated)
        bits_stored = int(ds.get("BitsStored") or bits_allocated)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    except (AttributeError, TypeError, ValueError):
        raise QuarantineError("cannot read the image geometry (Rows, Columns, Bits Allocated, Number of Frames)") from None
    if arr.size != rows * cols * frames * samples or not 2 <= bits_stored <= min(bits_allocated, 32):
        raise QuarantineError("the decoded pixels do not match Rows, Columns, Samples per Pixel, Number of Frames "
                              "and Bits Stored")
    if arr.dtype.itemsize * 8 != bits_allocated:
        raise QuarantineError(f"decoded pixels are {arr.dtype.itemsize * 8}-bit; Bits Allocated is {bits_allocated}")
    planes = arr.reshape(frames, rows, cols, samples).transpose(0, 3, 1, 2).reshape(frames * samples, rows, cols)
    rng = Range.stored(bits_stored, signed, padding(ds, signed, bits_allocated))
    dtype = np.int32 if bits_stored <= 28 else np.int64
    return Image(planes.astype(dtype), arr.shape, arr.dtype, frames, samples, rng, bits_stored, signed)


def digest(arr: np.ndarray) -> bytes:
    """SHA-256 of decoded pixels: their shape, type and little endian bytes."""
    head = json.dumps({"shape": list(arr.shape), "dtype": arr.dtype.str[1:]}).encode()
    h = hashlib.sha256(b"PACSGUARD STEGO 1 pixels\0" + head + b"\0")
    h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.digest()


def context(ds: Dataset, image: Image, method: str, params: bytes) -> bytes:
    """The carrier's associated data: what must not change between embedding and reveal.
    No UIDs and no patient data: the carrier is meant to survive a rewritten header."""
    rows, cols = image.planes.shape[1:]
    fields = {"scheme": "PACSGUARD STEGO 1", "method": method, "params": params.hex(), "rows": rows,
              "columns": cols, "frames": image.frames, "samples": image.samples,
              "bits_allocated": image.dtype.itemsize * 8, "bits_stored": image.bits_stored,
              "signed": image.signed, "padding": [image.rng.pad_lo, image.rng.pad_hi]}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def store(ds: Dataset, arr: np.ndarray) -> None:
    """Write decoded pixels ``arr`` into ``ds`` as native pixel data."""
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(getattr(meta, "TransferSyntaxUID", "") or ExplicitVRLittleEndian))
    order = ">" if ts == ExplicitVRBigEndian else "<"
    data = arr.astype(arr.dtype.newbyteorder(order), copy=False).tobytes()
    if len(data) % 2:
        data += b"\0"
    if ts.is_compressed:
        # parse every element while the encoding it was read in still applies (some files
        # mix implicit VR into an explicit VR transfer syntax)
        ds.walk(lambda *_: None)
        for t in _EXTENDED_OFFSETS:
            if t in ds:
                del ds[t]
        if meta is not None:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0  # decoders return interleaved samples
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # pydicom's decoders return RGB
    ds.PixelData = data
    elem = ds[_PIXEL_DATA]
    elem.is_undefined_length = False
    elem.VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
