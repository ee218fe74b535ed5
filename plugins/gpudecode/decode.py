"""Decode the pixel data of items on the GPU, batched; say why not where the CPU must.

:func:`decode_items` takes the items of one call (one object, or a batching stage's
group), collects the encoded frames of those the GPU serves, decodes them all in one
batched call of the backend, and has pydicom assemble each object's array from its frames
(:mod:`.pydicom_plugin`). An item comes back as None (the CPU decoders then decode it)
when its transfer syntax or pixel layout is not served, or when any of its frames did not
decode on the GPU: an object's frames all come from one decoder.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import numpy as np
import structlog
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array

from pacsguard.daemon.codestream import check_pixel_geometry

from . import pydicom_plugin
from .backend import Frame
from .support import BITS, GPU_SYNTAXES, SAMPLES


class Stats:
    """What this process's GPU path did: objects decoded on the GPU, and the CPU's, by reason
    (names and counts only)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.gpu = 0
        self.cpu: collections.Counter = collections.Counter()

    def add_gpu(self, n: int = 1) -> None:
        with self._lock:
            self.gpu += n

    def add_cpu(self, reason: str) -> None:
        with self._lock:
            self.cpu[reason] += 1

    def reset(self) -> None:
        with self._lock:
            self.gpu, self.cpu = 0, collections.Counter()


STATS = Stats()
log = structlog.get_logger("pacsguard.gpudecode")


@dataclass
class Plan:
    """One item the GPU may decode: its dataset, transfer syntax and encoded frames."""

    item: object
    ds: object
    ts: str
    frames: list[Frame] = field(default_factory=list)


def plan(item) -> tuple[Plan | None, str | None]:
    """The item's frames for the GPU, or (None, why the CPU decodes it). Raises
    QuarantineError, as the CPU path does, for a header whose geometry is impossible."""
    item.load_pixel_data()
    ds = item.dataset
    check_pixel_geometry(ds)  # before any decoder trusts what a codestream declares
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    codec = GPU_SYNTAXES.get(ts)
    if codec is None:
        return None, "transfer syntax not served on the GPU"
    if "PixelData" not in ds:
        return None, "no pixel data"
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        count = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None, "unreadable image geometry"
    if bits not in BITS or samples not in SAMPLES:
        return None, "pixel layout not served on the GPU (Bits Allocated 8 or 16, 1 or 3 samples)"
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        data = list(generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=offsets))
    except Exception:
        return None, "encapsulated pixel data not split into frames"
    if len(data) < count:
        return None, "fewer encoded frames than Number of Frames"
    return Plan(item, ds, ts, [Frame(bytes(d), codec, rows, columns, samples) for d in data]), None


def decode_items(items: list, backend) -> list:
    """One pixel array per item (as pydicom's ``pixel_array`` makes it), or None for an item
    the CPU decoders are to decode. ``backend.decode(frames)`` decodes a batch of frames
    (:class:`~.backend.GpuBackend`)."""
    out: list = [None] * len(items)
    plans: list[tuple[int, Plan]] = []
    for i, item in enumerate(items):
        p, why = plan(item)
        if p is None:
            STATS.add_cpu(why)
        else:
            plans.append((i, p))
    if not plans:
        return out
    batch = [f for _, p in plans for f in p.frames]
    try:
        decoded = backend.decode(batch)
    except Exception as exc:  # the device failed the whole batch: every object goes to the CPU
        log.warning("gpu-decode: the GPU failed a batch; the CPU decoders decode its objects",
                    objects=len(plans), frames=len(batch), error=type(exc).__name__)
        decoded = [None] * len(batch)
    at = 0
    for i, p in plans:
        frames = decoded[at:at + len(p.frames)]
        at += len(p.frames)
        if any(f is None for f in frames):
            STATS.add_cpu("the GPU could not decode a frame")
            continue
        arr = _assemble(p, frames, backend)
        if arr is None:
            STATS.add_cpu("pydicom could not assemble the GPU's frames")
            continue
        out[i] = arr
        STATS.add_gpu()
    return out


def _assemble(p: Plan, frames: list[np.ndarray], backend) -> np.ndarray | None:
    """pydicom's pixel array of the object from its decoded frames."""
    by_data = {f.data: arr for f, arr in zip(p.frames, frames)}
    template = p.frames[0]

    def one(data: bytes):
        got = backend.decode([Frame(data, template.codec, template.rows, template.columns, template.samples)])
        return got[0] if got else None

    try:
        with pydicom_plugin.session(by_data, one):
            arr = pixel_array(p.ds, decoding_plugin=pydicom_plugin.LABEL)  # as ``ds.pixel_array`` does
    except Exception:
        return None
    return arr

