"""Slow-loris: peers that dribble bytes (one a second) must neither keep C-ECHO or C-STORE
out nor hold a connection longer than the node's bounds.

The node runs in-process with small timeouts; the attackers are raw sockets on loopback, the
honest callers dcmtk's echoscu and storescu. Every loop here stops by itself.
"""

from __future__ import annotations

import io
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field

import pydicom
import pytest
import structlog
from pydicom.data import get_testdata_file

from pacsguard.daemon.spool import Spool
from pacsguard.plugins.dicom import ul
from pacsguard.plugins.dicom.scp import DicomSource, DicomSourceOptions, dataset_offset
from peers import echoscu, storescu, wait_for
from tests.plugins.intake import SpoolIntake

ACSE, DIMSE = 2.0, 2.0
SLACK = 1.5  # scheduling jitter on a loaded 2-core machine
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


@pytest.fixture
def node(tmp_path):
    started = []

    def start(**options):
        options = {"host": "127.0.0.1", "port": 0, "max_associations": 4, "acse_timeout": ACSE,
                   "dimse_timeout": DIMSE, "network_timeout": 5, **options}
        intake = SpoolIntake(Spool(tmp_path / f"spool{len(started)}"))
        src = DicomSource("dicom", DicomSourceOptions.model_validate(options), intake)
        src.start()
        started.append(src)
        return src, intake

    yield start
    for src in started:
        src.stop(grace=2)


def _rq(calling: str = "SLOW") -> bytes:
    return ul.associate_rq(called="PACSGUARD", calling=calling,
                           contexts=[(1, CT_CLASS, [EXPLICIT]), (3, ul.VERIFICATION, [IMPLICIT])],
                           max_pdu=16384, impl_uid="1.2.826.0.1.3680043.9.9999", impl_name="SLOW")


#: a P-DATA-TF PDU announcing a 100-byte C-STORE command fragment on context 1
_PDATA = ul.pdu(ul.P_DATA, struct.pack(">IBB", 100, 1, 0x03) + b"\0" * 98)


@dataclass
class _Slot:
    due: float  # when it next opens or sends a byte
    sock: socket.socket | None = None
    payload: bytes = b""
    started: float = 0.0  # when the dribbling began
    used: bool = False


@dataclass
class Dribbler:
    """``count`` raw sockets, each sending ``payload`` one byte a second: an A-ASSOCIATE-RQ
    (``associate`` False) or, once a real association is accepted, a P-DATA-TF PDU. A socket
    the node closes is opened again a second later when ``reconnect`` (as a slow-loris
    attacker does). Records how long each one dribbled before the node closed it."""

    port: int
    count: int = 20
    associate: bool = False
    reconnect: bool = True
    closed_after: list[float] = field(default_factory=list)  # seconds dribbled before the node closed it
    open_ages: list[float] = field(default_factory=list)  # seconds dribbled by those still open at the end
    associated: int = 0
    rejected: int = 0

    def start(self, duration: float) -> "Dribbler":
        self._thread = threading.Thread(target=self._run, args=(duration,), daemon=True)
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()

    def _open(self, slot: _Slot, now: float) -> None:
        slot.used = True
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = _rq()
        if self.associate:
            try:
                s.sendall(payload)
                kind = _read_pdu(s)
            except OSError:
                kind = -1
            if kind != ul.ASSOCIATE_AC:
                self.rejected += 1
                s.close()
                slot.due = now + 1.0
                return
            self.associated += 1
            payload = _PDATA
        slot.sock, slot.payload, slot.started, slot.due = s, payload, time.monotonic(), time.monotonic()

    def _closed(self, slot: _Slot, now: float) -> None:
        self.closed_after.append(now - slot.started)
        slot.sock.close()
        slot.sock, slot.due = None, now + 1.0

    def _run(self, duration: float) -> None:
        t0 = time.monotonic()
        end = t0 + duration
        slots = [_Slot(due=t0 + i * 0.05) for i in range(self.count)]
        while (now := time.monotonic()) < end:
            for slot in slots:
                if slot.due > now:
                    continue
                if slot.sock is None:
                    if self.reconnect or not slot.used:
                        self._open(slot, now)
                    continue
                byte, slot.payload = slot.payload[:1], slot.payload[1:] or slot.payload
                try:
                    slot.sock.send(byte)
                    slot.due += 1.0
                except OSError:
                    self._closed(slot, now)
            open_ = [s for s in slots if s.sock is not None]
            wait = min([s.due for s in slots if s.sock is not None or self.reconnect] + [end]) - time.monotonic()
            readable, _, _ = select.select([s.sock for s in open_], [], [], max(0.0, min(wait, 0.05)))
            for slot in open_:
                if slot.sock in readable:
                    try:
                        data = slot.sock.recv(65536)  # an A-ABORT, or the end
                    except OSError:
                        data = b""
                    if not data:
                        self._closed(slot, time.monotonic())
        now = time.monotonic()
        for slot in slots:
            if slot.sock is not None:
                self.open_ages.append(now - slot.started)
                slot.sock.close()


def _read_pdu(s: socket.socket) -> int:
    head = b""
    while len(head) < 6:
        chunk = s.recv(6 - len(head))
        if not chunk:
            return -1
        head += chunk
    length = struct.unpack(">I", head[2:6])[0]
    while length > 0:
        chunk = s.recv(min(length, 65536))
        if not chunk:
            return -1
        length -= len(chunk)
    return head[0]


def _echo_loop(port: int, seconds: float) -> list[str]:
    """echoscu again and again for ``seconds``; the failures' output."""
    failures, runs = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        done = echoscu(port, args=("-ta", "10", "-td", "10", "-to", "10"))
        runs += 1
        if done.returncode != 0:
            failures.append((done.stdout + done.stderr).strip()[-300:])
        time.sleep(0.05)
    assert runs >= 10, f"only {runs} C-ECHOs in {seconds}s"
    return failures


def _store(port: int, intake: SpoolIntake) -> None:
    before = len(intake.received)
    done = storescu(port, [get_testdata_file("CT_small.dcm")], timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(intake.wait_received(before + 1)) == before + 1


def test_slow_association_requests_keep_neither_echo_nor_store_out(node):
    src, intake = node()  # 20 attackers, room for 16 connections without an association slot
    with structlog.testing.capture_logs() as logs:
        attack = Dribbler(src.port).start(duration=8.0)
        time.sleep(0.5)
        failures = _echo_loop(src.port, 3.0)
        _store(src.port, intake)
        failures += _echo_loop(src.port, 3.0)
        attack.join()
        src.stop(grace=1)
    assert failures == []
    bound = ACSE + SLACK
    assert len(attack.closed_after) >= 20, "the node closed the slow connections"
    assert max(attack.closed_after) < bound, sorted(attack.closed_after)[-5:]
    assert max(attack.open_ages, default=0) < bound, sorted(attack.open_ages)[-5:]
    # one warning per dropped connection, the peer's address only; past 10 a minute, one summary
    dropped = [e for e in logs if e["event"] == "slow connection dropped"]
    summary = [e for e in logs if e["event"].startswith("slow connections dropped")]
    assert len(dropped) == 10 and {e["log_level"] for e in dropped} == {"warning"}
    assert {tuple(sorted(e)) for e in dropped} == {("calling_host", "event", "log_level", "reason", "source")}
    assert {e["calling_host"] for e in dropped} == {"127.0.0.1"}
    assert len(summary) == 1 and summary[0]["count"] >= 10 and summary[0]["some_addresses"] == ["127.0.0.1"]
    assert any("the oldest is dropped" in e["reason"] for e in dropped), "the pool was full"


def test_slow_messages_on_open_associations_are_cut_off(node):
    src, intake = node()
    attack = Dribbler(src.port, associate=True, reconnect=False).start(duration=7.0)
    time.sleep(0.5)
    failures = _echo_loop(src.port, 2.0 + DIMSE)
    _store(src.port, intake)  # the slow associations' slots are free again
    attack.join()
    assert failures == []
    assert attack.associated == 4 and attack.rejected == 16
    assert len(attack.closed_after) == 4
    assert max(attack.closed_after) < DIMSE + SLACK, attack.closed_after


def test_a_slow_tls_handshake_is_cut_off(node, tmp_path):
    from tests.plugins.test_dicom_scp import make_pki

    pki = make_pki(tmp_path / "pki")
    src, _ = node(tls={"cert": str(pki / "server.pem"), "key": str(pki / "server.key")})
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    tls = client.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()  # a real ClientHello, sent two bytes a second
    with socket.create_connection(("127.0.0.1", src.port), timeout=10) as s:
        started = time.monotonic()
        for i in range(0, 40, 2):
            try:
                s.send(hello[i:i + 2])
            except OSError:
                break
            if select.select([s], [], [], 1.0)[0]:
                break
        closed = time.monotonic() - started
        try:
            assert s.recv(1024) == b""
        except ConnectionResetError:  # (closed with our bytes unread)
            pass
    assert ACSE - 0.5 < closed < ACSE + SLACK


def _store_slowly(port: int, data: bytes, *, piece: int, interval: float) -> int:
    """Associate, then send a C-STORE whose data set comes ``piece`` bytes (one P-DATA PDU)
    every ``interval`` seconds; the status answered, or -1 when the node cut it off."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ch = ul.Channel(sock)
    try:
        ch.send(_rq("HONEST"))
        kind, length = ch.read_header()
        ch.recv_exact(length)
        assert kind == ul.ASSOCIATE_AC
        ch.send_command(1, ul.c_store_rq(1, CT_CLASS, "1.2.826.0.1.3680043.9.9999.1"))
        for pos in range(0, len(data), piece):
            part = data[pos:pos + piece]
            last = 0x02 if pos + piece >= len(data) else 0x00
            ch.send(struct.pack(">BBIIBB", ul.P_DATA, 0, len(part) + 6, len(part) + 2, 1, last) + part)
            time.sleep(interval)
        reader = ul.MessageReader(ch, {1: EXPLICIT, 3: IMPLICIT})
        _, _, cmd = reader.next_message(lambda *_: None, idle_timeout=10, message_timeout=10)
        return ul.command_us(cmd, 0x0900)
    except ul.ULError:
        return -1
    finally:
        ch.close()


def _ct_dataset(size: int) -> bytes:
    """A real CT data set (pydicom's CT_small, pixels enlarged), Explicit VR Little Endian."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    side = int((size // 2) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(2 * side * side)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.9999.1"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()[dataset_offset(out, EXPLICIT):]  # (CT_small is Explicit VR Little Endian)


def test_a_large_store_on_a_slow_honest_link_is_not_cut_off(node):
    """The whole message takes well over dimse_timeout at ~100 KB/s (above the 16 KiB/s
    minimum); the same message at ~4 KB/s, in small PDUs each well in time, is cut off."""
    src, intake = node(dimse_timeout=1.0)
    data = _ct_dataset(300_000)
    started = time.monotonic()
    assert _store_slowly(src.port, data, piece=10_000, interval=0.1) == 0
    assert time.monotonic() - started > 2.5
    assert len(intake.wait_received(1)) == 1
    started = time.monotonic()
    assert _store_slowly(src.port, data[:20_000], piece=400, interval=0.1) == -1
    assert time.monotonic() - started < 1.0 / (1 - 4 / 16) + SLACK
    assert len(intake.received) == 1


def test_an_idle_association_is_closed_after_network_timeout(node):
    src, _ = node(network_timeout=1.0)
    with socket.create_connection(("127.0.0.1", src.port), timeout=10) as s:
        s.sendall(_rq("IDLE"))
        assert _read_pdu(s) == ul.ASSOCIATE_AC
        started = time.monotonic()
        assert _read_pdu(s) == ul.ABORT
        assert 0.8 < time.monotonic() - started < 1.0 + SLACK
    wait_for(lambda: src.active_associations == 0, 2, "the idle association to end")


def test_drop_log_is_one_warning_each_then_one_summary_a_window():
    from pacsguard.plugins.dicom.admission import DropLog

    now = [0.0]
    drops = DropLog("dicom", burst=2, window=60.0, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for i in range(5):
            drops.note(f"10.0.0.{i % 3}", "too slow")
        drops.flush()  # the window is not over: nothing yet
        assert len(logs) == 2
        now[0] = 61.0
        drops.flush()
        drops.note("10.0.0.9", "too slow")  # a new window
        drops.flush(final=True)  # nothing counted in it
    assert [(e["event"], e.get("calling_host")) for e in logs] == [
        ("slow connection dropped", "10.0.0.0"), ("slow connection dropped", "10.0.0.1"),
        ("slow connections dropped (too many to log one by one)", None), ("slow connection dropped", "10.0.0.9")]
    assert logs[2]["count"] == 3 and logs[2]["addresses"] == 3 and logs[2]["seconds"] == 61
