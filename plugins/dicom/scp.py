"""The DICOM network source: this node's AE answers C-ECHO and stores C-STORE requests.

Every storage SOP class is accepted (private and unknown ones too) in the transfer syntax
the caller proposes first: the dataset is never decoded or re-encoded here. Each
association runs in a thread of its own over :mod:`.ul`. When a C-STORE request's command
arrives, a partial file is opened in the spool with fresh File Meta Information (which
also records the caller); the data set's fragments are written into it as they come off
the socket. Then the spool fsyncs it under its final name, and only then the answer is
Success; the object's job row is written after the answer, while the caller sends its next
object (a file without its row is adopted at the next start, see the spool).
When the spool is over its limit, the service is stopping, or the write fails, the answer
is a failure status (0xA700); the data set is read and discarded, and nothing of the
object stays in the spool. A caller that breaks the protocol gets an A-ABORT.

Access: the called AE title must be this node's; the calling AE title must be on the
allow-list (optionally from a given host or network); otherwise the association is
rejected (A-ASSOCIATE-RJ) and the refusal logged with AE titles and address only.

Slow peers (slow-loris): the TLS handshake and the whole A-ASSOCIATE-RQ must arrive within
``acse_timeout`` of the connection, and each DIMSE message within its budget of waiting
(:class:`.ul.MessageReader`: ``dimse_timeout`` plus time earned at ``min_transfer_rate``);
an association idle for ``network_timeout`` is closed. Connections that hold no association
slot (still setting up, or C-ECHO only) are kept in a pool of their own, where a new one
drops the oldest (:mod:`.admission`): they cannot take the slots of storing associations,
and C-ECHO stays answered when every slot is busy.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog
from pydantic import Field, field_validator, model_validator

from pacsguard.daemon.extension import Options, Source
from pacsguard.daemon.fileio import append_range
from pacsguard.daemon.item import uid_hash
from pacsguard.daemon.pipeline import bug_summary
from pacsguard.daemon.spool import SpoolFull
from pacsguard.daemon.units import AbsPath, Duration, Size

from . import tls as tlsmod
from . import ul
from .admission import DropLog, Pending, PendingPool
from .aetitle import AETitle
from .ul import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = structlog.get_logger("pacsguard.dicom")

# C-STORE / association answers (PS3.4 B.2.3, PS3.8 9.3.4)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_USER, SOURCE_ACSE, SOURCE_PRESENTATION = 0x01, 0x02, 0x03
REASON_CALLING_AE, REASON_CALLED_AE = 0x03, 0x07
REASON_PROTOCOL_VERSION = 0x02  # with SOURCE_ACSE
UNRECOGNIZED_OPERATION = 0x0211
REASON_CONGESTION, REASON_LOCAL_LIMIT = 0x01, 0x02


def transfer_syntaxes() -> list[str]:
    """Every transfer syntax offered for storage: native and compressed."""
    from pydicom import uid

    return [
        uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
        uid.JPEGLSLossless, uid.JPEGLSNearLossless,
        uid.JPEG2000Lossless, uid.JPEG2000, uid.JPEG2000MCLossless, uid.JPEG2000MC,
        uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K,
        uid.JPIPHTJ2KReferenced, uid.JPIPHTJ2KReferencedDeflate,
        uid.RLELossless,
    ]


# --- options ---------------------------------------------------------------------------



_HOSTNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


class AllowedCaller(Options):
    """One entry of the allow-list: an AE title, optionally bound to where it connects from."""

    ae_title: AETitle = Field(description="calling AE title of the peer")
    host: str | None = Field(
        None, description="only from this IP address, network (CIDR, e.g. 10.1.2.0/24) or host name"
                          " (resolved at each association); absent: from any host")

    @field_validator("host")
    @classmethod
    def _host(cls, v):
        if v is None:
            return v
        v = v.strip()
        try:
            return str(ipaddress.ip_network(v, strict=False)) if "/" in v else str(ipaddress.ip_address(v))
        except ValueError:
            pass
        if not v or len(v) > 253 or not set(v) <= _HOSTNAME_CHARS or v.startswith(("-", ".")):
            raise ValueError(f"{v!r} is not an IP address, CIDR network or host name")
        return v

    def permits(self, calling_ae: str, peer) -> bool:
        """Does this entry let ``calling_ae`` connect from ``peer`` (an ip_address or None)?"""
        if calling_ae != self.ae_title:
            return False
        if self.host is None:
            return True
        return peer is not None and any(peer in net for net in _networks(self.host))


def _networks(host: str) -> list:
    try:
        return [ipaddress.ip_network(host, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        log.warning("allow-list host name does not resolve", host=host)
        return []
    return [ipaddress.ip_network(_normal_ip(info[4][0])) for info in infos]


def _normal_ip(text: str):
    """An ip_address, IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) as IPv4; None if not an IP."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TlsOptions(Options):
    """DICOM over TLS (the secure transport connection profiles of PS3.15 Annex B)."""

    cert: AbsPath = Field(description="this node's certificate (PEM), followed by any intermediate certificates")
    key: tlsmod.SecretPath = Field(
        description="the certificate's private key (PEM): a path, or credential:NAME for a systemd credential")
    key_password_file: tlsmod.SecretPath | None = Field(
        None, description="file whose first line is the key's password (never inline; path or credential:NAME);"
                          " absent: the key is not encrypted")
    ca: AbsPath | None = Field(
        None, description="CA certificates (PEM) that client certificates must chain to; a client certificate"
                          " that does not is refused")
    require_client_cert: bool = Field(
        False, description="refuse callers that present no client certificate signed by `ca` (mutual TLS)")
    min_version: tlsmod.TlsVersion = Field("1.2", description="oldest TLS version accepted")

    @model_validator(mode="after")
    def _consistent(self):
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs `ca`, the CA certificates to check client certificates against")
        tlsmod.check_files(cert=self.cert, key=self.key, key_password_file=self.key_password_file, ca=self.ca)
        return self

    def files(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.key_password_file, self.ca) if p is not None]

    def build(self) -> ssl.SSLContext:
        return tlsmod.server_context(self.cert, self.key, key_password_file=self.key_password_file, ca=self.ca,
                                     require_client_cert=self.require_client_cert, min_version=self.min_version)


class DicomSourceOptions(Options):
    ae_title: AETitle = Field(
        "PACSGUARD", description="this node's AE title: callers must use it as the called AE title (1-16 characters)")
    host: str = Field("0.0.0.0", description="listen address (0.0.0.0: every IPv4 interface, :: every IPv6 one)")
    port: int = Field(11112, ge=0, le=65535, description="listen port (0: any free port, logged at start)")
    allowed_callers: list[AllowedCaller] = Field(
        default_factory=list,
        description="callers allowed to connect: [{ae_title, host}], host optional; others are rejected."
                    " Empty or absent: ANY caller is accepted (only on a network you trust)")
    max_associations: int = Field(
        10, ge=1, le=1000, description="simultaneous associations that may store (C-STORE); more are rejected"
                                       " (transient: callers retry). C-ECHO-only associations count against"
                                       " max_pending_associations instead")
    max_pending_associations: int | None = Field(
        None, ge=1, le=2000,
        description="connections that hold no association slot: still in their TLS handshake or association"
                    " request, or C-ECHO-only. When there are this many, a new connection drops the oldest"
                    " (under a slow-loris attack, a slow one). Absent: twice max_associations, at least 16")
    acse_timeout: Duration = Field(
        30.0, gt=0, description="the TLS handshake and the whole association request must be done within this,"
                                " counted from the connection")
    dimse_timeout: Duration = Field(
        60.0, gt=0, description="wait this long for each read within a DIMSE message; the whole message may take"
                                " this long of waiting plus 1s for each min_transfer_rate bytes it brings")
    min_transfer_rate: Size = Field(
        16 * 1024, ge=1, description="bytes per second: a DIMSE message slower than this on average is cut off"
                                     " (the association aborted) once its dimse_timeout head start is spent;"
                                     " slow-loris protection, lower it only for callers on very slow links")
    network_timeout: Duration = Field(60.0, gt=0, description="close an association idle (between messages)"
                                                              " for this long")
    max_pdu: Size = Field(
        0, description="largest PDU this node accepts, announced to callers (0: unlimited, the fastest;"
                       " otherwise at least 4096 bytes)")
    tls: TlsOptions | None = Field(None, description="accept DICOM over TLS only (TLS 1.2 or newer); absent: plain TCP")

    @property
    def pending_limit(self) -> int:
        return self.max_pending_associations or max(16, 2 * self.max_associations)

    @field_validator("max_pdu")
    @classmethod
    def _pdu(cls, v):
        if v and not 4096 <= v <= 0xFFFFFFFF:
            raise ValueError("max_pdu is 0 (unlimited) or between 4096 and 4294967295 bytes")
        return v

    @field_validator("host")
    @classmethod
    def _listen_host(cls, v):
        v = v.strip()
        if not v:
            raise ValueError("empty listen address")
        return v


# --- Part-10 assembly ------------------------------------------------------------------

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class MalformedDataset(ValueError):
    """The received bytes cannot be turned into a valid Part-10 file."""


def _element_end(fp: BinaryIO, pos: int, implicit: bool, little: bool) -> tuple[int, int] | None:
    """(group, end offset) of the element starting at ``pos``; None at end of data."""
    fp.seek(pos)
    head = fp.read(8)
    if len(head) < 8:
        return None
    e = "<" if little else ">"
    group = struct.unpack(e + "H", head[:2])[0]
    if implicit:
        length = struct.unpack(e + "I", head[4:8])[0]
        start = pos + 8
    elif head[4:6] in _LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            raise MalformedDataset("truncated element header")
        length = struct.unpack(e + "I", more)[0]
        start = pos + 12
    else:
        length = struct.unpack(e + "H", head[6:8])[0]
        start = pos + 8
    if length == 0xFFFFFFFF:
        if group == 0x0002:
            raise MalformedDataset("undefined length in group 0002")
        return group, -1
    return group, start + length


def dataset_offset(fp: BinaryIO, transfer_syntax: str) -> int:
    """Where the data set starts in a received file.

    The file may begin with a preamble, ``DICM`` and File Meta Information, or with the
    data set itself. Group 0002 elements that a non-conformant caller put into
    the data set are skipped too (they would be read as File Meta), unless the data set is
    deflated or in a transfer syntax whose encoding is unknown.
    """
    from pydicom.uid import UID

    fp.seek(0)
    head = fp.read(132)
    pos = 0
    if len(head) == 132 and head[128:132] == b"DICM":
        pos = 132
        while True:  # File Meta Information: always Explicit VR Little Endian
            found = _element_end(fp, pos, implicit=False, little=True)
            if found is None or found[0] != 0x0002:
                break
            pos = found[1]
    ts = UID(transfer_syntax)
    try:
        if ts.is_deflated or not ts.is_transfer_syntax:
            return pos
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
    except ValueError:
        return pos
    while True:
        found = _element_end(fp, pos, implicit=implicit, little=little)
        if found is None or found[0] != 0x0002:
            return pos
        pos = found[1]


def _meta_element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr in _LONG_VRS:  # OB, UR: 2 reserved bytes and a 4-byte length
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta_bytes(*, sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str | None,
                    called_ae: str | None = None, calling_host: str | None = None) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for a received object
    (PS3.10 7.1; Explicit VR Little Endian, encoded here: it is on every C-STORE's path).

    Besides the object's identity it records how the object came: the caller's AE title
    (Source AE Title), this node's (Receiving AE Title) and the caller's address (Sending
    Presentation Address). The spool's recovery reads them back (:func:`orphan_facts`)."""
    body = (_meta_element(0x0001, b"OB", b"\x00\x01", b"\0")
            + _meta_element(0x0002, b"UI", sop_class.encode("ascii"), b"\0")
            + _meta_element(0x0003, b"UI", sop_instance.encode("ascii"), b"\0")
            + _meta_element(0x0010, b"UI", transfer_syntax.encode("ascii"), b"\0")
            + _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\0")
            + _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" "))
    if source_ae:
        body += _meta_element(0x0016, b"AE", source_ae.encode("ascii", "replace")[:16], b" ")
    if called_ae:
        body += _meta_element(0x0018, b"AE", called_ae.encode("ascii", "replace")[:16], b" ")
    if calling_host:
        host = f"[{calling_host}]" if ":" in calling_host else calling_host
        body += _meta_element(0x0027, b"UR", f"dicom://{host}".encode("ascii", "replace")[:200], b" ")
    return b"\x00" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body)), b"\0") + body


def orphan_facts(path: Path) -> dict:
    """The transport facts of a received file, read back from its File Meta Information
    (for the spool's recovery); the fields it cannot read are left out."""
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except Exception:
        return {}
    facts = {}
    for key, keyword in (("calling_ae", "SourceApplicationEntityTitle"),
                         ("called_ae", "ReceivingApplicationEntityTitle")):
        value = str(meta.get(keyword) or "").strip()
        if value:
            facts[key] = value
    address = str(meta.get("SendingPresentationAddress") or "").strip()
    if address.startswith("dicom://"):
        facts["calling_host"] = address[len("dicom://"):].strip("[]")
    return facts


def write_part10(src: Path, dst: Path, *, sop_class: str, sop_instance: str, transfer_syntax: str,
                 source_ae: str | None = None, called_ae: str | None = None, calling_host: str | None = None) -> int:
    """Write a Part-10 file at ``dst`` (which must not exist) from the data set received in
    ``src`` (a received file, with or without meta); the data set bytes are copied unparsed. Returns
    the size of ``dst``."""
    if not sop_class or not sop_instance:
        raise MalformedDataset("the C-STORE request names no SOP class or instance")
    meta = file_meta_bytes(sop_class=sop_class, sop_instance=sop_instance, transfer_syntax=transfer_syntax,
                           source_ae=source_ae, called_ae=called_ae, calling_host=calling_host)
    with open(src, "rb") as fin:
        offset = dataset_offset(fin, transfer_syntax)
        if os.fstat(fin.fileno()).st_size <= offset:
            raise MalformedDataset("the C-STORE request carries an empty data set")
        with open(dst, "xb") as fout:
            fout.write(meta)
            try:
                copied = append_range(fin, fout, offset)
            except EOFError:  # the file shrank under us
                raise OSError(errno.EIO, "short copy from the received data set") from None
    return len(meta) + copied


# --- the source ------------------------------------------------------------------------


@dataclass
class _Session:
    """What this node knows about one association (no patient data)."""

    id: str
    calling_ae: str
    called_ae: str
    host: str
    started: float
    stored: int = 0
    refused: int = 0
    channel: ul.Channel | None = None
    contexts: dict = field(default_factory=dict)  # accepted presentation context id -> transfer syntax
    needs_slot: bool = True  # False: C-ECHO only, in the pending pool instead of an association slot
    pending: Pending | None = None  # its entry in the pending pool (until it has a slot, or to its end)


class _Incoming:
    """One C-STORE data set being written into the spool (or discarded, with the status
    already decided)."""

    def __init__(self, status: int | None = None):
        self.status = status  # decided before the data arrived: refuse, discard the data
        self.facts = None
        self.partial: Path | None = None
        self.final: Path | None = None  # secured under its final name, to be recorded
        self.fp = None
        self.written = 0
        self.error: OSError | None = None
        self.first = b""  # the data set's first bytes (to spot stray group 0002 elements)

    def write(self, piece) -> None:
        if self.fp is None:
            return
        try:
            if len(self.first) < 8:
                self.first += bytes(piece[: 8 - len(self.first)])
            view = piece
            while len(view):
                n = self.fp.write(view)
                view = view[n:]
            self.written += len(piece)
        except OSError as exc:  # keep reading the data set, answer with a failure at its end
            self.error = exc
            self._close()

    def _close(self) -> None:
        fp, self.fp = self.fp, None
        if fp is not None:
            try:
                fp.close()
            except OSError as exc:
                self.error = self.error or exc

    def discard(self) -> None:
        self._close()
        if self.partial is not None:
            # the spool's recovery drops any leftover at the next start
            try:
                self.partial.unlink(missing_ok=True)
            except OSError:
                pass
            self.partial = None


_STORAGE_ABSTRACT: dict[str, bool] = {}


def acceptable_abstract_syntax(uid: str) -> bool:
    """Verification, and every storage SOP class: the registered ones and any unknown or
    private UID (a modality's private storage class); not the other known services."""
    known = _STORAGE_ABSTRACT.get(uid)
    if known is None:
        from pynetdicom.service_class import ServiceClass, StorageServiceClass
        from pynetdicom.sop_class import uid_to_service_class

        if uid == ul.VERIFICATION:
            known = True
        else:
            try:
                cls = uid_to_service_class(uid)
            except Exception:
                cls = ServiceClass
            known = cls is StorageServiceClass or cls is ServiceClass
        if len(_STORAGE_ABSTRACT) < 4096:
            _STORAGE_ABSTRACT[uid] = known
    return known


class DicomSource(Source):
    """Receive C-STORE / answer C-ECHO as this node's AE (the `node:` section)."""

    name = "dicom"
    Options = DicomSourceOptions

    @classmethod
    def orphan_facts(cls, path: Path) -> dict:
        """A received file is complete once it has its final name (it was fsync'd as a
        partial first) and may have been acknowledged: adopt it with the facts its File
        Meta Information recorded."""
        return orphan_facts(path)

    def __init__(self, name, options, intake):
        super().__init__(name, options, intake)
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._tls: tlsmod.ReloadingContext | None = None
        self._closing = False
        self._inflight = 0
        self._idle = threading.Condition()
        self._lock = threading.Lock()
        self._active: dict[str, tuple[_Session, threading.Thread]] = {}
        self._pool = PendingPool(options.pending_limit)  # connections without an association slot
        self._drops = DropLog(self.source_name)
        self._syntaxes = frozenset(transfer_syntaxes())
        self._spool_full = False  # log the start and the end of a spool-full spell, not every refusal
        self.port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        opts = self.options
        ul.preload()
        acceptable_abstract_syntax(ul.VERIFICATION)
        if opts.tls is not None:
            self._tls = tlsmod.ReloadingContext(opts.tls.build, opts.tls.files(), label=f"source {self.source_name}")
        infos = socket.getaddrinfo(opts.host, opts.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(max(16, opts.max_associations * 2))
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.25)
        self._closing = False
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                                          name=f"dicom-listen-{self.source_name}")
        self._acceptor.start()
        log.info("DICOM node listening", source=self.source_name, ae_title=opts.ae_title, host=opts.host,
                 port=self.port, tls=opts.tls is not None,
                 allowed_callers=[c.ae_title + (f"@{c.host}" if c.host else "") for c in opts.allowed_callers]
                 or "any")

    def stop(self, grace: float = 10.0) -> None:
        """Stop listening; let C-STOREs being written finish (up to ``grace`` seconds; new
        ones are refused with 0xA700), then abort the remaining associations."""
        self._closing = True
        listener, self._listener = self._listener, None
        if listener is None:
            return
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.join(timeout=2)
        listener.close()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=grace)
        with self._lock:
            open_assocs = list(self._active.values())
        for session, _ in open_assocs:
            if session.channel is not None:
                session.channel.abort(ul.ABORT_PROVIDER)
        dropped = self._pool.drop_all()  # connections still setting up
        for _, thread in open_assocs:
            thread.join(timeout=2)
        self._drops.flush(final=True)
        log.info("DICOM node stopped", source=self.source_name, aborted_associations=len(open_assocs),
                 dropped_connections=dropped)

    def reload_tls(self) -> bool:
        """Re-read the TLS certificate, key and CA files now (for SIGHUP). Returns False when
        TLS is off; raises :class:`~pacsguard.plugins.dicom.tls.TlsError` (keeping the old
        ones) when the new files cannot be used. Changed files are also picked up on their
        own at the next connection."""
        if self._tls is None:
            return False
        self._tls.reload()
        log.info("TLS certificates reloaded", source=self.source_name, trigger="reload")
        return True

    @property
    def address(self) -> tuple[str, int] | None:
        return (self.options.host, self.port) if self.port is not None else None

    @property
    def active_associations(self) -> int:
        with self._lock:
            return len(self._active)

    # -- connections ------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closing:
            self._drops.flush()
            try:
                conn, addr = listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._closing:
                    return
                log.warning("accepting a connection failed", source=self.source_name,
                            error=exc.strerror or type(exc).__name__)
                time.sleep(0.1)
                continue
            host = addr[0] if addr else ""
            if host.startswith("::ffff:"):
                host = host[7:]
            accepted = time.monotonic()
            try:
                entry, evicted = self._pool.admit(conn, host)
            except OSError as exc:  # out of file descriptors
                log.warning("accepting a connection failed", source=self.source_name,
                            error=exc.strerror or type(exc).__name__)
                conn.close()
                continue
            if evicted is not None:
                self._drops.note(evicted.host, "too many connections without an association slot: the oldest"
                                               " is dropped")
            try:
                threading.Thread(target=self._serve, args=(conn, host, entry, accepted), daemon=True,
                                 name=f"dicom-assoc-{self.source_name}").start()
            except RuntimeError:  # no more threads: refuse this one, keep listening
                log.warning("accepting a connection failed", source=self.source_name, error="cannot start a thread")
                self._pool.release(entry)
                conn.close()

    def _serve(self, conn: socket.socket, host: str, entry: Pending, accepted: float) -> None:
        structlog.contextvars.clear_contextvars()
        session = None
        try:
            session = self._open(conn, host, entry, accepted)
        except Exception as exc:  # a bug: never take the listener down
            log.error("association failed", source=self.source_name, error=bug_summary(exc))
        finally:
            if session is None or session.needs_slot:
                self._pool.release(entry)
        if session is None:
            return
        ended = "association aborted"
        try:
            ended = self._run(session)
        except Exception as exc:
            log.error("association failed", source=self.source_name, error=bug_summary(exc))
            session.channel.abort(ul.ABORT_PROVIDER)
        finally:
            with self._lock:
                self._active.pop(session.id, None)
            self._pool.release(entry)
            session.channel.close()
            self._ended(session, ended)

    def _open(self, conn: socket.socket, host: str, entry: Pending, accepted: float) -> _Session | None:
        """TLS handshake, A-ASSOCIATE-RQ, and the answer. The session when accepted.

        The handshake and the whole request must be done within ``acse_timeout`` of the
        connection (a per-read timeout would let a peer sending a byte a second hold the
        connection for ever)."""
        opts = self.options
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        deadline = accepted + opts.acse_timeout
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        if self._tls is not None:
            try:  # (Python bounds the whole handshake by the socket's timeout)
                conn = self._tls.get().wrap_socket(conn, server_side=True)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
                if entry.dropped:
                    pass
                elif isinstance(exc, TimeoutError):
                    self._drops.note(host, "TLS handshake not done within acse_timeout")
                else:
                    log.warning("TLS handshake failed: connection refused", source=self.source_name,
                                calling_host=host, reason=str(reason))
                try:  # closed, not only shut down: bytes a plain-TCP caller already sent stay unread
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
                return None
        ch = ul.Channel(conn)
        ch.settimeout(opts.acse_timeout)
        ch.set_budget(deadline - time.monotonic())
        try:
            kind, length = ch.read_header()
            if kind != ul.ASSOCIATE_RQ or length > ul.MAX_ASSOCIATE:
                raise ul.ProtocolError(f"{ul.PDU_NAMES.get(kind, 'an unknown PDU')} instead of an A-ASSOCIATE-RQ")
            body = ch.recv_exact(length)
            proposal = ul.decode_proposal(struct.pack(">BBI", kind, 0, length) + body)
        except ul.ProtocolError as exc:
            log.warning("association refused: not a DICOM association request", source=self.source_name,
                        calling_host=host, reason=str(exc))
            ch.abort(ul.ABORT_PROVIDER, ul.REASON_UNEXPECTED_PDU)
            return None
        except ul.ULError as exc:
            if isinstance(exc, ul.TimedOut) and not entry.dropped:
                self._drops.note(host, "association request not complete within acse_timeout")
            elif not entry.dropped:
                log.info("connection closed before an association request", source=self.source_name,
                         calling_host=host, reason=str(exc))
            ch.close()
            return None
        ch.set_budget(None)
        results, accepted_contexts, needs_slot = self._negotiate(proposal)
        if needs_slot:  # out of the pending pool: a complete request is no slow one
            self._pool.release(entry)
        if entry.dropped:  # the pool dropped it meanwhile (and logged it)
            ch.close()
            return None
        session = _Session(uuid.uuid4().hex[:8], proposal.calling, proposal.called, host, time.monotonic(),
                           channel=ch, needs_slot=needs_slot, pending=None if needs_slot else entry)
        structlog.contextvars.bind_contextvars(association=session.id, calling_ae=session.calling_ae,
                                               calling_host=host)
        with self._lock:
            refusal = self._refusal(proposal, host, needs_slot)
            if refusal is None:
                self._active[session.id] = (session, threading.current_thread())
        if refusal is not None:
            (result, source, reason), why = refusal
            log.warning("association rejected", source=self.source_name, reason=why, calling_ae=session.calling_ae,
                        called_ae=session.called_ae, calling_host=host)
            try:
                ch.send(ul.associate_rj(result, source, reason))
            except ul.ULError:
                pass
            ch.close()
            return None
        try:
            ch.send(ul.associate_ac(called=proposal.called_raw, calling=proposal.calling_raw, results=results,
                                    max_pdu=opts.max_pdu, impl_uid=IMPLEMENTATION_CLASS_UID,
                                    impl_name=IMPLEMENTATION_VERSION_NAME))
        except ul.ULError as exc:
            with self._lock:
                self._active.pop(session.id, None)
            log.warning("association aborted", source=self.source_name, reason=str(exc))
            ch.close()
            return None
        ch.peer_max_pdu = proposal.max_pdu
        session.contexts = accepted_contexts
        log.info("association accepted", source=self.source_name, contexts=len(accepted_contexts),
                 called_ae=session.called_ae, **({} if needs_slot else {"verification_only": True}))
        return session

    def _negotiate(self, proposal: ul.Proposal) -> tuple[list, dict[int, str], bool]:
        """(results for the A-ASSOCIATE-AC, accepted context id -> transfer syntax, whether
        the association needs a slot: False when it can do nothing but C-ECHO)."""
        results = []
        accepted: dict[int, str] = {}
        needs_slot = False
        for ctx_id, abstract, syntaxes in proposal.contexts:
            if not acceptable_abstract_syntax(abstract):
                results.append((ctx_id, ul.ABSTRACT_SYNTAX_NOT_SUPPORTED, syntaxes[0] if syntaxes else ""))
                continue
            ts = next((t for t in syntaxes if t in self._syntaxes), None)
            if ts is None:
                results.append((ctx_id, ul.TRANSFER_SYNTAXES_NOT_SUPPORTED, syntaxes[0] if syntaxes else ""))
            else:
                results.append((ctx_id, ul.ACCEPTANCE, ts))
                accepted[ctx_id] = ts
                needs_slot = needs_slot or abstract != ul.VERIFICATION
        return results, accepted, needs_slot

    def _refusal(self, proposal: ul.Proposal, host: str, needs_slot: bool = True):
        """Why this association must be refused (the caller holds ``self._lock``), or None."""
        opts = self.options
        calling, called = proposal.calling, proposal.called
        if proposal.protocol_version & 0x0001 == 0:
            return (REJECT_PERMANENT, SOURCE_ACSE, REASON_PROTOCOL_VERSION), "protocol version not supported"
        if self._closing or not self.intake.accepting:
            return (REJECT_TRANSIENT, SOURCE_PRESENTATION, REASON_CONGESTION), "service stopping"
        if called != opts.ae_title:
            return (REJECT_PERMANENT, SOURCE_USER, REASON_CALLED_AE), "called AE title is not this node's"
        if opts.allowed_callers:
            peer = _normal_ip(host or "")
            if not any(c.permits(calling, peer) for c in opts.allowed_callers):
                known = any(c.ae_title == calling for c in opts.allowed_callers)
                why = "calling AE title not allowed from this host" if known else "calling AE title not allowed"
                return (REJECT_PERMANENT, SOURCE_USER, REASON_CALLING_AE), why
        if needs_slot and sum(s.needs_slot for s, _ in self._active.values()) >= opts.max_associations:
            return (REJECT_TRANSIENT, SOURCE_PRESENTATION, REASON_LOCAL_LIMIT), "too many associations"
        return None

    def _run(self, session: _Session) -> str:
        """The association's messages until release or abort; returns how it ended."""
        opts = self.options
        ch = session.channel
        reader = ul.MessageReader(ch, session.contexts, max_pdu=opts.max_pdu)
        incoming: list[_Incoming] = []

        def on_command(ctx_id: int, cmd: dict) -> object:
            if ul.command_us(cmd, 0x0100) != ul.C_STORE_RQ:
                return None  # discarded: answered when complete
            store = self._begin(session, ctx_id, cmd)
            incoming.append(store)
            return store.write

        while True:
            try:
                what, ctx_id, cmd = reader.next_message(on_command, idle_timeout=opts.network_timeout,
                                                        message_timeout=opts.dimse_timeout,
                                                        min_rate=opts.min_transfer_rate)
            except ul.ULError as exc:
                for store in incoming:  # a data set cut off: nothing of it stays in the spool
                    self._abandon(store)
                incoming.clear()
                if session.pending is not None and session.pending.dropped:
                    ch.close()  # dropped from the pending pool (and logged) or stopping
                    return "association dropped"
                if isinstance(exc, ul.TimedOut) and reader.in_message:
                    self._drops.note(session.host, "DIMSE message too slow (dimse_timeout, min_transfer_rate):"
                                                   " association aborted")
                    ch.abort(ul.ABORT_PROVIDER)
                    return "association aborted: too slow"
                if isinstance(exc, ul.ProtocolError):
                    log.warning("protocol error: association aborted", source=self.source_name, reason=str(exc))
                    ch.abort(ul.ABORT_PROVIDER, ul.REASON_UNEXPECTED_PDU)
                elif isinstance(exc, ul.PeerAborted) or self._closing:
                    ch.close()  # (when closing, stop() has aborted it)
                else:
                    log.info("association lost", source=self.source_name, reason=str(exc))
                    ch.abort(ul.ABORT_PROVIDER)
                return "association aborted"
            if what == "release":
                try:
                    ch.send(ul.RELEASE_RP_PDU)
                except ul.ULError:
                    pass
                ch.close()
                return "association released"
            field_ = ul.command_us(cmd, 0x0100)
            msg_id = ul.command_us(cmd, 0x0110) or 0
            secured = None
            if field_ == ul.C_STORE_RQ:
                store = incoming.pop()
                status = self._finish(session, ctx_id, cmd, store)
                if store.final is not None:
                    secured = store
                answer = ul.c_store_rsp(msg_id, ul.command_uid(cmd, 0x0002), ul.command_uid(cmd, 0x1000), status)
            elif field_ == ul.C_ECHO_RQ:
                answer = ul.c_echo_rsp(msg_id, SUCCESS)
            elif field_ == ul.C_CANCEL_RQ:
                continue
            else:
                log.warning("DIMSE request not supported: answered 0x0211", source=self.source_name,
                            command=f"0x{field_ or 0:04X}")
                answer = ul.encode_command([(0x0002, cmd.get(0x0002, b"")), (0x0100, struct.pack("<H", (field_ or 0) | 0x8000)),
                                            (0x0120, struct.pack("<H", msg_id)), (0x0800, struct.pack("<H", ul.NO_DATASET)),
                                            (0x0900, struct.pack("<H", UNRECOGNIZED_OPERATION))])
            try:
                ch.settimeout(opts.dimse_timeout)
                ch.send_command(ctx_id, answer)
            except ul.ULError as exc:
                log.info("association ended without release", source=self.source_name, reason=str(exc))
                ch.close()
                return "association aborted"
            finally:
                if secured is not None:  # answered (or the caller is gone): stored all the same
                    self._record(secured, ul.command_uid(cmd, 0x1000))

    # -- C-STORE ------------------------------------------------------------------------
    def _begin(self, session: _Session, ctx_id: int, cmd: dict) -> _Incoming:
        """A C-STORE-RQ command has arrived: decide whether to store, open the spool file
        and write its File Meta Information; the data set follows."""
        with self._idle:
            self._inflight += 1
        if self._closing or not self.intake.accepting:
            log.warning("C-STORE refused: service stopping", source=self.source_name)
            return _Incoming(OUT_OF_RESOURCES)
        if not self.intake.has_room():
            return _Incoming(self._refuse_spool_full())
        sop_class, sop_instance = ul.command_uid(cmd, 0x0002), ul.command_uid(cmd, 0x1000)
        if not sop_class or not sop_instance:
            log.warning("C-STORE refused: malformed request", source=self.source_name,
                        reason="the C-STORE request names no SOP class or instance")
            return _Incoming(CANNOT_UNDERSTAND)
        store = _Incoming()
        store.facts = self.facts(calling_ae=session.calling_ae, called_ae=session.called_ae,
                                 calling_host=session.host)
        try:
            store.partial = Path(self.intake.new_partial(store.facts))
            store.fp = open(store.partial, "xb", buffering=0)
            store.fp.write(file_meta_bytes(sop_class=sop_class, sop_instance=sop_instance,
                                           transfer_syntax=session.contexts[ctx_id], source_ae=session.calling_ae,
                                           called_ae=session.called_ae, calling_host=session.host))
        except SpoolFull:
            store.discard()
            return _Incoming(self._refuse_spool_full())
        except OSError as exc:
            store.error = exc
            store.discard()
        return store

    def _finish(self, session: _Session, ctx_id: int, cmd: dict, store: _Incoming) -> int:
        """The data set is complete: make it durable, then answer. A stored object is
        recorded after the answer (:meth:`_record`): the caller sends its next object
        meanwhile."""
        status = None
        try:
            status = self._commit(session, ctx_id, cmd, store)
        finally:
            store.discard()  # after a commit there is nothing left to discard
            if store.final is None:
                self._done()
        if status == SUCCESS:
            session.stored += 1
        else:
            session.refused += 1
        return status

    def _record(self, store: _Incoming, sop_instance: str) -> None:
        """Hand a secured (and answered) object to the service."""
        try:
            job_id = self.intake.record(store.final, store.facts)
            log.debug("C-STORE recorded", source=self.source_name, job=job_id, sop=uid_hash(sop_instance))
        finally:
            store.final = None
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def _abandon(self, store: _Incoming) -> None:
        store.discard()
        self._done()

    def _commit(self, session: _Session, ctx_id: int, cmd: dict, store: _Incoming) -> int:
        if store.status is not None:
            return store.status
        store._close()
        if store.error is not None:
            log.error("C-STORE failed: cannot write to the spool", source=self.source_name,
                      error=store.error.strerror or type(store.error).__name__)
            return OUT_OF_RESOURCES
        sop_instance = ul.command_uid(cmd, 0x1000)
        try:
            if store.written == 0:
                raise MalformedDataset("the C-STORE request carries an empty data set")
            if _stray_meta(store.first, session.contexts[ctx_id]):
                # a non-conformant caller put group 0002 into the data set: leave it out
                fixed = Path(self.intake.new_partial(store.facts))
                try:
                    write_part10(store.partial, fixed, sop_class=ul.command_uid(cmd, 0x0002),
                                 sop_instance=sop_instance, transfer_syntax=session.contexts[ctx_id],
                                 source_ae=session.calling_ae, called_ae=session.called_ae,
                                 calling_host=session.host)
                except BaseException:
                    fixed.unlink(missing_ok=True)
                    raise
                store.partial.unlink(missing_ok=True)
                store.partial = fixed
            store.final = Path(self.intake.secure(store.partial, store.facts))
            store.partial = None
        except SpoolFull:
            return self._refuse_spool_full()
        except MalformedDataset as exc:
            log.warning("C-STORE refused: malformed request", source=self.source_name, reason=str(exc))
            return CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("C-STORE failed: cannot write to the spool", source=self.source_name,
                      error=exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        except Exception as exc:  # a bug: never acknowledge, the caller keeps the object
            log.error("C-STORE failed", source=self.source_name, error=bug_summary(exc))
            return CANNOT_UNDERSTAND
        if self._spool_full:
            self._spool_full = False
            log.info("spool has room again: storing resumed", source=self.source_name)
        return SUCCESS

    def _ended(self, session: _Session, what: str) -> None:
        fields = dict(source=self.source_name, association=session.id, calling_ae=session.calling_ae,
                      calling_host=session.host, stored=session.stored, refused=session.refused,
                      seconds=round(time.monotonic() - session.started, 3))
        if what == "association aborted":
            log.warning(what, **fields)
        else:
            log.info(what, **fields)

    def _refuse_spool_full(self) -> int:
        if not self._spool_full:
            self._spool_full = True
            log.warning("C-STORE refused: spool over its size limit (0xA700 until deliveries free space)",
                        source=self.source_name)
        return OUT_OF_RESOURCES


def _stray_meta(first: bytes, transfer_syntax: str) -> bool:
    """Does a data set starting with ``first`` begin with a group 0002 element?"""
    if len(first) < 2:
        return False
    from pydicom.uid import UID

    ts = UID(transfer_syntax)
    try:
        if ts.is_deflated or not ts.is_transfer_syntax:
            return False
        little = ts.is_little_endian
    except ValueError:
        return False
    return struct.unpack("<H" if little else ">H", first[:2])[0] == 0x0002
