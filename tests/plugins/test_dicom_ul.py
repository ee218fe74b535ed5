"""The DICOM node facing callers that break the protocol: every case ends in a refusal or an
A-ABORT, nothing half-received stays in the spool, and the node keeps serving.

Well-formed traffic is tested against real peers (dcmtk, pynetdicom, Orthanc) in
test_dicom_scp.py, test_dicom_scu.py and tests/e2e; here raw sockets send what no real
peer would.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from pacsguard.daemon.spool import Spool
from pacsguard.plugins.dicom import ul
from pacsguard.plugins.dicom.scp import DicomSource, DicomSourceOptions
from tests.plugins.intake import SpoolIntake

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve - FIND: not a storage class


@pytest.fixture
def node(tmp_path):
    intake = SpoolIntake(Spool(tmp_path / "spool"))
    src = DicomSource("dicom", DicomSourceOptions.model_validate(
        {"host": "127.0.0.1", "port": 0, "max_pdu": 65536, "acse_timeout": 5, "network_timeout": 5,
         "dimse_timeout": 5}), intake)
    src.start()
    yield src, intake
    src.stop(grace=2)


def connect(src) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", src.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_pdu(s) -> tuple[int, bytes]:
    head = b""
    while len(head) < 6:
        chunk = s.recv(6 - len(head))
        if not chunk:
            return -1, b""
        head += chunk
    kind, length = head[0], struct.unpack(">I", head[2:6])[0]
    body = b""
    while len(body) < length:
        chunk = s.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return kind, body


def associate(src, contexts=((1, CT_CLASS, [EXPLICIT]),)) -> tuple[socket.socket, dict]:
    s = connect(src)
    s.sendall(ul.associate_rq(called="PACSGUARD", calling="RAW", contexts=list(contexts), max_pdu=0,
                              impl_uid="1.2.3.4", impl_name="RAW"))
    kind, body = read_pdu(s)
    assert kind == ul.ASSOCIATE_AC
    results = {}
    pos = 68
    while pos + 4 <= len(body):
        itype, _, ilen = struct.unpack_from(">BBH", body, pos)
        if itype == 0x21:
            results[body[pos + 4]] = body[pos + 6]
        pos += 4 + ilen
    return s, results


def pdv(ctx: int, data: bytes, *, command: bool, last: bool) -> bytes:
    return struct.pack(">IBB", len(data) + 2, ctx, (1 if command else 0) | (2 if last else 0)) + data


def p_data(*pdvs: bytes) -> bytes:
    return ul.pdu(ul.P_DATA, b"".join(pdvs))


def store_command(msg_id=1, uid="1.2.3.4.5") -> bytes:
    return ul.c_store_rq(msg_id, CT_CLASS, uid)


def closed_by_peer(s, timeout=5) -> tuple[int, bytes]:
    """The next PDU (A-ABORT expected), then the connection must close."""
    s.settimeout(timeout)
    kind, body = read_pdu(s)
    if kind != -1:
        assert read_pdu(s)[0] == -1
    return kind, body


def spool_files(intake) -> list[Path]:
    return [p for p in (intake.spool.root / "incoming").rglob("*") if p.is_file()]


def still_serves(src, intake) -> None:
    s, results = associate(src)
    assert results == {1: 0}
    data = b"\x08\x00\x16\x00UI\x1a\x00" + CT_CLASS.encode().ljust(26, b"\0")
    s.sendall(p_data(pdv(1, store_command(), command=True, last=True)))
    s.sendall(p_data(pdv(1, data, command=False, last=True)))
    kind, body = read_pdu(s)
    assert kind == ul.P_DATA
    rsp = ul.decode_command(body[6:])
    assert ul.command_us(rsp, 0x0900) == 0x0000
    s.sendall(ul.RELEASE_RQ_PDU)
    assert read_pdu(s)[0] == ul.RELEASE_RP
    s.close()


def test_garbage_instead_of_an_association_request_is_dropped(node):
    src, intake = node
    s = connect(src)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    kind, body = closed_by_peer(s)
    assert kind in (ul.ABORT, -1)
    still_serves(src, intake)


def test_a_non_storage_class_is_refused_and_storage_accepted(node):
    src, intake = node
    s, results = associate(src, contexts=((1, FIND, [EXPLICIT]), (3, CT_CLASS, ["1.2.3.999"]),
                                          (5, CT_CLASS, ["1.2.3.999", EXPLICIT])))
    assert results == {1: ul.ABSTRACT_SYNTAX_NOT_SUPPORTED, 3: ul.TRANSFER_SYNTAXES_NOT_SUPPORTED,
                       5: ul.ACCEPTANCE}
    s.close()


@pytest.mark.parametrize("case", ["unknown context", "data before command", "oversized PDU",
                                  "unexpected PDU", "release mid-message"])
def test_protocol_violations_abort_and_leave_nothing(node, case):
    src, intake = node
    s, _ = associate(src)
    data = b"\x08\x00\x16\x00UI\x1a\x00" + CT_CLASS.encode().ljust(26, b"\0")
    if case == "unknown context":
        s.sendall(p_data(pdv(7, store_command(), command=True, last=True)))
    elif case == "data before command":
        s.sendall(p_data(pdv(1, data, command=False, last=True)))
    elif case == "oversized PDU":  # the node announced 65536
        s.sendall(p_data(pdv(1, store_command(), command=True, last=True)))
        s.sendall(p_data(pdv(1, b"\0" * 70000, command=False, last=True)))
    elif case == "unexpected PDU":
        s.sendall(ul.associate_rq(called="PACSGUARD", calling="RAW", contexts=[(1, CT_CLASS, [EXPLICIT])],
                                  max_pdu=0, impl_uid="1.2.3", impl_name="X"))
    elif case == "release mid-message":
        s.sendall(p_data(pdv(1, store_command(), command=True, last=True)))
        s.sendall(p_data(pdv(1, data, command=False, last=False)))
        s.sendall(ul.RELEASE_RQ_PDU)
    kind, body = closed_by_peer(s)
    assert kind == ul.ABORT and body[2] == ul.ABORT_PROVIDER
    assert intake.received == [] and spool_files(intake) == []
    still_serves(src, intake)


def test_a_connection_lost_mid_data_set_leaves_nothing_and_does_not_hold_stop(node):
    src, intake = node
    s, _ = associate(src)
    s.sendall(p_data(pdv(1, store_command(), command=True, last=True)))
    s.sendall(p_data(pdv(1, b"\x08\x00\x16\x00" + b"\0" * 5000, command=False, last=False)))
    deadline = time.monotonic() + 5
    while not spool_files(intake) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool_files(intake)  # the partial file exists while the data set arrives
    s.close()
    deadline = time.monotonic() + 5
    while (spool_files(intake) or src.active_associations) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool_files(intake) == [] and intake.received == []
    started = time.monotonic()
    src.stop(grace=10)  # nothing in flight: does not wait for the grace period
    assert time.monotonic() - started < 2


def test_an_unsupported_request_is_answered_not_aborted(node):
    src, intake = node
    s, _ = associate(src)
    find = ul.encode_command([(0x0002, CT_CLASS.encode()), (0x0100, struct.pack("<H", 0x0020)),
                              (0x0110, struct.pack("<H", 9)), (0x0800, struct.pack("<H", ul.NO_DATASET))])
    s.sendall(p_data(pdv(1, find, command=True, last=True)))
    kind, body = read_pdu(s)
    assert kind == ul.P_DATA
    rsp = ul.decode_command(body[6:])
    assert ul.command_us(rsp, 0x0100) == 0x8020 and ul.command_us(rsp, 0x0120) == 9
    assert ul.command_us(rsp, 0x0900) == 0x0211
    s.close()


def test_the_c_store_response_names_the_request(node):
    src, intake = node
    s, _ = associate(src)
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    meta_len = struct.unpack_from("<I", data, 140)[0]
    dataset = data[144 + meta_len:]
    s.sendall(p_data(pdv(1, store_command(msg_id=77, uid="1.2.826.0.1.3680043.2.1125.1.1"), command=True,
                         last=True)))
    s.sendall(p_data(pdv(1, dataset, command=False, last=True)))
    kind, body = read_pdu(s)
    rsp = ul.decode_command(body[6:])
    assert ul.command_us(rsp, 0x0120) == 77 and ul.command_us(rsp, 0x0900) == 0
    assert ul.command_uid(rsp, 0x1000) == "1.2.826.0.1.3680043.2.1125.1.1"
    assert ul.command_uid(rsp, 0x0002) == CT_CLASS
    assert len(intake.wait_received(1)) == 1
    s.close()


def test_one_pdu_may_end_a_message_and_start_the_next(node):
    src, intake = node
    s, _ = associate(src)
    data = b"\x08\x00\x16\x00UI\x1a\x00" + CT_CLASS.encode().ljust(26, b"\0")
    s.sendall(p_data(pdv(1, store_command(1, "1.2.3.1"), command=True, last=True)))
    s.sendall(p_data(pdv(1, data, command=False, last=True),  # end of the first message ...
                     pdv(1, store_command(2, "1.2.3.2"), command=True, last=True)))  # ... start of the next
    s.sendall(p_data(pdv(1, data, command=False, last=True)))
    answered = []
    for _ in range(2):
        kind, body = read_pdu(s)
        assert kind == ul.P_DATA
        rsp = ul.decode_command(body[6:])
        answered.append((ul.command_us(rsp, 0x0120), ul.command_us(rsp, 0x0900)))
    assert answered == [(1, 0), (2, 0)] and len(intake.wait_received(2)) == 2
    s.close()
