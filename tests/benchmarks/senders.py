"""What sends the corpus to a contender.

- :func:`storescu_burst`: dcmtk ``storescu`` (TCP_NODELAY=1), one association per group (series),
  as fast as it goes. Its verbose log is read line by line as it is written, so each
  C-STORE response ("Received Store Response") gets a timestamp: the acknowledgement time.
- :class:`RawStoreSCU`: a small C-STORE SCU on a plain socket that sends files on a fixed
  schedule (the steady offered rate) and timestamps each C-STORE response. It sends each
  file's data set bytes as they are (no decode/re-encode), so at 50 img/s it costs the
  machine almost nothing — pynetdicom as a sender tops out near 45 img/s at 16 KiB PDUs
  (see REFERENCE.md) and would be the bottleneck of the latency test, not the contender.
- :func:`drop_files`: write-temp + rename into a watched folder (burst or fixed rate).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import peers
from .corpus import CorpusFile


@dataclass
class Sent:
    uid: str
    size: int
    sent_at: float | None = None   # request started
    ack_at: float | None = None    # response (or drop rename) seen
    status: int | None = None      # DICOM status (0 = success); None: no response
    name: str = ""                 # file name (for reports of refused objects)
    response: str = ""             # the sender's words about a failed store


@dataclass
class SendResult:
    started_at: float                      # first byte (process launch / first rename)
    finished_at: float = 0.0
    items: list[Sent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def acked(self) -> int:
        return sum(1 for s in self.items if s.status == 0)


# --- dcmtk storescu ------------------------------------------------------------------------

def storescu_burst(port: int, called: str, groups: list[list[CorpusFile]], cfg: Path,
                   *, timeout: float = 1800, cancel: threading.Event | None = None) -> SendResult:
    """Send each group (a series) on its own association, one after the other.
    Setting ``cancel`` kills the running storescu and stops."""
    storescu = peers.require("storescu")
    cancel = cancel or threading.Event()
    result = SendResult(started_at=time.time())
    for group in groups:
        if cancel.is_set():
            result.errors.append("cancelled")
            break
        by_path = {str(f.path): f for f in group}
        cmd = [storescu, "-v", "-nh", "-xf", str(cfg), "Bench", "-aec", called, "-aet", "BENCHSCU",
               "127.0.0.1", str(port), *by_path]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=peers.tool_env(), bufsize=1, text=True)
        deadline = time.monotonic() + timeout

        def watch(proc=proc, deadline=deadline):
            while proc.poll() is None:
                if cancel.wait(0.2) or time.monotonic() > deadline:
                    proc.kill()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        current: Sent | None = None
        tail: list[str] = []
        try:
            for line in proc.stdout:
                t = time.time()
                line = line.rstrip("\n")
                if line.startswith("I: Sending file: "):
                    f = by_path.get(line[len("I: Sending file: "):])
                    current = Sent(f.sop_instance, f.size, sent_at=t, name=f.path.name) if f else None
                    if current:
                        result.items.append(current)
                elif line.startswith("I: Received Store Response") and current is not None:
                    current.ack_at = t
                    current.status = 0 if "(Success" in line else -1
                    if current.status:
                        current.response = line[len("I: Received Store Response"):].strip(" :")
                    current = None
                elif line.startswith(("E:", "F:")):
                    tail.append(line)
                    if current is not None and current.status is None:
                        current.status, current.response = -1, line[3:]
                        current = None
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            watcher.join(timeout=5)
        if proc.returncode != 0 or tail:
            result.errors.append(f"storescu exit {proc.returncode}: " + " | ".join(tail[-3:]))
    result.finished_at = time.time()
    return result


# --- a fixed-rate C-STORE SCU on a socket -----------------------------------------------

_APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
_IMPL_UID = b"1.2.826.0.1.3680043.8.498.1"
_IMPL_NAME = b"PACSGUARD_BENCH"


def _uid(u: str | bytes) -> bytes:
    b = u.encode() if isinstance(u, str) else u
    return b + b"\0" if len(b) % 2 else b


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode().ljust(16)[:16]


def _elem(group_elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, group_elem, len(value)) + value


def _command(sop_class: str, sop_instance: str, msg_id: int) -> bytes:
    body = (_elem(0x0002, _uid(sop_class)) + _elem(0x0100, struct.pack("<H", 0x0001))
            + _elem(0x0110, struct.pack("<H", msg_id)) + _elem(0x0700, struct.pack("<H", 0))
            + _elem(0x0800, struct.pack("<H", 0x0000)) + _elem(0x1000, _uid(sop_instance)))
    return _elem(0x0000, struct.pack("<I", len(body))) + body


def _parse_command(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 8 <= len(data):
        _, elem, length = struct.unpack_from("<HHI", data, pos)
        out[elem] = data[pos + 8: pos + 8 + length]
        pos += 8 + length
    return out


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part-10 file (after the 128-byte preamble, DICM and group 0002)."""
    data = Path(path).read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path}: not a Part-10 file")
    tag = struct.unpack_from("<HH", data, 132)
    if tag != (0x0002, 0x0000):
        raise ValueError(f"{path}: file meta without group length")
    meta_len = struct.unpack_from("<I", data, 140)[0]
    data = data[144 + meta_len:]
    return data + b"\0" if len(data) % 2 else data  # (deflated data sets can be odd)


class RawStoreSCU:
    """One association; ``send_at_rate`` sends the files at a fixed schedule."""

    def __init__(self, host: str, port: int, called: str, calling: str = "BENCHSCU",
                 *, max_pdu: int = 131072, timeout: float = 60):
        self.host, self.port, self.called, self.calling = host, port, called, calling
        self.max_pdu = max_pdu
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.peer_max_pdu = 0
        self.contexts: dict[tuple[str, str], int] = {}

    # -- association ---------------------------------------------------------------------
    def associate(self, files: list[CorpusFile]) -> None:
        pairs = []
        for f in files:
            if (f.sop_class, f.transfer_syntax) not in pairs:
                pairs.append((f.sop_class, f.transfer_syntax))
        items = _item(0x10, _APP_CONTEXT)
        proposed = {}
        for i, (sop_class, ts) in enumerate(pairs):
            ctx_id = 2 * i + 1
            proposed[ctx_id] = (sop_class, ts)
            items += _item(0x20, struct.pack(">BBBB", ctx_id, 0, 0, 0)
                           + _item(0x30, sop_class.encode()) + _item(0x40, ts.encode()))
        user = (_item(0x51, struct.pack(">I", self.max_pdu)) + _item(0x52, _IMPL_UID)
                + _item(0x55, _IMPL_NAME))
        items += _item(0x50, user)
        body = struct.pack(">HH", 1, 0) + _ae(self.called) + _ae(self.calling) + b"\0" * 32 + items
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        kind, pdu = self._read_pdu()
        if kind != 0x02:
            raise ConnectionError(f"association refused or aborted (PDU type 0x{kind:02x}: {pdu[:8].hex()})")
        pos = 68
        while pos + 4 <= len(pdu):
            itype, _, ilen = struct.unpack_from(">BBH", pdu, pos)
            val = pdu[pos + 4: pos + 4 + ilen]
            if itype == 0x21 and val[2] == 0:  # accepted presentation context
                ctx_id = val[0]
                if ctx_id in proposed:
                    self.contexts[proposed[ctx_id]] = ctx_id
            elif itype == 0x50:
                sp = 0
                while sp + 4 <= len(val):
                    stype, _, slen = struct.unpack_from(">BBH", val, sp)
                    if stype == 0x51:
                        self.peer_max_pdu = struct.unpack_from(">I", val, sp + 4)[0]
                    sp += 4 + slen
            pos += 4 + ilen
        if not self.contexts:
            raise ConnectionError("no presentation context accepted")

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("peer closed the connection")
            buf += chunk
        return bytes(buf)

    def _read_pdu(self) -> tuple[int, bytes]:
        kind, _, length = struct.unpack(">BBI", self._recv_exact(6))
        return kind, self._recv_exact(length)

    def _send_pdvs(self, ctx_id: int, data: bytes, command: bool) -> None:
        limit = self.peer_max_pdu or (1 << 20)
        chunk = max(limit - 6, 1024)
        view = memoryview(data)
        pos = 0
        while True:
            part = view[pos: pos + chunk]
            pos += len(part)
            last = pos >= len(data)
            flags = (1 if command else 0) | (2 if last else 0)
            header = struct.pack(">BBIIBB", 0x04, 0, len(part) + 6, len(part) + 2, ctx_id, flags)
            self.sock.sendmsg([header, part])
            if last:
                return

    def store(self, f: CorpusFile, data: bytes, msg_id: int) -> int:
        ctx_id = self.contexts.get((f.sop_class, f.transfer_syntax))
        if ctx_id is None:
            raise ConnectionError(f"no accepted context for {f.sop_class} / {f.transfer_syntax}")
        self._send_pdvs(ctx_id, _command(f.sop_class, f.sop_instance, msg_id), True)
        self._send_pdvs(ctx_id, data, False)
        command = b""
        while True:
            kind, pdu = self._read_pdu()
            if kind == 0x07:
                raise ConnectionError("association aborted by the peer")
            if kind != 0x04:
                continue
            pos = 0
            done = False
            while pos + 6 <= len(pdu):
                plen, _, flags = struct.unpack_from(">IBB", pdu, pos)
                if flags & 1:
                    command += pdu[pos + 6: pos + 4 + plen]
                    done = done or bool(flags & 2)
                pos += 4 + plen
            if done:
                break
        elems = _parse_command(command)
        return struct.unpack("<H", elems[0x0900])[0] if 0x0900 in elems else -1

    def release(self) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + b"\0" * 4)
            self.sock.settimeout(5)
            while True:
                kind, _ = self._read_pdu()
                if kind in (0x06, 0x07):
                    break
        except OSError:
            pass
        finally:
            self.sock.close()
            self.sock = None

    def send_at_rate(self, files: list[CorpusFile], rate: float,
                     cancel: threading.Event | None = None) -> SendResult:
        """Send ``files`` on this association at ``rate`` objects/s (a fixed schedule:
        a late send goes at once, the schedule is not shifted). ``cancel`` stops it."""
        payloads = [dataset_bytes(f.path) for f in files]
        self.associate(files)
        result = SendResult(started_at=time.time())
        t0 = time.monotonic()
        try:
            for i, (f, data) in enumerate(zip(files, payloads)):
                if cancel is not None and cancel.is_set():
                    result.errors.append("cancelled")
                    break
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                s = Sent(f.sop_instance, f.size, sent_at=time.time(), name=f.path.name)
                result.items.append(s)
                s.status = self.store(f, data, i + 1)
                s.ack_at = time.time()
                if s.status:
                    s.response = f"status 0x{s.status & 0xFFFF:04x}"
        except (OSError, ConnectionError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.release()
        result.finished_at = time.time()
        return result


# --- watched folder ----------------------------------------------------------------------

def drop_files(files: list[CorpusFile], folder: Path, *, rate: float | None = None,
               cancel: threading.Event | None = None) -> SendResult:
    """Copy each file into ``folder`` as ``.name.tmp`` then rename it to its final name
    (the way a careful writer drops files). ``rate``: objects/s on a fixed schedule;
    None: as fast as possible. The rename time is the file's "acknowledgement"."""
    result = SendResult(started_at=time.time())
    t0 = time.monotonic()
    first = True
    for i, f in enumerate(files):
        if cancel is not None and cancel.is_set():
            result.errors.append("cancelled")
            break
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        s = Sent(f.sop_instance, f.size, sent_at=time.time(), name=f.path.name)
        tmp = folder / f".{f.path.name}.tmp"
        shutil.copyfile(f.path, tmp)
        final = folder / f"{i:06d}_{f.path.name}"
        os.rename(tmp, final)
        s.ack_at = time.time()
        s.status = 0
        if first:
            result.started_at = s.ack_at  # end to end from the first file dropped
            first = False
        result.items.append(s)
    result.finished_at = time.time()
    return result
