"""The DICOM network destination: C-STORE to a remote node (over :mod:`.ul`).

Associations are kept open and reused: one per sending thread (the destination's
``parallel`` worker threads), so concurrent ``send`` calls never share one. An
association is re-opened after an abort, a release by the peer, ``idle_timeout`` without
traffic, or when an object needs a presentation context it did not propose.

Presentation contexts: every context carries exactly one transfer syntax, so the peer
answers for each syntax separately. For every SOP class this destination has seen, an
association proposes both uncompressed little-endian syntaxes (the ``transfer_syntax``
preference first) plus each other syntax that objects of that class arrived in. The set
is remembered per destination, most recently used first, and cut at DICOM's limit of 128
contexts (the current object's contexts always go in).

Sending: when the peer accepted the file's own transfer syntax, the file is sent as it is
(chunked, no decode/re-encode). Otherwise the object is converted to an accepted
uncompressed syntax: compressed pixel data is decompressed (pydicom with the pylibjpeg
plugins), big endian is swapped to little endian, explicit/implicit VR is re-encoded.
A file that pydicom reads but a peer would not (data set encoded otherwise than its
transfer syntax says, file meta UIDs that differ from the data set's, an odd length) is
re-encoded too, keeping its compressed pixel data.

Response statuses: see :func:`classify_status`. Failures of the association itself
(refused, rejected, aborted, timeouts, TLS) are retryable: they concern the destination,
not the object, so the objects wait in order until it works again.

UIDs: an object's SOP Class, SOP Instance and transfer syntax UIDs are checked (see
:func:`uid_problem`) before anything is remembered or proposed; an object with an invalid
one is refused for good, alone. What is remembered for later proposals has been encoded
in a request once, so one object can never make every later association fail.
"""

from __future__ import annotations

import array
import itertools
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import structlog
from pydantic import Field, field_validator, model_validator
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsguard.daemon.codestream import check_pixel_geometry
from pacsguard.daemon.errors import DeliveryError, QuarantineError
from pacsguard.daemon.extension import Destination, Options
from pacsguard.daemon.item import SEALED_SUFFIX, uid_hash
from pacsguard.daemon.units import AbsPath, Duration

from . import tls as tlsmod
from . import ul
from .aetitle import AETitle
from .scp import dataset_offset
from .ul import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = structlog.get_logger("pacsguard.dicom")

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1..255 (PS3.8 9.3.2.2)
_MAX_SOP_CLASSES = 512  # bound on the per-destination memory of seen SOP classes

# --- options ----------------------------------------------------------------------------


class Timeouts(Options):
    connect: Duration = Field(10.0, description="TCP connection set-up")
    acse: Duration = Field(30.0, description="waiting for the answer to an association request or release")
    dimse: Duration = Field(60.0, description="waiting for the response to a C-STORE or C-ECHO")
    network: Duration = Field(60.0, description="silence on an open connection before it is dropped")


class DicomTLSOptions(Options):
    """DICOM over TLS to the remote node (PS3.15 Annex B), TLS 1.2 or newer."""

    ca: Optional[AbsPath] = Field(
        None, description="CA certificates (PEM) the server certificate must chain to; absent: the system trust store")
    cert: Optional[AbsPath] = Field(
        None, description="client certificate (PEM, then any intermediates), for servers that require one")
    key: Optional[tlsmod.SecretPath] = Field(
        None, description="the client certificate's private key (PEM): a path, or credential:NAME for a systemd "
                          "credential")
    key_password_file: Optional[tlsmod.SecretPath] = Field(
        None, description="file whose first line is the key's password (never inline; path or credential:NAME)")
    server_name: Optional[str] = Field(
        None, description="name the server certificate must carry (default: host)")
    min_version: tlsmod.TlsVersion = Field("1.2", description="oldest TLS version used")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key, or neither")
        if self.key_password_file is not None and self.key is None:
            raise ValueError("key_password_file needs key")
        tlsmod.check_files(ca=self.ca, cert=self.cert, key=self.key, key_password_file=self.key_password_file)
        return self

    def files(self) -> list[Path]:
        return [p for p in (self.ca, self.cert, self.key, self.key_password_file) if p is not None]

    def build(self) -> ssl.SSLContext:
        return tlsmod.client_context(ca=self.ca, cert=self.cert, key=self.key,
                                     key_password_file=self.key_password_file, min_version=self.min_version)


class DicomDestinationOptions(Options):
    """A remote DICOM node that receives objects by C-STORE."""

    ae_title: AETitle = Field(description="called AE title of the remote node")
    host: str = Field(min_length=1, description="host name or address of the remote node")
    port: int = Field(ge=1, le=65535, description="DICOM port of the remote node")
    calling_ae: AETitle = Field("PACSGUARD", description="our AE title, as the remote node sees it")
    timeouts: Timeouts = Field(Timeouts(), description="connect, acse, dimse and network timeouts")
    max_pdu: int = Field(16382, ge=0, description="largest PDU we accept from the peer, in bytes (0: no limit)")
    idle_timeout: Duration = Field(
        10.0, description="release an association after this long without traffic (0: after every object)")
    transfer_syntax: Optional[str] = Field(
        None, description="uncompressed syntax to convert to when the peer does not accept an object's own: "
                          "ExplicitVRLittleEndian (default) or ImplicitVRLittleEndian, by name or UID")
    tls: Optional[DicomTLSOptions] = Field(None, description="TLS 1.2+ to the remote node")

    @field_validator("max_pdu")
    @classmethod
    def _pdu(cls, v):
        if 0 < v < 4096:
            raise ValueError("max_pdu is 0 (no limit) or at least 4096")
        return v

    @field_validator("transfer_syntax")
    @classmethod
    def _syntax(cls, v):
        if v is None:
            return v
        for uid in UNCOMPRESSED:
            if v.strip() in (uid, uid.keyword, uid.name):
                return str(uid)
        raise ValueError("transfer_syntax must be ExplicitVRLittleEndian or ImplicitVRLittleEndian (name or UID)")

    @property
    def preferred_syntaxes(self) -> tuple[UID, UID]:
        """The uncompressed syntaxes in order of preference."""
        first = UID(self.transfer_syntax or ExplicitVRLittleEndian)
        return (first, next(u for u in UNCOMPRESSED if u != first))


# --- C-STORE response statuses --------------------------------------------------------------

SUCCESS, WARNING, DUPLICATE, RETRY, PERMANENT = "success", "warning", "duplicate", "retry", "permanent"

# Failures that say the object itself is wrong for this peer: resending cannot help.
_PERMANENT = {0x0105, 0x0106, 0x0112, 0x0113, 0x0114, 0x0115, 0x0117, 0x0118, 0x0119, 0x0120,
              0x0121, 0x0122, 0x0123, 0x0211, 0x0212}


def status_meaning(code: int) -> str:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (None, ""))[1]
    if meaning:
        return meaning
    category = code_to_category(code)
    return f"{category.lower()} status" if category != "Unknown" else "unknown status"


def classify_status(code: int) -> str:
    """What a C-STORE response status means for delivery.

    success/warning: delivered (warnings are logged); duplicate (0x0111): the peer
    already holds this SOP instance (delivery is at-least-once), delivered; permanent: the
    peer refuses this object for good (SOP class not supported, data set does not match
    the SOP class, cannot understand, ...); retry: anything else, including out of
    resources (0xA7xx), processing failure, not authorised (a property of the caller, not
    of the object: fixed at the peer, then everything flows) and unknown codes.
    """
    from pynetdicom.status import code_to_category

    if code == 0x0000:
        return SUCCESS
    if code == 0x0111:
        return DUPLICATE
    category = code_to_category(code)
    if category == "Warning":
        return WARNING
    if code in _PERMANENT or 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF:
        return PERMANENT
    return RETRY


# --- conversion -----------------------------------------------------------------------------

_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_TYPECODE = {array.array(c).itemsize: c for c in "QLIH"}  # unsigned type of each size


def _swap_words(elem) -> None:
    size = _WORD_SIZE.get(elem.VR)
    if size and isinstance(elem.value, (bytes, bytearray)) and len(elem.value) % size == 0:
        words = array.array(_TYPECODE[size])
        words.frombytes(elem.value)
        words.byteswap()
        elem.value = words.tobytes()


def _reencoded(path: Path, target: UID):
    """The object at ``path`` as a dataset for pynetdicom to encode in ``target``.

    ``target`` is either the file's own (compressed) syntax — the file is re-encoded
    around its pixel data, to repair a data set that does not match its transfer syntax —
    or an uncompressed little-endian syntax: compressed pixel data is decompressed, big
    endian is swapped (pydicom converts numeric VRs when writing, but leaves
    OW/OF/OL/OD/OV bytes alone and refuses to change endianness itself).
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise DeliveryError(f"cannot read the object to re-encode it ({type(exc).__name__})", permanent=True) from None
    meta = getattr(ds, "file_meta", None)
    own = meta.get("TransferSyntaxUID") if meta is not None else None
    if own is not None and own.is_compressed and not target.is_compressed:
        try:
            check_pixel_geometry(ds)  # before a decoder trusts what the codestream declares
        except QuarantineError as exc:
            raise DeliveryError(f"the peer accepts this SOP class only uncompressed, and {exc.reason}",
                                permanent=True) from None
        try:
            ds.decompress(generate_instance_uid=False)  # the same object, in another encoding
        except Exception as exc:
            raise DeliveryError(
                f"the peer accepts this SOP class only uncompressed, and {own.name} pixel data could not be "
                f"decompressed ({type(exc).__name__}; are the codecs installed: pip install pacsguard[codecs])",
                permanent=True) from None
    swap = ds.original_encoding[1] is False and target.is_little_endian
    for elem in ds.iterall():  # every element to a value, so that nothing is copied raw
        if swap:
            _swap_words(elem)
    if meta is None:
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = target
    for kw in ("SOPClassUID", "SOPInstanceUID"):  # what the C-STORE command will carry
        if kw in ds:
            setattr(ds.file_meta, f"MediaStorage{kw}", ds[kw].value)
    ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian, ds.original_character_set)
    return ds


def _encoded(ds, target: UID) -> bytes:
    """The data set ``ds`` encoded in ``target`` (pynetdicom's encoder), padded to even length."""
    from pynetdicom.dsutils import encode

    try:
        data = encode(ds, target.is_implicit_VR, target.is_little_endian, target.is_deflated)
    except Exception as exc:
        data, why = None, f"{type(exc).__name__}: {_first_line(exc)}"
    else:
        why = "encoding failed"
    if not data:
        raise DeliveryError(f"cannot send the object ({why})", permanent=True)
    return data + b"\0" if len(data) % 2 else data


def _sound(path: Path, header, own: Optional[UID]) -> Optional[int]:
    """Where the data set starts, when the file can go out byte for byte as ``own``; else None.

    pydicom reads many flaws leniently; peers do not. The C-STORE command takes the SOP
    UIDs from the data set, which the file meta must repeat; the data set must be
    encoded as its transfer syntax says; and its length must be even (dcmtk-based peers
    refuse an odd last fragment, which unpadded deflated streams have).
    """
    meta = getattr(header, "file_meta", None)
    if own is None or meta is None:
        return None
    if (meta.get("MediaStorageSOPClassUID") != header.get("SOPClassUID")
            or meta.get("MediaStorageSOPInstanceUID") != header.get("SOPInstanceUID")):
        return None
    for tag in header.keys():
        raw = header.get_item(tag)  # raw elements remember how they were actually read
        if getattr(raw, "is_implicit_VR", None) is not None:
            if (raw.is_implicit_VR, raw.is_little_endian) != (own.is_implicit_VR, own.is_little_endian):
                return None
            break
    try:
        with open(path, "rb") as fp:
            offset = dataset_offset(fp, str(own))
            size = os.fstat(fp.fileno()).st_size
    except Exception:
        return None
    if size <= offset or (size - offset) % 2:
        return None
    return offset


# --- associations ---------------------------------------------------------------------------


class _Lost(Exception):
    """The association broke during a C-STORE (no response)."""

    def __init__(self, reason: str, *, stale: bool):
        super().__init__(reason)
        self.reason = reason
        #: it failed at once: the association was most likely dead before we used it
        self.stale = stale


class _Association:
    """One open association (requestor side) on a :class:`~.ul.Channel`."""

    def __init__(self, channel: ul.Channel, contexts: dict[int, tuple[str, str]]):
        self.channel = channel
        self.contexts = contexts  # accepted context id -> (abstract syntax, transfer syntax)
        self.by_pair = {pair: ctx_id for ctx_id, pair in contexts.items()}
        self.accepted: dict[str, set] = {}
        for sop, ts in contexts.values():
            self.accepted.setdefault(sop, set()).add(UID(ts))
        self.reader = ul.MessageReader(channel, {c: ts for c, (_, ts) in contexts.items()})
        self.established = True
        self.aborted = False

    def alive(self) -> bool:
        """False when the peer has closed, aborted or asked to release it while idle (what
        arrives unasked on an idle association is never good news)."""
        if not self.established:
            return False
        sock = self.channel.sock
        try:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return False
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def request(self, ctx_id: int, command: bytes, send_data, msg_id: int, timeout: float) -> dict:
        """Send a request (``send_data()`` sends its data set, if any) and wait for its
        response's command set. ul.ULError when the association breaks or times out."""
        ch = self.channel
        ch.settimeout(timeout)
        ch.send_command(ctx_id, command)
        if send_data is not None:
            send_data()
        while True:
            what, _, cmd = self.reader.next_message(lambda *_: None, idle_timeout=timeout, message_timeout=timeout)
            if what == "release":
                raise ul.ULError("the peer asked to release the association during a request")
            if ul.command_us(cmd, 0x0120) == msg_id:
                return cmd

    def release(self, timeout: float) -> bool:
        """A-RELEASE; True when the peer answered within ``timeout``."""
        if not self.established:
            return False
        self.established = False
        ch = self.channel
        try:
            ch.settimeout(timeout)
            ch.send(ul.RELEASE_RQ_PDU)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                kind, length = ch.read_header()
                ch.skip(length)
                if kind in (ul.RELEASE_RP, ul.ABORT):
                    return kind == ul.RELEASE_RP
            return False
        except ul.ULError:
            return False
        finally:
            ch.close()

    def abort(self) -> None:
        self.established = False
        self.aborted = True
        self.channel.abort(ul.ABORT_USER)


@dataclass
class _Link:
    """One sending thread's association (or none)."""

    owner: threading.Thread
    lock: threading.Lock = field(default_factory=threading.Lock)
    assoc: Optional[_Association] = None
    number: int = 0
    proposed: frozenset = frozenset()  # {(sop class, transfer syntax)}
    accepted: dict = field(default_factory=dict)  # sop class -> {transfer syntax}
    last_used: float = 0.0
    sent: int = 0
    msg_ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_msg_id(self) -> int:
        return (next(self.msg_ids) - 1) % 65535 + 1


_UID_MAX = 64
_UID_PADDING = "\0 "
_UID_CHARS = frozenset("0123456789.")


def uid_problem(value, *, strict: bool = True) -> Optional[str]:
    """Why ``value`` cannot go to a peer as a UID, or None when it can.

    Strict (SOP classes and transfer syntaxes, which are remembered and proposed in every
    later association): PS3.5 9.1, digits and dots, at most 64 characters, no empty
    component. Not strict (a SOP Instance UID, which only goes into its own object's
    C-STORE request, and which the peer judges): ASCII, at most 64 characters; archives
    hold instance UIDs with letters in them, and peers take them. Lenient where real
    peers are, in both: trailing NUL or space padding is not part of the value, and
    components with leading zeros (invalid, yet found in archives) pass. The answer
    never quotes the value.
    """
    if not isinstance(value, str):
        return "more than one value" if isinstance(value, (list, tuple, MultiValue)) else "not text"
    value = value.rstrip(_UID_PADDING)
    if not value:
        return "empty"
    if not value.isascii():
        return "non-ASCII character"
    if strict and not set(value) <= _UID_CHARS:
        return "a character other than digits and dots"
    if len(value) > _UID_MAX:
        return f"longer than {_UID_MAX} characters"
    if strict and "" in value.split("."):
        return "an empty component"
    return None


def _checked(value, element: str, *, strict: bool = True) -> str:
    """``value`` without its padding; a permanent DeliveryError naming ``element`` if it is
    not a UID (so that it never reaches a proposal or the remembered SOP classes)."""
    why = uid_problem(value, strict=strict)
    if why is not None:
        raise DeliveryError(f"{element} is not a valid UID ({why})", permanent=True)
    return str(value).rstrip(_UID_PADDING)


def _identify(header) -> tuple[str, str, Optional[UID]]:
    """SOP Class and Instance UID (the data set's, which the file meta should repeat) and
    the file's transfer syntax, each checked to be a UID."""
    meta = getattr(header, "file_meta", None)
    found = {}
    for kw, name, strict in (("SOPClassUID", "SOP Class UID", True), ("SOPInstanceUID", "SOP Instance UID", False)):
        if header.get(kw):
            found[kw] = _checked(header.get(kw), name, strict=strict)
        elif meta is not None and meta.get(f"MediaStorage{kw}"):
            found[kw] = _checked(meta.get(f"MediaStorage{kw}"), f"Media Storage {name}", strict=strict)
    if len(found) < 2:
        raise DeliveryError("the object has no SOP Class or SOP Instance UID", permanent=True)
    own = meta.get("TransferSyntaxUID") if meta is not None else None
    own = UID(_checked(own, "Transfer Syntax UID")) if own else None
    return found["SOPClassUID"], found["SOPInstanceUID"], own


def _sop_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


class DicomDestination(Destination):
    """C-STORE objects to a remote DICOM node (reused associations, TLS, decompression)."""

    name = "dicom"
    Options = DicomDestinationOptions

    def __init__(self, name: str, options: DicomDestinationOptions):
        super().__init__(name, options)
        ul.preload()
        self._tls: tlsmod.ReloadingContext | None = None  # rebuilt when the certificate files change
        self._server_name = None
        if options.tls is not None:
            self._tls = tlsmod.ReloadingContext(options.tls.build, options.tls.files(),
                                                label=f"destination {name}")
            self._server_name = options.tls.server_name or options.host
        self._lock = threading.Lock()
        self._links: dict[int, _Link] = {}
        self._seen: OrderedDict[str, list[UID]] = OrderedDict()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        #: associations opened so far (for status and tests)
        self.associations_opened = 0

    @property
    def peer(self) -> str:
        return f"{self.options.ae_title}@{self.options.host}:{self.options.port}"

    # -- the Destination contract -----------------------------------------------------------

    def send(self, path: Path, header) -> None:
        if Path(path).suffix == SEALED_SUFFIX:
            raise DeliveryError("the object is sealed whole (.pgenc, not DICOM): route it to a folder "
                                "destination", permanent=True)
        sop_class, sop_instance, own = _identify(header)
        link = self._link()
        with link.lock:
            for attempt in (1, 2):
                fresh = self._ensure(link, sop_class, own)
                self._remember(sop_class, own)  # only once it went into a request
                try:
                    status = self._store(link, Path(path), header, sop_class, sop_instance, own)
                    break
                except _Lost as lost:
                    self._drop(link, "aborted", lost.reason)
                    # A reused association may have died unnoticed (peer restarted, idle
                    # close): if it failed at once, try once more on a fresh one.
                    if fresh or not lost.stale or attempt == 2:
                        raise DeliveryError(lost.reason) from None
            link.last_used = time.monotonic()
            link.sent += 1
            if self.options.idle_timeout == 0:
                self._drop(link, "released", "idle_timeout is 0")
        self._judge(status, sop_instance)

    def close(self) -> None:
        self._stop.set()
        reaper, self._reaper = self._reaper, None
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(timeout=5)
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            if link.lock.acquire(timeout=self.options.timeouts.dimse + self.options.timeouts.acse):
                try:
                    self._drop(link, "released", "destination closed")
                finally:
                    link.lock.release()
        self._stop.clear()

    # -- C-ECHO (pacsguard echo) ------------------------------------------------------------

    def echo(self) -> dict:
        """C-ECHO on a fresh association. Returns timings in seconds; DeliveryError on failure."""
        t0 = time.perf_counter()
        assoc = self._associate(self._request([(ul.VERIFICATION, ExplicitVRLittleEndian),
                                               (ul.VERIFICATION, ImplicitVRLittleEndian)]))
        t1 = time.perf_counter()
        try:
            ctx_id = next(iter(assoc.contexts))
            rsp = assoc.request(ctx_id, ul.c_echo_rq(1), None, 1, self.options.timeouts.dimse)
            t2 = time.perf_counter()
        except ul.ULError as exc:
            assoc.abort()
            raise DeliveryError(f"no C-ECHO response from {self.peer} ({exc})") from None
        if not assoc.release(self.options.timeouts.acse):
            assoc.abort()
        t3 = time.perf_counter()
        status = ul.command_us(rsp, 0x0900)
        if status is None:
            raise DeliveryError(f"no C-ECHO response from {self.peer}")
        if status != 0x0000:
            raise DeliveryError(f"C-ECHO answered with status 0x{status:04X} ({status_meaning(status)})")
        return {"associate_s": t1 - t0, "echo_s": t2 - t1, "release_s": t3 - t2, "total_s": t3 - t0}

    # -- per-thread associations ------------------------------------------------------------

    def _link(self) -> _Link:
        me = threading.current_thread()
        orphan = None
        with self._lock:
            link = self._links.get(me.ident)
            if link is None or link.owner is not me:  # a thread id can be reused
                orphan, link = link, _Link(owner=me)
                self._links[me.ident] = link
            if self._reaper is None and self.options.idle_timeout > 0:
                self._reaper = threading.Thread(target=self._reap, name=f"dicom-idle-{self.destination_name}",
                                                daemon=True)
                self._reaper.start()
        if orphan is not None:
            with orphan.lock:
                self._drop(orphan, "released", "thread ended")
        return link

    def _reap(self) -> None:
        """Release associations idle for ``idle_timeout``, and those of finished threads."""
        idle = self.options.idle_timeout
        while not self._stop.wait(min(max(idle / 4, 0.05), 1.0)):
            with self._lock:
                links = list(self._links.items())
            now = time.monotonic()
            for ident, link in links:
                if not link.lock.acquire(blocking=False):
                    continue  # sending right now
                try:
                    gone = not link.owner.is_alive()
                    if link.assoc is not None and (gone or now - link.last_used >= idle):
                        self._drop(link, "released", "thread ended" if gone else "idle")
                    if gone:
                        with self._lock:
                            if self._links.get(ident) is link:
                                del self._links[ident]
                finally:
                    link.lock.release()

    def _remember(self, sop_class: str, own: Optional[UID]) -> None:
        with self._lock:
            syntaxes = self._seen.get(sop_class)
            if syntaxes is None:
                syntaxes = self._seen[sop_class] = []
                while len(self._seen) > _MAX_SOP_CLASSES:
                    self._seen.popitem(last=False)
            self._seen.move_to_end(sop_class)
            if own is not None and own not in UNCOMPRESSED and own not in syntaxes:
                syntaxes.append(own)

    def _proposal(self, sop_class: str, own: Optional[UID]) -> list[tuple[str, UID]]:
        """(SOP class, transfer syntax) pairs for a new association: ``sop_class`` (with
        ``own``) first, then the others most recently used first, up to 128."""
        preferred = self.options.preferred_syntaxes
        with self._lock:
            order = [sop_class] + [s for s in reversed(self._seen) if s != sop_class]
            groups = [[(s, ts) for ts in dict.fromkeys((*preferred, *self._seen.get(s, ())))] for s in order]
        if own is not None and (sop_class, own) not in groups[0]:
            groups[0].append((sop_class, own))
        pairs: list[tuple[str, UID]] = []
        for group in groups:
            if len(pairs) + len(group) <= MAX_CONTEXTS:
                pairs.extend(group)
        return pairs

    def _request(self, pairs) -> tuple[dict[int, tuple[str, str]], bytes]:
        """The presentation contexts {id: (SOP class, syntax)} and the A-ASSOCIATE-RQ PDU
        proposing ``pairs``."""
        o = self.options
        proposed = {2 * i + 1: (str(sop), str(ts)) for i, (sop, ts) in enumerate(pairs)}
        rq = ul.associate_rq(called=o.ae_title, calling=o.calling_ae, max_pdu=o.max_pdu,
                             contexts=[(c, sop, [ts]) for c, (sop, ts) in proposed.items()],
                             impl_uid=IMPLEMENTATION_CLASS_UID, impl_name=IMPLEMENTATION_VERSION_NAME)
        return proposed, rq

    def _ensure(self, link: _Link, sop_class: str, own: Optional[UID]) -> bool:
        """Make sure ``link`` has an association that proposed (sop_class, own). True if new."""
        assoc = link.assoc
        if assoc is not None and not assoc.alive():
            self._drop(link, "aborted", "closed by the peer or the network")
        wanted = (sop_class, own if own is not None else self.options.preferred_syntaxes[0])
        if link.assoc is not None and wanted in link.proposed:
            return False
        pairs = self._proposal(sop_class, own)
        try:  # before the open association is given up: a bad object must not cost it
            request = self._request(pairs)
        except Exception as exc:  # the UID check should make this impossible: the object's fault
            log.error("cannot build an association request for the object", destination=self.destination_name,
                      error=type(exc).__name__)
            raise DeliveryError(f"cannot propose the object's SOP class and transfer syntax to {self.peer} "
                                f"({type(exc).__name__})", permanent=True) from None
        if link.assoc is not None:
            self._drop(link, "released", "new presentation context needed")
        assoc = self._associate(request, current=sop_class)
        link.assoc, link.proposed, link.sent = assoc, frozenset(pairs), 0
        link.accepted = assoc.accepted
        link.last_used = time.monotonic()
        with self._lock:
            self.associations_opened += 1
            link.number = self.associations_opened
        log.info("association opened", destination=self.destination_name, peer_ae=self.options.ae_title,
                 host=self.options.host, port=self.options.port, tls=self._tls is not None,
                 association=link.number, proposed=len(pairs), accepted=len(assoc.contexts))
        return True

    def _connect(self, ssl_context: Optional[ssl.SSLContext]) -> socket.socket:
        """TCP (and TLS) connection to the peer; DeliveryError with the reason if not."""
        o = self.options
        where = f"{o.host}:{o.port}"
        try:
            sock = socket.create_connection((o.host, o.port), timeout=o.timeouts.connect)
        except ConnectionRefusedError:
            raise DeliveryError(f"connection refused by {where} ({o.ae_title} is not listening)") from None
        except socket.timeout:
            raise DeliveryError(f"no connection to {where} within {o.timeouts.connect:g}s") from None
        except OSError as exc:
            raise DeliveryError(f"cannot connect to {where}: {exc.strerror or type(exc).__name__}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if ssl_context is None:
            return sock
        try:
            return ssl_context.wrap_socket(sock, server_hostname=self._server_name)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise DeliveryError(f"TLS: the certificate of {where} was not accepted ({exc.verify_message})") from None
        except ssl.SSLError as exc:
            sock.close()
            raise DeliveryError(f"TLS handshake with {where} failed ({exc.reason or type(exc).__name__})") from None
        except socket.timeout:
            sock.close()
            raise DeliveryError(f"no connection to {where} within {o.timeouts.connect:g}s (TCP or TLS handshake)") \
                from None
        except OSError as exc:
            sock.close()
            raise DeliveryError(f"TLS handshake with {where} failed ({exc.strerror or type(exc).__name__})") from None

    def _associate(self, request, current: Optional[str] = None) -> _Association:
        """Open an association with ``request`` (from :meth:`_request`); DeliveryError
        (with a clear reason) if not."""
        o = self.options
        proposed, rq = request
        ssl_context = self._tls.get() if self._tls is not None else None
        try:
            sock = self._connect(ssl_context)
        except DeliveryError as exc:
            log.warning("association failed", destination=self.destination_name, peer_ae=o.ae_title,
                        host=o.host, port=o.port, reason=exc.reason)
            raise
        ch = ul.Channel(sock)
        reason = None
        try:
            ch.settimeout(o.timeouts.acse)
            ch.send(rq)
            kind, length = ch.read_header()
            if length > ul.MAX_ASSOCIATE:
                raise ul.ProtocolError("oversized answer")
            body = ch.recv_exact(length)
        except ul.ULError as exc:
            ch.close()
            if "timed out" in str(exc):
                reason = f"no answer from {self.peer} to the association request within {o.timeouts.acse:g}s"
            else:
                reason = f"association with {self.peer} aborted or connection closed during negotiation"
                if ssl_context is not None:
                    reason += " (over TLS: the server may have refused our client certificate)"
            kind = None
        if kind == ul.ASSOCIATE_AC:
            try:
                acceptance = ul.decode_acceptance(struct.pack(">BBI", kind, 0, length) + body)
            except ul.ProtocolError as exc:
                ch.abort(ul.ABORT_USER)
                reason = f"{self.peer} answered with {exc}"
            else:
                contexts = {c: proposed[c] for c, ts in acceptance.contexts.items()
                            if c in proposed and ts == proposed[c][1]}
                if contexts:
                    ch.peer_max_pdu = acceptance.max_pdu
                    return _Association(ch, contexts)
                _Association(ch, {}).release(o.timeouts.acse)
                if current is not None:
                    raise DeliveryError(f"{self.peer} does not support {_sop_name(current)} "
                                        f"(every presentation context was rejected)", permanent=True)
                reason = f"{self.peer} rejected every presentation context"
        elif kind == ul.ASSOCIATE_RJ and len(body) >= 4:
            ch.close()
            reason = f"association rejected by {self.peer}: " + ul.Rejection(body[1], body[2], body[3]).describe()
        elif kind is not None:
            ch.close()
            reason = f"association with {self.peer} aborted or connection closed during negotiation"
            if ssl_context is not None and kind == ul.ABORT:
                reason += " (over TLS: the server may have refused our client certificate)"
        log.warning("association failed", destination=self.destination_name, peer_ae=o.ae_title,
                    host=o.host, port=o.port, reason=reason)
        raise DeliveryError(reason)

    def _drop(self, link: _Link, how: str, why: str) -> None:
        """Release (or abort) ``link``'s association, if any. The caller holds ``link.lock``."""
        assoc, link.assoc = link.assoc, None
        link.proposed, link.accepted = frozenset(), {}
        if assoc is None:
            return
        if assoc.established:
            if how == "aborted":
                assoc.abort()
            elif not assoc.release(self.options.timeouts.acse):  # no A-RELEASE-RP in time
                assoc.abort()
                how = "aborted"
        else:
            assoc.channel.close()
        event = "association aborted" if how == "aborted" else "association released"
        (log.warning if how == "aborted" else log.info)(
            event, destination=self.destination_name, peer_ae=self.options.ae_title,
            association=link.number, requests=link.sent, reason=why)

    # -- one C-STORE ---------------------------------------------------------------------------

    def _store(self, link: _Link, path: Path, header, sop_class: str, sop_instance: str, own: Optional[UID]) -> int:
        accepted = link.accepted.get(sop_class, set())
        offset = _sound(path, header, own) if own in accepted else None
        if offset is not None:
            target, payload = own, None  # fast path: the file's bytes as they are
        else:
            if own in accepted and not own.is_deflated:
                target = own  # re-encode around the (compressed) pixel data
            else:
                target = next((ts for ts in self.options.preferred_syntaxes if ts in accepted), None)
            if target is None:
                if not accepted:
                    raise DeliveryError(f"{self.peer} does not support {_sop_name(sop_class)} "
                                        f"(presentation context rejected)", permanent=True)
                names = ", ".join(sorted(UID(t).name for t in accepted))
                raise DeliveryError(f"{self.peer} accepts {_sop_name(sop_class)} only as {names}; "
                                    f"cannot convert from {own.name if own else 'a file without meta'}",
                                    permanent=True)
            payload = _encoded(_reencoded(path, target), target)
            log.info("object re-encoded for the peer", destination=self.destination_name,
                     from_syntax=own.name if own else None, to_syntax=target.name)
        assoc = link.assoc
        ctx_id = assoc.by_pair[(sop_class, str(target))]
        msg_id = link.next_msg_id()
        command = ul.c_store_rq(msg_id, sop_class, sop_instance)
        try:
            fp = open(path, "rb") if payload is None else None
        except OSError as exc:
            raise DeliveryError(f"cannot read the spooled file ({exc.strerror or type(exc).__name__})",
                                scope="object") from None

        def send_data():
            if fp is not None:
                fp.seek(offset)
                assoc.channel.send_dataset(ctx_id, fp, os.fstat(fp.fileno()).st_size - offset)
            else:
                assoc.channel.send_dataset_bytes(ctx_id, payload)

        started = time.monotonic()
        try:
            rsp = assoc.request(ctx_id, command, send_data, msg_id, self.options.timeouts.dimse)
        except OSError as exc:  # reading the spool file (the channel's errors are ULErrors)
            self._drop(link, "aborted", "the spooled file could not be read during C-STORE")
            raise DeliveryError(f"cannot read the spooled file ({exc.strerror or type(exc).__name__})",
                                scope="object") from None
        except ul.ULError as exc:
            elapsed = time.monotonic() - started
            if "timed out" in str(exc) and elapsed >= self.options.timeouts.dimse * 0.95:
                raise _Lost(f"no C-STORE response from {self.peer} within {self.options.timeouts.dimse:g}s",
                            stale=False) from None
            raise _Lost(f"association with {self.peer} aborted or connection lost during C-STORE",
                        stale=elapsed < 1.0) from None
        except Exception:  # a bug, part-way through a message: the association cannot go on
            self._drop(link, "aborted", "unexpected error during C-STORE")
            raise
        finally:
            if fp is not None:
                fp.close()
        status = ul.command_us(rsp, 0x0900)
        if status is None:
            raise _Lost(f"C-STORE response from {self.peer} without a status", stale=False)
        return status

    def _judge(self, code: int, sop_instance: str) -> None:
        kind = classify_status(code)
        text = f"status 0x{code:04X} ({status_meaning(code)})"
        if kind == SUCCESS:
            return
        if kind in (WARNING, DUPLICATE):
            log.warning("C-STORE delivered with a warning" if kind == WARNING else "peer already holds the object",
                        destination=self.destination_name, peer_ae=self.options.ae_title,
                        status=f"0x{code:04X}", meaning=status_meaning(code), sop=uid_hash(sop_instance))
            return
        if kind == PERMANENT:
            raise DeliveryError(f"{self.peer} refused the object: {text}", permanent=True)
        raise DeliveryError(f"{self.peer} could not store the object now: {text}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else ""
