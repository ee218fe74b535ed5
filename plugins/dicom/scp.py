"""The DICOM network source: this node's AE answers C-ECHO and stores C-STORE requests.

Every storage SOP class is accepted (private and unknown ones too) in the transfer syntax
the caller proposes first: the dataset is never decoded or re-encoded here. pynetdicom
streams each incoming data set into a temporary file; the C-STORE handler turns it into a
DICOM Part-10 file in the spool (fresh File Meta Information + the data set bytes, copied
with ``sendfile``), has the spool fsync and record it, and only then answers Success. When
the spool is over its limit, the service is stopping, or the write fails, the answer is a
failure status (0xA700) and nothing of the object stays in the spool.

Access: the called AE title must be this node's; the calling AE title must be on the
allow-list (optionally from a given host or network); otherwise the association is
rejected (A-ASSOCIATE-RJ) and the refusal logged with AE titles and address only.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import ssl
import struct
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog
from pydantic import Field, field_validator, model_validator

from pacsguard.daemon.extension import Options, Source
from pacsguard.daemon.item import uid_hash
from pacsguard.daemon.pipeline import bug_summary
from pacsguard.daemon.spool import SpoolFull
from pacsguard.daemon.units import AbsPath, Duration, Size

from . import tls as tlsmod
from .aetitle import AETitle
from ._pynetdicom import configure

log = structlog.get_logger("pacsguard.dicom")

#: This implementation's identity in File Meta Information and association negotiation
#: (a UUID-derived UID, PS3.5 B.2: no registered root needed).
IMPLEMENTATION_CLASS_UID = "2.25.273958504213808437402758985714438986756"


def _version_name() -> str:
    try:
        from importlib.metadata import version

        return f"PACSGUARD_{version('pacsguard')}"[:16]
    except Exception:
        return "PACSGUARD"


IMPLEMENTATION_VERSION_NAME = _version_name()

# C-STORE / association answers (PS3.4 B.2.3, PS3.8 9.3.4)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_USER, SOURCE_PRESENTATION = 0x01, 0x03
REASON_CALLING_AE, REASON_CALLED_AE = 0x03, 0x07
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
    max_associations: int = Field(10, ge=1, le=1000, description="simultaneous associations; more are rejected"
                                                                 " (transient: callers retry)")
    acse_timeout: Duration = Field(30.0, gt=0, description="wait this long for association messages")
    dimse_timeout: Duration = Field(60.0, gt=0, description="wait this long for DIMSE messages")
    network_timeout: Duration = Field(60.0, gt=0, description="close an association idle for this long")
    max_pdu: Size = Field(
        0, description="largest PDU this node accepts, announced to callers (0: unlimited, the fastest;"
                       " otherwise at least 4096 bytes)")
    tls: TlsOptions | None = Field(None, description="accept DICOM over TLS only (TLS 1.2 or newer); absent: plain TCP")

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
    """Where the data set starts in pynetdicom's received file.

    The file may begin with a preamble, ``DICM`` and File Meta Information (pynetdicom 2.1+)
    or with the data set itself. Group 0002 elements that a non-conformant caller put into
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


def file_meta_bytes(*, sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str | None) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for a received object."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buf.getvalue()


def _copy_range(src: BinaryIO, dst: BinaryIO, offset: int) -> int:
    """Append ``src[offset:]`` to ``dst`` (in the kernel where it can); returns the bytes copied."""
    dst.flush()
    size = os.fstat(src.fileno()).st_size
    pos = offset
    try:
        while pos < size:
            sent = os.sendfile(dst.fileno(), src.fileno(), pos, min(size - pos, 1 << 30))
            if sent == 0:
                break
            pos += sent
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or pos != offset:
            raise
        src.seek(offset)
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        pos = src.tell()
    if pos != size:
        raise OSError(errno.EIO, "short copy from the received data set")
    return pos - offset


def write_part10(src: Path, dst: Path, *, sop_class: str, sop_instance: str, transfer_syntax: str,
                 source_ae: str | None = None) -> int:
    """Write a Part-10 file at ``dst`` (which must not exist) from the data set received in
    ``src`` (pynetdicom's chunked file); the data set bytes are copied unparsed. Returns
    the size of ``dst``."""
    if not sop_class or not sop_instance:
        raise MalformedDataset("the C-STORE request names no SOP class or instance")
    meta = file_meta_bytes(sop_class=sop_class, sop_instance=sop_instance, transfer_syntax=transfer_syntax,
                           source_ae=source_ae)
    with open(src, "rb") as fin:
        offset = dataset_offset(fin, transfer_syntax)
        if os.fstat(fin.fileno()).st_size <= offset:
            raise MalformedDataset("the C-STORE request carries an empty data set")
        with open(dst, "xb") as fout:
            fout.write(meta)
            copied = _copy_range(fin, fout, offset)
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


class _DeferredHandshake:
    """What pynetdicom's server wraps each accepted socket with: the current (reloading)
    server context, with the TLS handshake left to the connection's own thread (see
    ``DicomSource._on_connect``), so a slow or silent client never stalls the accept loop."""

    def __init__(self, context: tlsmod.ReloadingContext):
        self.context = context

    def wrap_socket(self, sock, server_side=True, **_):
        return self.context.get().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


class DicomSource(Source):
    """Receive C-STORE / answer C-ECHO as this node's AE (the `node:` section)."""

    name = "dicom"
    Options = DicomSourceOptions

    def __init__(self, name, options, intake):
        super().__init__(name, options, intake)
        self._server = None
        self._tls: tlsmod.ReloadingContext | None = None
        self._closing = False
        self._inflight = 0
        self._idle = threading.Condition()
        self._lock = threading.Lock()
        self._sessions: "weakref.WeakKeyDictionary[object, _Session]" = weakref.WeakKeyDictionary()
        self._spool_full = False  # log the start and the end of a spool-full spell, not every refusal
        self.port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        configure()
        opts = self.options
        ae = AE(ae_title=opts.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_associations = opts.max_associations
        ae.maximum_pdu_size = opts.max_pdu
        ae.acse_timeout = opts.acse_timeout
        ae.dimse_timeout = opts.dimse_timeout
        ae.network_timeout = opts.network_timeout
        # _on_requested decides first (with hosts and a log line); pynetdicom's own checks stay as a backstop
        ae.require_called_aet = True
        ae.require_calling_aet = sorted({c.ae_title for c in opts.allowed_callers})
        ae.add_supported_context(Verification)
        syntaxes = transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ssl_context = None
        if opts.tls is not None:
            self._tls = tlsmod.ReloadingContext(opts.tls.build, opts.tls.files(), label=f"source {self.source_name}")
            ssl_context = _DeferredHandshake(self._tls)
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connect),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._closing = False
        self._server = ae.start_server((opts.host, opts.port), block=False, evt_handlers=handlers,
                                       ssl_context=ssl_context)
        self.port = self._server.server_address[1]
        log.info("DICOM node listening", source=self.source_name, ae_title=opts.ae_title, host=opts.host,
                 port=self.port, tls=opts.tls is not None,
                 allowed_callers=[c.ae_title + (f"@{c.host}" if c.host else "") for c in opts.allowed_callers]
                 or "any")

    def stop(self, grace: float = 10.0) -> None:
        """Stop listening; let C-STOREs being written finish (up to ``grace`` seconds; new
        ones are refused with 0xA700), then abort the remaining associations."""
        self._closing = True
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=grace)
        open_assocs = list(server.active_associations)
        for assoc in open_assocs:
            assoc.abort()
        for assoc in open_assocs:
            assoc.join(timeout=2)
        log.info("DICOM node stopped", source=self.source_name, aborted_associations=len(open_assocs))

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

    # -- association events -------------------------------------------------------------------
    def _on_connect(self, event) -> None:
        """EVT_CONN_OPEN, in the new connection's thread: TCP_NODELAY, then the TLS handshake."""
        sock = event.assoc.dul.socket.socket
        peer = event.address[0] if event.address else None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.settimeout(self.options.acse_timeout)
                sock.do_handshake()
                sock.settimeout(None)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
                log.warning("TLS handshake failed: connection refused", source=self.source_name,
                            calling_host=peer, reason=str(reason))
                try:  # closed, not only shut down: bytes a plain-TCP caller already sent stay unread
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
                # no A-ASSOCIATE-RQ can come now: let the association give up at once
                # instead of holding one of max_associations for the whole ACSE timeout
                event.assoc.acse_timeout = 0.001

    def _session(self, assoc) -> _Session | None:
        with self._lock:
            return self._sessions.get(assoc)

    def _on_requested(self, event) -> None:
        """EVT_REQUESTED, in the association's thread: decide before pynetdicom negotiates."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        host = assoc.requestor.address
        session = _Session(uuid.uuid4().hex[:8], calling, called, host, time.monotonic())
        with self._lock:
            self._sessions[assoc] = session
        structlog.contextvars.bind_contextvars(association=session.id, calling_ae=calling, calling_host=host)
        refusal = self._refusal(assoc, calling, called, host)
        if refusal is None:
            return
        (result, source, reason), why = refusal
        log.warning("association rejected", source=self.source_name, reason=why, calling_ae=calling,
                    called_ae=called, calling_host=host)
        assoc.acse.send_reject(result, source, reason)
        assoc.kill()
        with self._lock:
            self._sessions.pop(assoc, None)

    def _refusal(self, assoc, calling: str, called: str, host: str):
        opts = self.options
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
        server = self._server
        if server is not None:
            active = [a for a in server.active_associations if a.is_acceptor]
            if len(active) > opts.max_associations:
                return (REJECT_TRANSIENT, SOURCE_PRESENTATION, REASON_LOCAL_LIMIT), "too many associations"
        return None

    def _on_accepted(self, event) -> None:
        session = self._session(event.assoc)
        log.info("association accepted", source=self.source_name,
                 contexts=len(event.assoc.accepted_contexts), called_ae=session.called_ae if session else None)

    def _on_rejected(self, event) -> None:
        # pynetdicom's own backstop checks (ours in _on_requested normally decide first)
        log.warning("association rejected", source=self.source_name, reason="refused during negotiation")

    def _on_released(self, event) -> None:
        self._ended(event.assoc, "association released")

    def _on_aborted(self, event) -> None:
        self._ended(event.assoc, "association aborted")

    def _ended(self, assoc, what: str) -> None:
        with self._lock:
            session = self._sessions.pop(assoc, None)
        if session is None:
            return
        fields = dict(source=self.source_name, association=session.id, calling_ae=session.calling_ae,
                      calling_host=session.host, stored=session.stored, refused=session.refused,
                      seconds=round(time.monotonic() - session.started, 3))
        if what == "association aborted":
            log.warning(what, **fields)
        else:
            log.info(what, **fields)

    # -- C-STORE ------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        with self._idle:
            self._inflight += 1
        try:
            status = self._store(event)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
        session = self._session(event.assoc)
        if session is not None:
            if status == SUCCESS:
                session.stored += 1
            else:
                session.refused += 1
        return status

    def _store(self, event) -> int:
        session = self._session(event.assoc)
        req = event.request
        if session is None:  # cannot happen: every accepted association passed _on_requested
            log.error("C-STORE on an unknown association: refused", source=self.source_name)
            return CANNOT_UNDERSTAND
        if self._closing or not self.intake.accepting:
            log.warning("C-STORE refused: service stopping", source=self.source_name)
            return OUT_OF_RESOURCES
        if not self.intake.has_room():
            return self._refuse_spool_full()
        facts = self.facts(calling_ae=session.calling_ae, called_ae=session.called_ae, calling_host=session.host)
        partial: Path | None = None
        committed = False
        try:
            partial = Path(self.intake.new_partial(facts))
            write_part10(event.dataset_path, partial, sop_class=str(req.AffectedSOPClassUID or ""),
                         sop_instance=str(req.AffectedSOPInstanceUID or ""),
                         transfer_syntax=str(event.context.transfer_syntax), source_ae=session.calling_ae)
            job_id = self.intake.commit_partial(partial, facts)
            committed = True
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
        finally:
            if not committed and partial is not None:
                # the spool's recovery drops any renamed-but-unrecorded leftover at the next start
                try:
                    partial.unlink(missing_ok=True)
                except OSError:
                    pass
        if self._spool_full:
            self._spool_full = False
            log.info("spool has room again: storing resumed", source=self.source_name)
        log.debug("C-STORE acknowledged", source=self.source_name, job=job_id,
                  sop=uid_hash(str(req.AffectedSOPInstanceUID or "")))
        return SUCCESS

    def _refuse_spool_full(self) -> int:
        if not self._spool_full:
            self._spool_full = True
            log.warning("C-STORE refused: spool over its size limit (0xA700 until deliveries free space)",
                        source=self.source_name)
        return OUT_OF_RESOURCES
