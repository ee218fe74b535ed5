"""The DICOM upper layer (PS3.8) and the two DIMSE services pacsguard speaks (C-ECHO and
C-STORE, PS3.7), over one blocking socket per association.

Why not pynetdicom's association machinery for the data: measured on the benchmark's
2-core machine, pynetdicom's DUL and association threads hand every PDU to each other
through queues polled every millisecond, which caps one association at 96-145 img/s
receiving and 42-122 img/s sending (../shared/REFERENCE.md), against 450+ for dcmtk.
Here a C-STORE data set streams from the socket straight into the spool file (and from
the spool file straight onto the socket) in the association's own thread: 4-5x faster.
pynetdicom still decodes the association requests and answers (its PDU classes); what is
written here is the framing: PDU headers, P-DATA fragments and the command set, whose
encodings are fixed by the standard.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Optional

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

# PDU types (PS3.8 9.3)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
             5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# A-ABORT source / reason (PS3.8 9.3.8)
ABORT_USER, ABORT_PROVIDER = 0x00, 0x02
REASON_NONE, REASON_UNRECOGNIZED_PDU, REASON_UNEXPECTED_PDU = 0x00, 0x01, 0x02
REASON_INVALID_PARAMETER = 0x06

# presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE, USER_REJECTION, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 1, 3, 4

# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP, C_CANCEL_RQ = 0x0001, 0x8001, 0x0030, 0x8030, 0x0FFF
NO_DATASET = 0x0101

#: largest command set accepted (a C-STORE-RQ is ~200 bytes; anything huge is an attack or a bug)
MAX_COMMAND = 64 * 1024
#: largest A-ASSOCIATE-RQ/AC accepted (128 presentation contexts with 20 syntaxes each fit)
MAX_ASSOCIATE = 1 << 20


class ULError(Exception):
    """The association cannot go on: protocol violation, abort, timeout or closed socket."""


class PeerAborted(ULError):
    pass


class TimedOut(ULError):
    """The peer was too slow: a read, or a whole message or association request, ran past
    its bound (a slow-loris peer ends here)."""


class ProtocolError(ULError):
    """The peer broke the protocol: answer with A-ABORT."""


# --- encoding helpers ------------------------------------------------------------------------


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def ae_bytes(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def _user_information(max_pdu: int, impl_uid: str, impl_name: str) -> bytes:
    sub = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, _uid(impl_uid))
    if impl_name:
        sub += _item(0x55, impl_name.encode("ascii", "replace")[:16])
    return _item(0x50, sub)


def associate_rq(*, called: str, calling: str, contexts: list[tuple[int, str, list[str]]], max_pdu: int,
                 impl_uid: str, impl_name: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing ``contexts`` [(id, abstract syntax, [syntaxes])]."""
    items = _item(0x10, _uid(APPLICATION_CONTEXT))
    for ctx_id, abstract, syntaxes in contexts:
        sub = _item(0x30, _uid(abstract)) + b"".join(_item(0x40, _uid(ts)) for ts in syntaxes)
        items += _item(0x20, struct.pack(">BBBB", ctx_id, 0, 0, 0) + sub)
    items += _user_information(max_pdu, impl_uid, impl_name)
    return pdu(ASSOCIATE_RQ, struct.pack(">HH", 1, 0) + ae_bytes(called) + ae_bytes(calling) + b"\0" * 32 + items)


def associate_ac(*, called: bytes, calling: bytes, results: list[tuple[int, int, str]], max_pdu: int,
                 impl_uid: str, impl_name: str) -> bytes:
    """An A-ASSOCIATE-AC PDU with ``results`` [(context id, result, transfer syntax)];
    ``called`` and ``calling`` are the 16 bytes of the request, returned as they came."""
    items = _item(0x10, _uid(APPLICATION_CONTEXT))
    for ctx_id, result, ts in results:
        items += _item(0x21, struct.pack(">BBBB", ctx_id, 0, result, 0) + _item(0x40, _uid(ts)))
    items += _user_information(max_pdu, impl_uid, impl_name)
    return pdu(ASSOCIATE_AC, struct.pack(">HH", 1, 0) + called + calling + b"\0" * 32 + items)


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return pdu(ASSOCIATE_RJ, struct.pack(">BBBB", 0, result, source, reason))


def abort_pdu(source: int = ABORT_USER, reason: int = REASON_NONE) -> bytes:
    return pdu(ABORT, struct.pack(">BBBB", 0, 0, source, reason))


RELEASE_RQ_PDU = pdu(RELEASE_RQ, b"\0\0\0\0")
RELEASE_RP_PDU = pdu(RELEASE_RP, b"\0\0\0\0")


# --- command sets (group 0000, always Implicit VR Little Endian) ------------------------------


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set from (element number, value) pairs in ascending order."""
    body = b"".join(_element(e, v) for e, v in elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def decode_command(data: bytes) -> dict[int, bytes]:
    """{element number: value} of a command set; ProtocolError if it is not one."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise ProtocolError("truncated command set")
        group, element, length = struct.unpack_from("<HHI", data, pos)
        if group != 0x0000 or pos + 8 + length > end:
            raise ProtocolError("malformed command set")
        out[element] = bytes(data[pos + 8: pos + 8 + length])
        pos += 8 + length
    return out


def command_us(cmd: dict[int, bytes], element: int) -> Optional[int]:
    v = cmd.get(element)
    return struct.unpack("<H", v[:2])[0] if v is not None and len(v) >= 2 else None


def command_uid(cmd: dict[int, bytes], element: int) -> str:
    v = cmd.get(element)
    return v.rstrip(b"\0 ").decode("ascii", "replace") if v else ""


def c_store_rq(msg_id: int, sop_class: str, sop_instance: str, priority: int = 0) -> bytes:
    return encode_command([(0x0002, _uid(sop_class)), (0x0100, _us(C_STORE_RQ)), (0x0110, _us(msg_id)),
                           (0x0700, _us(priority)), (0x0800, _us(0x0000)), (0x1000, _uid(sop_instance))])


def c_store_rsp(msg_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    return encode_command([(0x0002, _uid(sop_class)), (0x0100, _us(C_STORE_RSP)), (0x0120, _us(msg_id)),
                           (0x0800, _us(NO_DATASET)), (0x0900, _us(status)), (0x1000, _uid(sop_instance))])


def c_echo_rq(msg_id: int) -> bytes:
    return encode_command([(0x0002, _uid(VERIFICATION)), (0x0100, _us(C_ECHO_RQ)), (0x0110, _us(msg_id)),
                           (0x0800, _us(NO_DATASET))])


def c_echo_rsp(msg_id: int, status: int = 0) -> bytes:
    return encode_command([(0x0002, _uid(VERIFICATION)), (0x0100, _us(C_ECHO_RSP)), (0x0120, _us(msg_id)),
                           (0x0800, _us(NO_DATASET)), (0x0900, _us(status))])


# --- association negotiation (decoding by pynetdicom) -----------------------------------------


@dataclass
class Proposal:
    """A decoded A-ASSOCIATE-RQ: what the requestor asks for."""

    called: str
    calling: str
    called_raw: bytes
    calling_raw: bytes
    contexts: list[tuple[int, str, list[str]]]  # (id, abstract syntax, [transfer syntaxes])
    max_pdu: int  # the largest PDU the requestor accepts (0: unlimited)
    protocol_version: int = 1


@dataclass
class Acceptance:
    """A decoded A-ASSOCIATE-AC: what the acceptor accepted."""

    contexts: dict[int, str] = field(default_factory=dict)  # accepted context id -> transfer syntax
    max_pdu: int = 0


@dataclass
class Rejection:
    result: int
    source: int
    reason: int

    def describe(self) -> str:
        from pynetdicom.pdu_primitives import A_ASSOCIATE

        prim = A_ASSOCIATE()
        prim._result, prim._result_source, prim._diagnostic = self.result, self.source, self.reason
        try:
            return f"{prim.result_str.lower()}, {prim.source_str.lower()}: {prim.reason_str.lower()}"
        except Exception:
            return f"result {self.result}, source {self.source}, reason {self.reason}"


def _max_length(user_information) -> int:
    for sub in getattr(user_information, "user_data", None) or []:
        if getattr(sub, "item_type", None) == 0x51:
            return int(sub.maximum_length_received or 0)
    return 0


def preload() -> None:
    """Import what the first association would otherwise import (pynetdicom's PDU codec and
    SOP class tables: ~0.2 s), at start-up rather than while a modality waits."""
    import importlib

    for name in ("pynetdicom.pdu", "pynetdicom.pdu_primitives", "pynetdicom.sop_class", "pynetdicom.status"):
        importlib.import_module(name)


def decode_proposal(raw: bytes) -> Proposal:
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    rq = A_ASSOCIATE_RQ()
    try:
        rq.decode(raw)
        contexts = [(int(c.context_id), str(c.abstract_syntax or ""), [str(t) for t in c.transfer_syntax])
                    for c in rq.presentation_context]
    except Exception as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ ({type(exc).__name__})") from None
    return Proposal(called=raw[10:26].decode("ascii", "replace").strip(),
                    calling=raw[26:42].decode("ascii", "replace").strip(),
                    called_raw=bytes(raw[10:26]), calling_raw=bytes(raw[26:42]), contexts=contexts,
                    max_pdu=_max_length(rq.user_information), protocol_version=int(rq.protocol_version))


def decode_acceptance(raw: bytes) -> Acceptance:
    from pynetdicom.pdu import A_ASSOCIATE_AC

    ac = A_ASSOCIATE_AC()
    try:
        ac.decode(raw)
        contexts = {int(c.context_id): str(c.transfer_syntax) for c in ac.presentation_context
                    if c.result == ACCEPTANCE and c.transfer_syntax}
    except Exception as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-AC ({type(exc).__name__})") from None
    return Acceptance(contexts=contexts, max_pdu=_max_length(ac.user_information))


# --- the connection ----------------------------------------------------------------------------


class Channel:
    """One association's socket: PDUs in and out, P-DATA fragments streamed.

    Reads have two bounds. The socket timeout (:meth:`settimeout`) bounds each read (and
    each send, as a whole). A budget (:meth:`set_budget`) bounds the time spent waiting on
    the peer over many reads: with a per-read timeout alone, a peer that sends one byte
    just before each timeout would hold the connection forever (slow-loris). Only the time
    spent waiting in ``recv`` is charged to the budget, not the time this node spends
    itself (writing a data set into the spool): a slow disk here must not cut off a peer.
    """

    CHUNK = 1 << 20

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.peer_max_pdu = 0  # the largest PDU the peer accepts (0: unlimited)
        self._buf = bytearray(self.CHUNK + 12)
        self._view = memoryview(self._buf)
        self.closed = False
        self._timeout = sock.gettimeout()  # per read and per send
        self._sock_timeout = self._timeout  # what the socket has now
        self._budget: Optional[float] = None  # seconds the reads may still wait on the peer
        self._rate = 0

    # -- low level ------------------------------------------------------------------------
    def settimeout(self, seconds: Optional[float]) -> None:
        """Bound each read and each send to ``seconds`` (None: no bound)."""
        self._timeout = seconds
        self._set_sock_timeout(seconds)

    def set_budget(self, seconds: Optional[float], *, min_rate: int = 0) -> None:
        """From now on the reads may wait on the peer ``seconds`` in all, plus one second for
        each ``min_rate`` bytes received (None: only the per-read timeout bounds them);
        :class:`TimedOut` once that is spent."""
        self._budget = seconds
        self._rate = min_rate

    def _set_sock_timeout(self, seconds: Optional[float]) -> None:
        if seconds != self._sock_timeout:
            self.sock.settimeout(seconds)
            self._sock_timeout = seconds

    def recv_exact(self, n: int) -> bytes:
        if n <= 0:
            return b""
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        while got < n:
            k = self._recv_into(view[got:], n - got)
            got += k
        return bytes(out)

    def _recv_into(self, view, n: int) -> int:
        budget = self._budget
        if budget is not None:
            if budget <= 0:
                raise TimedOut("timed out: the peer is too slow")
            # (no system call while the budget is larger than the per-read timeout)
            self._set_sock_timeout(budget if self._timeout is None else min(budget, self._timeout))
            started = time.monotonic()
        try:
            k = self.sock.recv_into(view, n)
        except socket.timeout:
            raise TimedOut("timed out waiting for the peer") from None
        except ssl.SSLError as exc:
            raise ULError(f"TLS error ({exc.reason or type(exc).__name__})") from None
        except OSError as exc:
            raise ULError(f"connection lost ({exc.strerror or type(exc).__name__})") from None
        if not k:
            raise ULError("connection closed by the peer")
        if budget is not None:
            self._budget = budget - (time.monotonic() - started) + (k / self._rate if self._rate else 0.0)
        return k

    def read_header(self, first: bytes = b"") -> tuple[int, int]:
        """(PDU type, length) of the next PDU, whose ``first`` bytes may be read already."""
        head = first + self.recv_exact(6 - len(first))
        return head[0], struct.unpack_from(">I", head, 2)[0]

    def skip(self, n: int) -> None:
        while n > 0:
            n -= self._recv_into(self._view, min(n, self.CHUNK))

    def stream(self, n: int, write: Optional[Callable]) -> None:
        """Read ``n`` bytes, handing each received piece to ``write`` (None: discard)."""
        view = self._view
        while n > 0:
            k = self._recv_into(view, min(n, self.CHUNK))
            if write is not None:
                write(view[:k])
            n -= k

    def send(self, data) -> None:
        self._set_sock_timeout(self._timeout)  # a read may have left a tighter one
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ULError("timed out sending to the peer") from None
        except OSError as exc:
            raise ULError(f"connection lost ({exc.strerror or type(exc).__name__})") from None

    # -- P-DATA ---------------------------------------------------------------------------
    def _fragment_size(self) -> int:
        limit = self.peer_max_pdu or 0
        if not limit:
            return self.CHUNK
        return max(min(limit - 6, self.CHUNK), 16)

    def send_command(self, ctx_id: int, command: bytes) -> None:
        size = self._fragment_size()
        pos = 0
        while True:
            part = command[pos: pos + size]
            pos += len(part)
            last = pos >= len(command)
            self.send(struct.pack(">BBIIBB", P_DATA, 0, len(part) + 6, len(part) + 2, ctx_id, 0x03 if last else 0x01)
                      + part)
            if last:
                return

    def send_dataset(self, ctx_id: int, fp: BinaryIO, length: int) -> None:
        """Send ``length`` bytes read from ``fp`` as the data set, one PDV per PDU."""
        size = self._fragment_size()
        if length <= 0:
            raise ValueError("empty data set")
        buf, view = self._buf, self._view
        remaining = length
        while remaining > 0:
            want = min(size, remaining)
            got = 0
            while got < want:
                k = fp.readinto(view[12 + got: 12 + want])
                if not k:
                    raise OSError(5, "the file is shorter than its data set")
                got += k
            remaining -= want
            struct.pack_into(">BBIIBB", buf, 0, P_DATA, 0, want + 6, want + 2, ctx_id, 0x02 if remaining == 0 else 0x00)
            self.send(view[: 12 + want])

    def send_dataset_bytes(self, ctx_id: int, data: bytes) -> None:
        import io

        self.send_dataset(ctx_id, io.BytesIO(data), len(data))

    def abort(self, source: int = ABORT_USER, reason: int = REASON_NONE) -> None:
        if self.closed:
            return
        try:
            self._set_sock_timeout(1.0)
            self.sock.sendall(abort_pdu(source, reason))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class MessageReader:
    """Reads P-DATA PDUs and assembles DIMSE messages.

    ``next_message(on_command)`` returns when a whole message has arrived: the command set
    is decoded as soon as it is complete and ``on_command(ctx_id, command)`` returns where
    the data set goes (a callable taking each received piece, or None to discard it).
    Returns ("message", ctx_id, command) or ("release", None, None); raises ULError.
    A PDU may carry the end of one message and the start of the next: what is left of it
    is read by the next call.

    Time bounds: the first byte of a message may take ``idle_timeout`` (an idle
    association). From then on, no read may wait longer than ``message_timeout``, and the
    whole message must come within ``message_timeout`` of waiting plus one second for each
    ``min_rate`` bytes it brings (:meth:`Channel.set_budget`). Why a rate and not a
    deadline for the whole message: a large C-STORE on a slow but honest link (a 2 GB
    multi-frame at 10 MB/s takes minutes) must not be cut off, while a peer that dribbles
    a byte a second (slow-loris) must be, whatever the PDU length it announced: its bytes
    earn it almost nothing, and it is cut off once ``message_timeout`` is spent. A
    per-PDU deadline would not do: a message may be sent as many tiny PDUs, each in time.
    """

    def __init__(self, channel: Channel, contexts: dict[int, str], *, max_pdu: int = 0):
        self.ch = channel
        self.contexts = contexts
        self.max_pdu = max_pdu
        self._remaining = 0  # bytes of the current P-DATA-TF PDU not read yet
        self.in_message = False  # a message has begun (not idle): what a timeout cut off

    def next_message(self, on_command: Callable, *, idle_timeout: Optional[float] = None,
                     message_timeout: Optional[float] = None, min_rate: int = 0):
        ch = self.ch
        first = b""
        self.in_message = self._remaining > 0
        if not self.in_message:  # between messages: the association is idle
            ch.settimeout(idle_timeout)
            ch.set_budget(None)
            first = ch.recv_exact(1)
            self.in_message = True
        ch.settimeout(message_timeout)
        ch.set_budget(message_timeout, min_rate=min_rate)
        try:
            out = self._read(on_command, first)
        finally:
            ch.set_budget(None)
        self.in_message = False
        return out

    def _read(self, on_command: Callable, first: bytes):
        ch = self.ch
        command = bytearray()
        cmd: Optional[dict] = None
        cmd_ctx: Optional[int] = None
        sink = None
        expecting_data = False
        while True:
            if self._remaining == 0:
                kind, length = ch.read_header(first)
                first = b""
                if kind == RELEASE_RQ:
                    if command or expecting_data:
                        raise ProtocolError("A-RELEASE-RQ in the middle of a message")
                    ch.skip(length)
                    return "release", None, None
                if kind == ABORT:
                    ch.skip(min(length, 16))
                    raise PeerAborted("association aborted by the peer")
                if kind != P_DATA:
                    raise ProtocolError(f"unexpected {PDU_NAMES.get(kind, f'PDU type 0x{kind:02X}')}")
                if self.max_pdu and length > self.max_pdu:
                    raise ProtocolError(f"PDU of {length} bytes is larger than the {self.max_pdu} announced")
                if length < 6:
                    raise ProtocolError("malformed P-DATA-TF")
                self._remaining = length
            while self._remaining > 0:
                if self._remaining < 6:
                    raise ProtocolError("malformed P-DATA-TF")
                head = ch.recv_exact(6)
                pdv_len, ctx_id, flags = struct.unpack(">IBB", head)
                self._remaining -= 4 + pdv_len
                if pdv_len < 2 or self._remaining < 0:
                    raise ProtocolError("malformed presentation data value")
                if ctx_id not in self.contexts:
                    raise ProtocolError(f"presentation context {ctx_id} was not accepted")
                data_len = pdv_len - 2
                last = bool(flags & 0x02)
                if flags & 0x01:  # command fragment
                    if cmd is not None:
                        raise ProtocolError("a second command before the data set")
                    if len(command) + data_len > MAX_COMMAND:
                        raise ProtocolError("command set too large")
                    command += ch.recv_exact(data_len)
                    if last:
                        cmd = decode_command(bytes(command))
                        cmd_ctx = ctx_id
                        expecting_data = command_us(cmd, 0x0800) != NO_DATASET
                        command = bytearray()
                        if not expecting_data:
                            return "message", ctx_id, cmd
                        sink = on_command(ctx_id, cmd)
                else:  # data set fragment
                    if cmd is None or not expecting_data:
                        raise ProtocolError("data set fragment without its command")
                    if ctx_id != cmd_ctx:
                        raise ProtocolError("data set on another presentation context than its command")
                    ch.stream(data_len, sink)
                    if last:
                        return "message", ctx_id, cmd
