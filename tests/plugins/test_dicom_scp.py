"""The DICOM network source, in-process: options, Part-10 assembly, access control, durable
acknowledgement and TLS, against a real spool and a real pynetdicom peer on loopback."""

from __future__ import annotations

import io
import os
import socket
import time
import struct
import subprocess
import textwrap
from pathlib import Path

import pydicom
import pytest
import structlog
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
)

from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.errors import ConfigError
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.spool import Spool
from pacsguard.plugins.dicom import tls as tlsmod
from pacsguard.plugins.dicom import ul
from peers import configure_pynetdicom as configure
from tests.plugins.intake import SpoolIntake
from pacsguard.plugins.dicom.scp import (
    IMPLEMENTATION_CLASS_UID, AllowedCaller, DicomSource, DicomSourceOptions, MalformedDataset, TlsOptions,
    dataset_offset, write_part10,
)

SAMPLES = ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm",
           "image_dfl.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm"]


# --- options -------------------------------------------------------------------------------


def test_defaults_and_every_field_documented():
    o = DicomSourceOptions()
    assert (o.ae_title, o.host, o.port, o.allowed_callers, o.max_pdu, o.tls) == (
        "PACSGUARD", "0.0.0.0", 11112, [], 0, None)
    assert o.max_associations >= 1 and o.acse_timeout > 0
    for model in (DicomSourceOptions, AllowedCaller, TlsOptions):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
    assert "ANY caller" in DicomSourceOptions.model_fields["allowed_callers"].description
    DicomSourceOptions.model_json_schema()  # feeds the config schema


def test_allow_list_shapes():
    o = DicomSourceOptions(allowed_callers=[
        {"ae_title": "CT1"}, {"ae_title": " MR1 ", "host": "10.1.2.0/24"},
        {"ae_title": 1234, "host": "::ffff:10.0.0.7"}, {"ae_title": "US1", "host": "pacs.example.org"}])
    assert [(c.ae_title, c.host) for c in o.allowed_callers] == [
        ("CT1", None), ("MR1", "10.1.2.0/24"), ("1234", "::ffff:a00:7"), ("US1", "pacs.example.org")]


@pytest.mark.parametrize("raw, fragment", [
    ({"ae_title": ""}, "1 to 16 characters"),
    ({"ae_title": "A" * 17}, "1 to 16 characters"),
    ({"ae_title": "BAD\\AE"}, "backslash"),
    ({"port": 99999}, "less than or equal to 65535"),
    ({"port": -1}, "greater than or equal to 0"),
    ({"allowed_callers": [{"host": "10.0.0.1"}]}, "ae_title"),
    ({"allowed_callers": [{"ae_title": "X", "hosts": "10.0.0.1"}]}, "Extra inputs"),
    ({"allowed_callers": [{"ae_title": "X", "host": "not a host!"}]}, "not an IP address"),
    ({"allowed_callers": "CT1"}, "list"),
    ({"max_pdu": 100}, "4096"),
    ({"max_associations": 0}, "greater than or equal to 1"),
    ({"acse_timeout": "soon"}, "invalid duration"),
    ({"tls": {"cert": "/nonexistent/c.pem"}}, "key"),
    ({"tls": {"cert": "/nonexistent/c.pem", "key": "/nonexistent/k.pem"}}, "does not exist"),
    ({"tls": {"cert": "/x", "key": "/y", "key_password": "secret"}}, "Extra inputs"),
    ({"tls": {"cert": "/x", "key": "credential:a/b"}}, "credential:NAME"),
    ({"tls": {"cert": "/x", "key": "/y", "min_version": "1.1"}}, "1.2"),
])
def test_invalid_options(raw, fragment):
    with pytest.raises(ValidationError) as info:
        DicomSourceOptions.model_validate(raw)
    assert fragment in str(info.value)


def test_tls_options(pki):
    o = TlsOptions(cert=pki / "server.pem", key="credential:dicom.key", key_password_file="credential:dicom.pw",
                   ca=pki / "ca.pem", require_client_cert=True)
    assert str(o.key) == "credential:dicom.key" and o.min_version == "1.2"
    with pytest.raises(ValidationError, match="require_client_cert needs `ca`"):
        TlsOptions(cert=pki / "server.pem", key=pki / "server.key", require_client_cert=True)


def test_config_errors_name_their_place():
    registry = collect(get_plugin_manager(entry_points=False))
    text = textwrap.dedent("""\
        node:
          ae_title: NODE
          allowed_callers:
            - {ae_title: CT1, host: "no such host!"}
          tls: {cert: /nonexistent.pem, key: /nonexistent.key, passphrase: x}
        """)
    with pytest.raises(ConfigError) as info:
        load_config_text(text, registry)
    errors = "\n".join(info.value.errors)
    assert "node.allowed_callers[0].host" in errors
    assert "node.tls: unknown key 'passphrase'" in errors


def test_allowed_caller_matching():
    entry = AllowedCaller(ae_title="CT1", host="10.1.2.0/24")
    from ipaddress import ip_address

    assert entry.permits("CT1", ip_address("10.1.2.9"))
    assert not entry.permits("CT1", ip_address("10.1.3.9"))
    assert not entry.permits("CT2", ip_address("10.1.2.9"))
    assert not entry.permits("CT1", None)
    assert AllowedCaller(ae_title="CT1", host="localhost").permits("CT1", ip_address("127.0.0.1"))
    assert AllowedCaller(ae_title="CT1").permits("CT1", None)


# --- Part-10 assembly ----------------------------------------------------------------------


def _pynetdicom_style(path: Path, dataset: bytes, ts: str, with_meta: bool = True) -> Path:
    """A received-data-set file as pynetdicom writes it (preamble + meta + data set) or bare."""
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    head = b""
    if with_meta:
        meta = create_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.3.4",
                                transfer_syntax=ts)
        head = b"\0" * 128 + b"DICM" + encode_file_meta(meta)
    path.write_bytes(head + dataset)
    return path


def _encoded(ds: pydicom.Dataset, ts: str) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = UID(ts).is_little_endian, UID(ts).is_implicit_VR
    write_dataset(buf, ds)
    return buf.getvalue()


def _sample_dataset() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    ds.PatientName, ds.Modality, ds.Rows = "DOE^JANE", "CT", 2
    ds.add_new(0x7FE00010, "OB", b"\x01\x02\x03\x04")
    return ds


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("with_meta", [True, False])
def test_part10_from_received_file(tmp_path, ts, with_meta):
    data = _encoded(_sample_dataset(), ts)
    src = _pynetdicom_style(tmp_path / "rx.dcm", data, ts, with_meta)
    dst = tmp_path / "out.dcm"
    size = write_part10(src, dst, sop_class="1.2.840.10008.5.1.4.1.1.2", sop_instance="1.2.3.4",
                        transfer_syntax=ts, source_ae="CT1")
    raw = dst.read_bytes()
    assert size == len(raw) and raw[128:132] == b"DICM"
    assert raw.endswith(data)  # the data set bytes, unparsed and unchanged
    ds = pydicom.dcmread(dst)
    meta = ds.file_meta
    assert (meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID) == (
        ts, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.SourceApplicationEntityTitle == "CT1"
    assert ds.PatientName == "DOE^JANE" and ds.PixelData == b"\x01\x02\x03\x04"


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_group_0002_inside_the_data_set_is_dropped(tmp_path, ts):
    """A non-conformant caller that sends File Meta elements inside the data set."""
    data = _encoded(_sample_dataset(), ts)
    little = ts != ExplicitVRBigEndian
    e = "<" if little else ">"
    value = b"9.8.7\0"
    if ts == ImplicitVRLittleEndian:
        stray = struct.pack("<HHI", 2, 0x10, len(value)) + value
    else:
        stray = struct.pack(e + "HH", 2, 0x10) + b"UI" + struct.pack(e + "H", len(value)) + value
    src = _pynetdicom_style(tmp_path / "rx.dcm", stray + data, ts)
    write_part10(src, tmp_path / "out.dcm", sop_class="1.2.840.10008.5.1.4.1.1.2", sop_instance="1.2.3.4",
                 transfer_syntax=ts)
    raw = (tmp_path / "out.dcm").read_bytes()
    assert raw.endswith(data) and stray not in raw
    assert pydicom.dcmread(tmp_path / "out.dcm").file_meta.TransferSyntaxUID == ts


def test_deflated_data_set_is_copied_as_is(tmp_path):
    data = b"\x78\x9c-not-parsed-deflate-bytes"
    src = _pynetdicom_style(tmp_path / "rx.dcm", data, DeflatedExplicitVRLittleEndian)
    write_part10(src, tmp_path / "out.dcm", sop_class="1.2.3", sop_instance="1.2.3.4",
                 transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert (tmp_path / "out.dcm").read_bytes().endswith(data)


def test_empty_or_unnamed_data_set_is_refused(tmp_path):
    src = _pynetdicom_style(tmp_path / "rx.dcm", b"", ExplicitVRLittleEndian)
    with pytest.raises(MalformedDataset):
        write_part10(src, tmp_path / "a.dcm", sop_class="1.2.3", sop_instance="1.2.3.4",
                     transfer_syntax=ExplicitVRLittleEndian)
    with pytest.raises(MalformedDataset):
        write_part10(src, tmp_path / "b.dcm", sop_class="", sop_instance="1.2.3.4",
                     transfer_syntax=ExplicitVRLittleEndian)


# --- a real source on loopback -------------------------------------------------------------


@pytest.fixture
def node(tmp_path):
    """start(**options) -> (source, intake); sources are stopped at teardown."""
    started = []

    def start(max_size=0, **options):
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        intake = SpoolIntake(Spool(tmp_path / f"spool{len(started)}", max_size))
        src = DicomSource("dicom", DicomSourceOptions.model_validate(options), intake)
        src.start()
        started.append(src)
        return src, intake

    yield start
    for src in started:
        src.stop(grace=2)


def _jobs(spool: Spool) -> list[dict]:
    return [dict(r) for r in spool._conn().execute("SELECT * FROM jobs ORDER BY id")]


def _leftovers(spool: Spool) -> list[Path]:
    return [p for p in spool.incoming.rglob("*") if p.is_file() and p.name.endswith(".part")]


def scu(port, *, calling="SCU", called="PACSGUARD", files=(), bind=None, tls_args=None, verification=True):
    """A real pynetdicom requestor proposing each file's (SOP class, transfer syntax) exactly."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    configure()  # sends files as they are (no decode/re-encode)
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    if verification:
        ae.add_requested_context(Verification)
    for f in files:
        meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    kwargs = {"ae_title": called}
    if bind:
        kwargs["bind_address"] = (bind, 0)
    if tls_args:
        kwargs["tls_args"] = tls_args
    return ae.associate("127.0.0.1", port, **kwargs)


def _rejection(port: int, *, calling: str = "SCU", called: str = "PACSGUARD", bind: str | None = None,
               abstract: str = ul.VERIFICATION) -> tuple:
    """(result, source, reason) of the A-ASSOCIATE-RJ the node answers, read off a raw
    socket. (pynetdicom's requestor can miss a rejection that comes back very fast: its
    DUL thread closes the socket before the requesting thread looks, which then reports
    neither rejected nor aborted.)"""
    with socket.socket() as s:
        s.settimeout(10)
        if bind:
            s.bind((bind, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(ul.associate_rq(called=called, calling=calling,
                                  contexts=[(1, abstract, [str(ImplicitVRLittleEndian)])],
                                  max_pdu=16384, impl_uid="1.2.826.0.1.3680043.9.9999", impl_name="TEST"))
        head = _recv_exact(s, 6)
        assert head[0] == 0x03, f"not an A-ASSOCIATE-RJ: PDU type 0x{head[0]:02X}"
        body = _recv_exact(s, struct.unpack(">I", head[2:])[0])
        assert s.recv(1) == b"", "the node closes the connection after rejecting"
    return body[1], body[2], body[3]


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "connection closed early"
        out += chunk
    return out


def _dataset_bytes(path: Path) -> bytes:
    raw = Path(path).read_bytes()
    return raw[dataset_offset(io.BytesIO(raw), str(pydicom.dcmread(path, stop_before_pixels=True)
                                                     .file_meta.TransferSyntaxUID)):]


def test_store_acknowledges_durable_part10_files(node):
    src, intake = node(allowed_callers=[{"ae_title": "CT1"}])
    files = [Path(get_testdata_file(n)) for n in SAMPLES]
    assoc = scu(src.port, calling="CT1", files=files)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        for f in files:
            assert assoc.send_c_store(f).Status == 0x0000, f.name
        # TCP_NODELAY on the accepted socket
        ((session, _),) = src._active.values()
        assert session.channel.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        assoc.release()
    jobs = _jobs(intake.spool)
    assert len(jobs) == len(files)
    for job, f in zip(jobs, files):
        assert (job["source"], job["source_type"], job["calling_ae"], job["called_ae"], job["calling_host"]) == (
            "dicom", "dicom", "CT1", "PACSGUARD", "127.0.0.1")
        stored = intake.spool.root / job["path"]
        original = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        meta = pydicom.dcmread(stored, stop_before_pixels=True).file_meta
        for kw in ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
            assert meta[kw].value == original[kw].value, (f.name, kw)
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.SourceApplicationEntityTitle == "CT1"
        assert _dataset_bytes(stored) == _dataset_bytes(f), f.name  # byte for byte, pixel data included
    assert not _leftovers(intake.spool)


def test_a_received_file_whose_record_was_lost_is_adopted_with_its_facts(node):
    """The intake commit is not fsync'd by itself: a power cut may take the job row of an
    acknowledged object, never its file. At the next start the file is adopted with the
    transport facts its File Meta Information recorded."""
    src, intake = node(allowed_callers=[{"ae_title": "CT1"}])
    f = Path(get_testdata_file("CT_small.dcm"))
    assoc = scu(src.port, calling="CT1", files=[f])
    try:
        assert assoc.send_c_store(f).Status == 0x0000
    finally:
        assoc.release()
    (job,) = _jobs(intake.spool)
    meta = pydicom.dcmread(intake.spool.root / job["path"], stop_before_pixels=True).file_meta
    assert (meta.SourceApplicationEntityTitle, meta.ReceivingApplicationEntityTitle,
            meta.SendingPresentationAddress) == ("CT1", "PACSGUARD", "dicom://127.0.0.1")
    with intake.spool._tx() as db:  # what a power cut right after the acknowledgement may do
        db.execute("DELETE FROM jobs")
    stats = intake.spool.recover(lambda source_type, path: DicomSource.orphan_facts(path))
    assert stats["orphans_adopted"] == 1 and stats["orphans_removed"] == 0
    (adopted,) = _jobs(intake.spool)
    assert adopted["path"] == job["path"] and adopted["state"] == "received"
    assert (adopted["calling_ae"], adopted["called_ae"], adopted["calling_host"]) == ("CT1", "PACSGUARD", "127.0.0.1")


def _file_in(ts: str, path: Path) -> Path:
    """A small CT object in transfer syntax ``ts`` (compressed ones carry placeholder
    frames: the receiver must store them without decoding anything)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, CTImageStorage

    ds = _sample_dataset()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    if UID(ts).is_compressed:
        ds.add_new(0x7FE00010, "OB", encapsulate([b"\xff\x4f\xff\x51 frame one", b"frame two!"]))
    ds.save_as(path, enforce_file_format=True)
    return path


def test_every_offered_transfer_syntax_is_stored_as_sent(node, tmp_path):
    from pacsguard.plugins.dicom.scp import transfer_syntaxes

    src, intake = node()
    files = [_file_in(ts, tmp_path / f"{i}.dcm") for i, ts in enumerate(transfer_syntaxes())]
    assoc = scu(src.port, files=files, verification=False)
    assert len(assoc.accepted_contexts) == len(files)
    assert [assoc.send_c_store(f).Status for f in files] == [0] * len(files)
    assoc.release()
    for job, f in zip(_jobs(intake.spool), files):
        stored = intake.spool.root / job["path"]
        ts = pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        assert _dataset_bytes(stored) == _dataset_bytes(f), ts.name


def test_rejections_say_why_and_log_no_patient_data(node):
    src, intake = node(host="0.0.0.0", allowed_callers=[{"ae_title": "CT1"}, {"ae_title": "REMOTE", "host": "127.0.0.2"}])
    with structlog.testing.capture_logs() as logs:
        assert _rejection(src.port, calling="INTRUDER") == (1, 1, 3)
        assert _rejection(src.port, calling="CT1", called="SOMEONE_ELSE") == (1, 1, 7)
        assert _rejection(src.port, calling="REMOTE") == (1, 1, 3)  # right AE, wrong host
        assoc = scu(src.port, calling="REMOTE", bind="127.0.0.2", files=[get_testdata_file("CT_small.dcm")])
        assert assoc.is_established
        assert assoc.send_c_store(get_testdata_file("CT_small.dcm")).Status == 0
        assoc.release()
    rejected = [e for e in logs if e["event"] == "association rejected"]
    assert [(e["calling_ae"], e["reason"]) for e in rejected] == [
        ("INTRUDER", "calling AE title not allowed"), ("CT1", "called AE title is not this node's"),
        ("REMOTE", "calling AE title not allowed from this host")]
    assert rejected[2]["calling_host"] == "127.0.0.1"
    assert "CompressedSamples^CT1" not in repr(logs) and "1.3.6.1.4.1.5962" not in repr(logs)
    assert [j["calling_host"] for j in _jobs(intake.spool)] == ["127.0.0.2"]


def test_any_caller_when_the_allow_list_is_empty(node):
    src, _ = node()
    assoc = scu(src.port, calling="WHOEVER")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


def test_spool_over_its_limit_refuses_with_a700_and_keeps_nothing(node):
    src, intake = node(max_size=1)
    files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    assoc = scu(src.port, files=files)
    statuses = [assoc.send_c_store(f).Status for f in files]
    assoc.release()
    assert statuses == [0x0000, 0xA700]
    assert len(_jobs(intake.spool)) == 1
    assert not _leftovers(intake.spool)


def test_write_failure_is_never_acknowledged(node):
    src, intake = node()
    ct = get_testdata_file("CT_small.dcm")
    incoming = intake.spool.incoming / "dicom.dicom"
    incoming.mkdir(parents=True, exist_ok=True)
    incoming.rmdir()
    incoming.write_text("a file where the spool expects its folder")  # every write there fails
    assoc = scu(src.port, files=[ct])
    with structlog.testing.capture_logs() as logs:
        status = assoc.send_c_store(ct).Status
    assert status & 0xF000 in (0xA000, 0xC000) and status != 0
    assert any(e["event"] == "C-STORE failed: cannot write to the spool" for e in logs)
    incoming.unlink()
    assert assoc.send_c_store(ct).Status == 0  # the next one works again
    assoc.release()
    assert len(_jobs(intake.spool)) == 1
    assert not _leftovers(intake.spool)


def test_a_stopping_service_refuses_stores_and_associations(node):
    src, intake = node()
    ct = get_testdata_file("CT_small.dcm")
    assoc = scu(src.port, files=[ct])
    intake.accepting = False
    assert assoc.send_c_store(ct).Status == 0xA700
    assoc.release()
    assert _rejection(src.port) == (2, 3, 1)
    assert _jobs(intake.spool) == []


def test_simultaneous_associations_are_limited(node):
    """Associations that may store take a slot; C-ECHO-only ones do not (monitoring's
    C-ECHO is answered when every slot is busy)."""
    src, _ = node(max_associations=1)
    first = scu(src.port, files=[get_testdata_file("CT_small.dcm")])
    assert first.is_established
    assert _rejection(src.port, abstract="1.2.840.10008.5.1.4.1.1.2") == (2, 3, 2)
    echo = scu(src.port)
    assert echo.is_established and echo.send_c_echo().Status == 0
    echo.release()
    first.release()


def test_stop_aborts_open_associations_and_frees_the_port(node):
    src, _ = node()
    assoc = scu(src.port)
    assert assoc.is_established
    port = src.port
    src.stop(grace=1)
    deadline = time.monotonic() + 5  # pynetdicom's reactor notices the A-ABORT on its next poll
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


# --- TLS -----------------------------------------------------------------------------------


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _leaf(d: Path, name: str, ca: str, san: str, *extra: str):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                                   "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


def make_pki(d: Path) -> Path:
    """A test CA with server and client certificates, and a rogue CA with its own client."""
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogue"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=test {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE", cwd=d)
    _leaf(d, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _leaf(d, "client", "ca", "DNS:client")
    _leaf(d, "intruder", "rogue", "DNS:intruder")
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client(pki, who="client"):
    return tlsmod.client_context(ca=pki / "ca.pem", cert=pki / f"{who}.pem", key=pki / f"{who}.key")


def test_tls_mutual_authentication(node, pki):
    src, intake = node(tls={"cert": str(pki / "server.pem"), "key": str(pki / "server.key"),
                            "ca": str(pki / "ca.pem"), "require_client_cert": True})
    ct = get_testdata_file("CT_small.dcm")
    assoc = scu(src.port, files=[ct], tls_args=(_client(pki), "localhost"))
    assert assoc.is_established
    assert assoc.send_c_store(ct).Status == 0
    assoc.release()
    with structlog.testing.capture_logs() as logs:
        assert not scu(src.port, tls_args=(_client(pki, "intruder"), "localhost")).is_established
        anonymous = tlsmod.client_context(ca=pki / "ca.pem")
        assert not scu(src.port, tls_args=(anonymous, "localhost")).is_established
        assert not scu(src.port).is_established  # plain TCP to the TLS port
    assert sum(e["event"].startswith("TLS handshake failed") for e in logs) == 3
    assert len(_jobs(intake.spool)) == 1


def _peer_cn(port, pki) -> str:
    assoc = scu(port, tls_args=(tlsmod.client_context(ca=pki / "ca.pem"), "localhost"))
    try:
        cert = assoc.dul.socket.socket.getpeercert()
        return dict(x[0] for x in cert["subject"])["commonName"]
    finally:
        assoc.release()


def test_renewed_certificates_are_used_without_restart(node, pki, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    for n in ("server.pem", "server.key"):
        (live / n).write_bytes((pki / n).read_bytes())
    src, _ = node(tls={"cert": str(live / "server.pem"), "key": str(live / "server.key")})
    assert _peer_cn(src.port, pki) == "server"
    _leaf(pki, "renewed", "ca", "DNS:localhost,IP:127.0.0.1")
    for n in ("pem", "key"):  # what a renewal job does: replace the files
        tmp = live / f"new.{n}"
        tmp.write_bytes((pki / f"renewed.{n}").read_bytes())
        os.replace(tmp, live / f"server.{n}")
    assert _peer_cn(src.port, pki) == "renewed"
    (live / "server.pem").write_text("half-written garbage")
    with structlog.testing.capture_logs() as logs:
        assert _peer_cn(src.port, pki) == "renewed"  # the last good certificate stays in use
    assert any("cannot be used" in e["event"] for e in logs)
    with pytest.raises(tlsmod.TlsError, match="server.pem"):
        src.reload_tls()


def test_encrypted_key_password_file_and_credentials(pki, tmp_path, monkeypatch):
    _openssl("pkey", "-in", "server.key", "-aes256", "-passout", "pass:s3cret", "-out", str(tmp_path / "enc.key"),
             cwd=pki)
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "bad").write_text("wrong\n")
    tlsmod.server_context(pki / "server.pem", tmp_path / "enc.key", key_password_file=tmp_path / "pw")
    with pytest.raises(tlsmod.TlsError, match="wrong key password"):
        tlsmod.server_context(pki / "server.pem", tmp_path / "enc.key", key_password_file=tmp_path / "bad")
    with pytest.raises(tlsmod.TlsError, match="key_password_file"):
        tlsmod.server_context(pki / "server.pem", tmp_path / "enc.key")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(tlsmod.TlsError, match="CREDENTIALS_DIRECTORY"):
        tlsmod.server_context(pki / "server.pem", Path("credential:tls.key"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    ctx = tlsmod.server_context(pki / "server.pem", Path("credential:enc.key"),
                                key_password_file=Path("credential:pw"), ca=pki / "ca.pem")
    assert ctx.minimum_version.name == "TLSv1_2"


def test_client_context_verifies_the_server(pki, node):
    src, _ = node(tls={"cert": str(pki / "server.pem"), "key": str(pki / "server.key")})
    rogue_trust = tlsmod.client_context(ca=pki / "rogue.pem")
    assert not scu(src.port, tls_args=(rogue_trust, "localhost")).is_established
    wrong_name = tlsmod.client_context(ca=pki / "ca.pem")
    assert not scu(src.port, tls_args=(wrong_name, "elsewhere.example")).is_established
    lenient = tlsmod.client_context(ca=pki / "ca.pem", check_hostname=False)
    assoc = scu(src.port, tls_args=(lenient, "elsewhere.example"))
    assert assoc.is_established
    assoc.release()
