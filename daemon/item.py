"""What a stage receives: one object in flight, with lazy parsing.

The dataset is parsed once, on first use; pixel data is decoded only when a stage asks,
through one decoding path (the ``pacsguard_decode_pixels`` hook) that a GPU decoder can
replace. Stages leave results for later stages in ``results`` without touching the DICOM.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from .errors import QuarantineError
from .fileio import append_range, fsync_dir
from .parsing import (DEFER_SIZE, PIXEL_DATA, UNDEFINED, check_integrity,  # noqa: F401 (re-exported)
                      read_dataset, read_header)

# Facts about how an object arrived, usable in route `match:` blocks.
TRANSPORT_FACTS = ("source", "source_type", "calling_ae", "called_ae", "calling_host")

#: The file suffix of an object a stage sealed whole (see :meth:`Item.seal`): not DICOM.
SEALED_SUFFIX = ".pgenc"


@dataclass(frozen=True)
class TransportFacts:
    """How an object reached pacsguard. Contains no patient data."""

    source: str
    source_type: str
    calling_ae: str | None = None
    called_ae: str | None = None
    calling_host: str | None = None
    received_at: float = field(default_factory=time.time)

    def get(self, name: str) -> str | None:
        return getattr(self, name) if name in TRANSPORT_FACTS else None


def uid_hash(uid: str | None) -> str | None:
    """A short, stable, non-reversible tag for a UID, for logs (never log the UID)."""
    if not uid:
        return None
    return hashlib.sha256(str(uid).encode()).hexdigest()[:16]


class Item:
    """One DICOM object moving through a route's pipeline."""

    def __init__(
        self,
        job_id: int,
        path: Path,
        facts: TransportFacts,
        *,
        keys: Mapping[str, Any] | None = None,
        decode_pixels=None,
        decode_batch=None,
        pixels=None,
    ):
        self.job_id = job_id
        self.path = Path(path)
        self.facts = facts
        #: Results one stage leaves for later ones, keyed by the producing stage's name
        #: (e.g. ``results["deidentify"]`` with the original values).
        self.results: dict[str, Any] = {}
        #: The loaded keys (name -> :class:`~pacsguard.daemon.keys.Key`), read-only. One
        #: mapping per config generation, shared by its items (a read-only one is not copied).
        if not isinstance(keys, MappingProxyType):
            keys = MappingProxyType(dict(keys or {}))
        self.keys: Mapping[str, Any] = keys
        self._decode_pixels = decode_pixels
        self._decode_batch = decode_batch
        #: the config's ``pixels:`` section (``PixelsConfig``: which decoder, which device)
        #: for the decoding path; None: the defaults (pydicom's CPU decoders)
        self.pixel_settings = pixels
        self._header: Dataset | None = None
        self._dataset: Dataset | None = None
        self._modified = False
        self._sealer = None
        self._seal_received = False

    # -- parsing ---------------------------------------------------------------------
    @property
    def header(self) -> Dataset:
        """The dataset without pixel data: for reading attributes (routing, templates)."""
        if self._dataset is not None:
            return self._dataset
        if self._header is None:
            self._header = read_header(self.path)
        return self._header

    @property
    def dataset(self) -> Dataset:
        """The full dataset. Taking it means the stage may change it: it is written out.

        Large values (pixel data) are read from the file when first used; a stage that
        only changes attributes never loads them, and :meth:`write` copies them raw."""
        if self._sealer is not None:
            raise QuarantineError("the object is sealed whole (encrypt, scope file): a later stage cannot change it")
        return self._take_dataset()

    def _take_dataset(self) -> Dataset:
        if self._dataset is None:
            # the header is this item's own parse (with large values deferred): take it over
            self._dataset = self._header if self._header is not None else read_header(self.path)
            self._header = None
        self._modified = True
        return self._dataset

    @property
    def modified(self) -> bool:
        return self._modified

    def seal(self, sealer) -> None:
        """Have :meth:`write` pass the finished Part-10 bytes through ``sealer(src, dst)``
        (binary files; the whole-file encryption stage). The object then leaves as those
        bytes, in a file with :data:`SEALED_SUFFIX`, and its clear header stays beside it
        in the spool (:func:`header_path`) for the destinations' path templates. No stage
        can change the object after this. An object no stage changed is sealed as it was
        received, byte for byte."""
        self._seal_received = not self._modified
        self._take_dataset()  # the object is written out
        self._sealer = sealer

    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    @property
    def output_suffix(self) -> str:
        """The suffix of the processed file: ``.dcm``, or :data:`SEALED_SUFFIX`."""
        return SEALED_SUFFIX if self._sealer is not None else ".dcm"

    def load_pixel_data(self) -> None:
        """Read the Pixel Data value now, if it is still deferred, with one read of the
        received file (pydicom's own deferred read re-opens the file and parses the element
        again: a quarter of a millisecond of a 512x512 slice). Stages that read or replace
        the pixel data call this first; the default decoding path does."""
        ds = self._take_dataset()
        raw = ds.get_item(_PIXEL_DATA, keep_deferred=True) if _PIXEL_DATA in ds else None
        if not isinstance(raw, RawDataElement) or raw.value is not None or raw.value_tell is None \
                or raw.length in (None, _UNDEFINED) or ds.filename is None or Path(ds.filename) != self.path:
            return
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("TransferSyntaxUID") == _DEFLATED:
            return  # its positions are in the inflated stream, not in the file
        with open(self.path, "rb", buffering=0) as fh:
            data = os.pread(fh.fileno(), raw.length, raw.value_tell)
        if len(data) != raw.length:
            raise QuarantineError("the received file ends inside its pixel data")
        ds[_PIXEL_DATA] = raw._replace(value=data)

    def pixels(self):
        """Decoded pixel data (a numpy array), through the configured decoding path."""
        if self._decode_pixels is None:
            return self._take_dataset().pixel_array
        return self._decode_pixels(item=self)

    @staticmethod
    def pixels_of(items: list) -> list:
        """Decoded pixel data of several items (a batching stage's group), one array per
        item: through the batch decoding path (``pacsguard_decode_pixels_batch``: a GPU
        decoder decodes them in one call) when they share one, else one by one."""
        batch = items[0]._decode_batch if items else None
        if batch is None or any(i._decode_batch is not batch for i in items):
            return [i.pixels() for i in items]
        out = batch(items=list(items))
        if out is None or len(out) != len(items):
            return [i.pixels() for i in items]
        return list(out)

    def geometry(self) -> tuple:
        """(rows, columns, samples, bits allocated, frames): the batching key."""
        h = self.header
        return (
            h.get("Rows"),
            h.get("Columns"),
            h.get("SamplesPerPixel", 1),
            h.get("BitsAllocated"),
            int(h.get("NumberOfFrames", 1) or 1),
        )

    @property
    def sop_uid_hash(self) -> str | None:
        return uid_hash(self.header.get("SOPInstanceUID"))

    def write(self, dest: Path, dirs: set | None = None, sync: bool = True) -> int:
        """Write the (modified) dataset to ``dest`` durably; return the bytes written.

        ``dirs``: the caller fsyncs the folders (``dest``'s, and its parent's when the
        folder is new) once for several files, before it relies on them; they are added to
        this set instead of being synced here. ``sync=False``: nothing is fsync'd (the
        spool's processed outputs, which it can make again: see :mod:`.spool`); the file
        is still complete under its name or absent (written under a temporary name, renamed).

        When the pixel data was never loaded (the stages changed attributes only) and the
        encoding is unchanged, its bytes are copied from the received file by the kernel
        instead of being read into memory and encoded again. A sealed item is written as
        the sealer's output, with its clear header beside it."""
        made = not dest.parent.is_dir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self._sealer is not None:
            size = self._write_sealed(dest, sync)
        else:
            size = _durably(dest, self._encode, sync)
        if not sync:
            return size
        folders = [dest.parent, dest.parent.parent] if made else [dest.parent]
        if dirs is not None:
            dirs.update(folders)
            return size
        for folder in folders:
            fsync_dir(folder)  # the new name is on disk too (and the new folder's own entry)
        return size

    def _encode(self, fh) -> None:
        """The dataset as a Part-10 file into ``fh``."""
        ds = self._take_dataset()
        raw = _raw_pixel_range(ds, self.path)
        if raw is None:
            _save(ds, fh)
            fh.flush()
            return
        with _without_pixel_data(ds):
            _save(ds, fh)
        with open(self.path, "rb") as src:
            try:
                append_range(src, fh, *raw)
            except EOFError:
                raise QuarantineError("the received file ends inside its pixel data") from None

    def written_header(self) -> Dataset | None:
        """After :meth:`write`, the header of what was written, for the delivery of that
        file (so that it is not parsed again): this item's dataset, its Pixel Data dropped
        (the item is finished; the memory goes now, and the item's header stays readable).
        None for a sealed object."""
        ds = self._dataset
        if ds is None or self._sealer is not None:
            return None
        if _PIXEL_DATA in ds:
            del ds[_PIXEL_DATA]
        return ds

    def _write_sealed(self, dest: Path, sync: bool = True) -> int:
        plain = self.path if self._seal_received else dest.with_name(dest.name + ".plain.part")
        try:
            if not self._seal_received:
                with open(plain, "wb") as fh:  # never synced: it is removed once sealed
                    self._encode(fh)

            def seal(fh):
                with open(plain, "rb") as src:
                    self._sealer(src, fh)

            head = self._take_dataset()

            def clear_header(fh):
                with _without_pixel_data(head):
                    head.walk(lambda *_: None)  # parsed in the encoding it was read in (some files mix VRs)
                    head.save_as(fh, enforce_file_format=True)

            size = _durably(header_path(dest), clear_header, sync)
            return size + _durably(dest, seal, sync)
        finally:
            if not self._seal_received:
                plain.unlink(missing_ok=True)


@contextlib.contextmanager
def _without_pixel_data(ds: Dataset):
    """``ds`` without its Pixel Data element for the time of the block (then put back as
    it was, deferred or not). (``Dataset.copy()`` would not do: its copy shares the
    element dictionary, so deleting from the copy deletes from ``ds``.)"""
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True) if _PIXEL_DATA in ds else None
    if elem is not None:
        del ds[_PIXEL_DATA]
    try:
        yield ds
    finally:
        if elem is not None:
            ds[_PIXEL_DATA] = elem


def _save(ds: Dataset, fh) -> None:
    """``ds`` as a Part-10 file, as ``save_as(enforce_file_format=True)`` writes it, without
    its deep copy and re-validation of the File Meta Information on every object (half the
    cost of writing a CT slice). Deflated and meta-less data sets go through pydicom."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or not ts.is_transfer_syntax or ts.is_deflated or ds.preamble not in (None, b"\0" * 128) \
            or "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        ds.save_as(fh, enforce_file_format=bool(meta))
        return
    from pydicom.filebase import DicomFileLike

    from .dicomwrite import write_dataset_fast, write_file_meta_fast

    for keyword, tag, meta_tag in _MEDIA_UIDS:  # as dcmwrite: the meta follows the data set
        text = _uid_text(ds, tag)
        if text is not None and text == _uid_text(meta, meta_tag):
            continue  # the same already (compared unconverted: a UID's conversion validates it)
        value = ds.get(keyword)
        if value and meta.get(f"MediaStorage{keyword}") != value:
            setattr(meta, f"MediaStorage{keyword}", value)
    if "PixelData" in ds:  # PS3.5 A.4: encapsulated pixel data has an undefined length
        ds["PixelData"].is_undefined_length = ts.is_compressed
    out = DicomFileLike(fh)
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_fast(out, meta)
    out.is_implicit_VR, out.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
    write_dataset_fast(out, ds)


_MEDIA_UIDS = (("SOPClassUID", 0x00080016, 0x00020002), ("SOPInstanceUID", 0x00080018, 0x00020003))


def _uid_text(ds: Dataset, tag: int) -> str | None:
    """A single-valued UID's value, unconverted where converting would not change it
    (:func:`.dicomwrite.uid_text`), or as converted already; None otherwise."""
    from .dicomwrite import uid_text

    elem = ds._dict.get(tag)
    if isinstance(elem, RawDataElement):
        return uid_text(elem)
    value = getattr(elem, "value", None)
    return value if isinstance(value, str) else None


def _durably(dest: Path, fill, sync: bool = True) -> int:
    """Write ``dest`` through ``fill(fh)`` into a temporary name, fsync (unless not
    ``sync``), rename; its size."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as fh:
            fill(fh)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest.stat().st_size


def header_path(path: Path) -> Path:
    """Where the clear header of a sealed object is kept in the spool."""
    return Path(path).with_name(Path(path).name + ".hdr")


def delivery_header(path: Path) -> Dataset:
    """The header a destination gets with the file ``path``: the cached parse, the file's
    own, or for a sealed object (not DICOM) the clear header kept beside it."""
    cached = HEADERS.take(path)
    if cached is not None:
        return cached
    return read_header(header_path(path) if Path(path).suffix == SEALED_SUFFIX else path)


class HeaderCache:
    """Headers parsed while processing, handed to the delivery of the same file in the same
    process (each is taken once), so that an unchanged object is not parsed twice."""

    def __init__(self, size: int = 256):
        self._size = size
        self._headers: dict[str, Dataset] = {}
        self._lock = threading.Lock()

    def put(self, path: Path, header: Dataset) -> None:
        with self._lock:
            self._headers[str(path)] = header
            while len(self._headers) > self._size:
                self._headers.pop(next(iter(self._headers)))

    def take(self, path: Path) -> Dataset | None:
        with self._lock:
            return self._headers.pop(str(path), None)


#: The process's cache (processing and delivery run in the same process).
HEADERS = HeaderCache()


_UNDEFINED = UNDEFINED
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_DATA = PIXEL_DATA
_LONG_HEADER_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _raw_pixel_range(ds: Dataset, source: Path) -> tuple[int, int] | None:
    """(offset, length) in ``source`` of the whole Pixel Data element (header and value)
    when it can be copied as it is into the encoding of ``ds``; else None.

    That is: the element is still unread (deferred), has a defined length, is the last
    element, and the data set is written in the transfer syntax it was read in."""
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True) if _PIXEL_DATA in ds else None
    if raw is None or getattr(raw, "value", b"") is not None or getattr(raw, "value_tell", None) is None:
        return None
    if raw.length in (None, _UNDEFINED) or ds.filename is None or Path(ds.filename) != Path(source):
        return None
    if max(ds.keys()) != _PIXEL_DATA:
        return None  # elements after the pixel data (padding, signatures): the slow path
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts is None or ts == _DEFLATED or not ts.is_transfer_syntax:
        return None
    implicit, little = ds.original_encoding
    if (ts.is_implicit_VR, ts.is_little_endian) != (implicit, little) \
            or (raw.is_implicit_VR, raw.is_little_endian) != (implicit, little):
        return None
    header = 8 if implicit or raw.VR not in _LONG_HEADER_VRS else 12
    return raw.value_tell - header, header + raw.length
