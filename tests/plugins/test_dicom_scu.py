"""The DICOM destination against real peers: dcmtk storescp (plain, strict, refusing,
uncompressed-only, TLS) and a scripted pynetdicom SCP for response statuses."""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.multival import MultiValue
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from peers import Storescp, free_port, require, tool_env, wait_for
from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.errors import ConfigError, DeliveryError
from pacsguard.daemon.item import read_header
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.service import build_runtime
from pacsguard.plugins.dicom.scu import (
    DUPLICATE,
    PERMANENT,
    RETRY,
    SUCCESS,
    WARNING,
    DicomDestination,
    DicomDestinationOptions,
    classify_status,
    status_meaning,
)

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
# Compressed sources and their syntaxes (all decode losslessly to what pydicom decodes).
COMPRESSED = {
    "JPEG2000.dcm": JPEG2000,
    "MR_small_jpeg_ls_lossless.dcm": JPEGLSLossless,
    "MR_small_RLE.dcm": RLELossless,
    "SC_rgb_jpeg_gdcm.dcm": JPEGLosslessSV1,
}


def destination(port: int, aet: str = "STORESCP", **options) -> DicomDestination:
    return DicomDestination("pacs", DicomDestinationOptions(ae_title=aet, host="127.0.0.1", port=port, **options))


def send(dest: DicomDestination, path: Path) -> None:
    dest.send(path, read_header(path))


def variant(src: Path, folder: Path, **attrs) -> Path:
    """A copy of ``src`` with a new SOP Instance UID (and ``attrs`` changed)."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key, value in attrs.items():
        setattr(ds, key, value)
    if "SOPClassUID" in attrs:
        ds.file_meta.MediaStorageSOPClassUID = attrs["SOPClassUID"]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def received(scp: Storescp, sop_instance: str) -> pydicom.Dataset:
    """The object storescp stored for ``sop_instance`` (files are named after it)."""
    match = [p for p in scp.files() if p.name.endswith(sop_instance)]
    assert len(match) == 1, f"storescp holds {len(match)} files for the instance"
    return pydicom.dcmread(match[0])


def associations(scp: Storescp) -> int:
    return scp.log_path.read_text().count("Association Acknowledged")  # a bare TCP probe logs "Received"


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def scps(tmp_path):
    """Start storescp instances; all are stopped at the end."""
    started = []

    def start(name: str = "scp", **kw) -> Storescp:
        scp = Storescp(tmp_path / name, **kw).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture
def dests():
    made = []

    def make(*args, **kw) -> DicomDestination:
        d = destination(*args, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


# -- options -------------------------------------------------------------------------------


def test_options_defaults_units_and_validation(tmp_path):
    o = DicomDestinationOptions(ae_title=" PACS ", host="pacs.local", port=104,
                                timeouts={"connect": "500ms", "dimse": "2m"}, idle_timeout="1m",
                                transfer_syntax="ImplicitVRLittleEndian")
    assert o.ae_title == "PACS" and o.calling_ae == "PACSGUARD"
    assert (o.timeouts.connect, o.timeouts.acse, o.timeouts.dimse) == (0.5, 30.0, 120.0)
    assert o.idle_timeout == 60.0 and o.max_pdu == 16382 and o.tls is None
    assert o.preferred_syntaxes == (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
    assert DicomDestinationOptions(ae_title="A", host="h", port=1, transfer_syntax="1.2.840.10008.1.2.1"
                                   ).preferred_syntaxes[0] == ExplicitVRLittleEndian
    (tmp_path / "ca.pem").write_text("")
    tls = DicomDestinationOptions(ae_title="A", host="h", port=1, tls={"ca": tmp_path / "ca.pem"}).tls
    assert tls.ca.is_absolute() and tls.server_name is None and tls.min_version == "1.2"
    tls = DicomDestinationOptions(ae_title="A", host="h", port=1, tls={"cert": tmp_path / "ca.pem",
                                                                      "key": "credential:pacs-key"}).tls
    assert str(tls.key) == "credential:pacs-key"  # a systemd credential, resolved when used
    assert all(f.description for f in DicomDestinationOptions.model_fields.values())

    bad = [
        dict(ae_title="A" * 17), dict(ae_title="A\\B"), dict(ae_title=""), dict(calling_ae="Ä"),
        dict(port=0), dict(port=70000), dict(max_pdu=100), dict(timeouts={"dimse": "soon"}),
        dict(transfer_syntax=str(JPEG2000)), dict(transfer_syntax="Explicit"),
        dict(tls={"cert": "c.pem"}), dict(tls={"key_password_file": "p"}), dict(tls={"password": "x"}),
        dict(aet="X"),
    ]
    for change in bad:
        with pytest.raises(ValidationError):
            DicomDestinationOptions(**{"ae_title": "PACS", "host": "h", "port": 104, **change})


def test_config_reports_dicom_option_errors_with_their_place(tmp_path, pki):
    registry = collect(get_plugin_manager())

    def cfg(tls: str, extra: str = "") -> str:
        return textwrap.dedent(f"""\
            spool: {{path: {tmp_path}/spool}}
            destinations:
              pacs:
                type: dicom
                ae_title: PACS
                host: 127.0.0.1
                port: 104
                parallel: 2
                retry: {{max_attempts: 3}}
                tls: {tls}
            {extra}
            routes: [{{name: all, to: [pacs]}}]
            """)

    with pytest.raises(ConfigError) as err:
        load_config_text(cfg("{cert: client.pem}", "    colour: blue"), registry)
    errors = "\n".join(err.value.errors)
    assert "destinations.pacs.tls: give both cert and key" in errors
    assert "destinations.pacs: unknown key 'colour'" in errors

    with pytest.raises(ConfigError) as err:
        load_config_text(cfg(f"{{ca: {tmp_path}/nope.pem}}"), registry)
    assert f"destinations.pacs.tls: ca: file {tmp_path}/nope.pem does not exist" in str(err.value)

    (tmp_path / "wrong.pass").write_text("not-it\n")
    loaded = load_config_text(cfg(f"{{ca: {pki}/ca.pem, cert: {pki}/client.pem, key: {pki}/client.enc.key, "
                                  f"key_password_file: {tmp_path}/wrong.pass}}"), registry)
    assert loaded.config.destinations["pacs"].parallel == 2
    with pytest.raises(ConfigError) as err:
        build_runtime(loaded, registry)
    assert "destinations.pacs: cannot set up destination" in str(err.value)
    assert "wrong key password" in str(err.value)


def test_status_classification_and_meanings():
    table = {
        0x0000: SUCCESS,
        0x0001: WARNING, 0xB000: WARNING, 0xB006: WARNING, 0xB007: WARNING, 0x0107: WARNING, 0x0116: WARNING,
        0x0111: DUPLICATE,
        0xA700: RETRY, 0xA7FF: RETRY, 0x0110: RETRY, 0x0213: RETRY, 0x0124: RETRY, 0xFFFF: RETRY, 0xA800: RETRY,
        0x0122: PERMANENT, 0xA900: PERMANENT, 0xA9FF: PERMANENT, 0xC000: PERMANENT, 0xCFFF: PERMANENT,
        0x0117: PERMANENT, 0x0212: PERMANENT,
    }
    assert {code: classify_status(code) for code in table} == table
    assert status_meaning(0xA701) == "Refused: Out of Resources"
    assert status_meaning(0x0122) == "Refused: SOP Class Not Supported"
    assert status_meaning(0xC123) == "Cannot Understand"
    assert status_meaning(0x1234) == "unknown status"


# -- associations ----------------------------------------------------------------------------


def test_objects_share_one_association_and_it_is_released_on_close(scps, dests, tmp_path):
    scp = scps(args=("+xa", "-v"))
    dest = dests(scp.port)
    files = [variant(CT, tmp_path / "in") for _ in range(6)]
    for f in files:
        send(dest, f)
    assert dest.associations_opened == 1 and associations(scp) == 1
    assert len(scp.files()) == 6
    (link,) = dest._links.values()  # the sending socket does not wait for delayed ACKs
    assert link.assoc.channel.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    dest.close()
    wait_for(lambda: "Association Release" in scp.log_path.read_text(), 5, "the association to be released")


def test_context_set_grows_with_what_was_seen_then_stays(scps, dests):
    scp = scps(args=("+xa", "-v"))
    dest = dests(scp.port)
    j2k = Path(get_testdata_file("MR_small_jp2klossless.dcm"))
    for f in (CT, j2k, CT, MR, j2k, CT, MR):
        send(dest, f)
    # CT (explicit), then MR in JPEG 2000 (needs a new context), then MR explicit (already
    # proposed with the JPEG 2000 one): two associations in all.
    assert dest.associations_opened == 2 and associations(scp) == 2
    ds = received(scp, pydicom.dcmread(j2k, stop_before_pixels=True).SOPInstanceUID)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # MR_small.dcm (same UID) came last


def test_proposals_stay_within_128_presentation_contexts(scps, dests, tmp_path):
    from structlog.testing import capture_logs

    scp = scps(args=("+xa",))
    dest = dests(scp.port)
    files = [variant(CT, tmp_path / "in", SOPClassUID=f"1.2.826.0.1.3680043.9.9999.{i}") for i in range(66)]
    with capture_logs() as logs:
        for f in files + [CT]:  # 67 SOP classes x 2 uncompressed syntaxes = 134 contexts wanted
            send(dest, f)
    proposed = [e["proposed"] for e in logs if e["event"] == "association opened"]
    assert len(proposed) == 67 and proposed[:3] == [2, 4, 6] and max(proposed) == 128
    assert len(scp.files()) == 67


def test_reassociates_after_the_peer_restarts(scps, dests, tmp_path):
    port = free_port()
    first = scps("a", port=port, args=("+xa", "-v"))
    dest = dests(port)
    send(dest, variant(CT, tmp_path / "in"))
    send(dest, variant(CT, tmp_path / "in"))
    first.stop()
    second = scps("b", port=port, args=("+xa", "-v"))
    send(dest, variant(CT, tmp_path / "in"))  # the dead association is noticed and replaced
    assert dest.associations_opened == 2 and len(second.files()) == 1


def test_idle_association_is_released(scps, dests, tmp_path):
    scp = scps(args=("+xa", "-v"))
    dest = dests(scp.port, idle_timeout="300ms")
    send(dest, variant(CT, tmp_path / "in"))
    wait_for(lambda: "Association Release" in scp.log_path.read_text(), 5, "the idle association's release")
    send(dest, variant(CT, tmp_path / "in"))
    assert dest.associations_opened == 2


def test_parallel_senders_never_share_an_association(scps, dests, tmp_path):
    scp = scps(args=("+xa", "--fork"))
    dest = dests(scp.port)
    files = [variant(CT, tmp_path / "in") for _ in range(24)]
    errors = []

    def worker(chunk):
        try:
            for f in chunk:
                send(dest, f)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(files[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert dest.associations_opened == 4  # one per thread, each kept for all its objects
    wait_for(lambda: len(scp.files()) == 24, 10, "24 files at storescp")


# -- failures --------------------------------------------------------------------------------


def test_refused_association_and_closed_port_are_retryable(scps, dests):
    refusing = scps(args=("+xa", "--refuse"))
    with pytest.raises(DeliveryError) as err:
        send(dests(refusing.port), CT)
    # pynetdicom sometimes sees the connection close before the A-ASSOCIATE-RJ (~1 in 60)
    assert not err.value.permanent
    assert "association rejected by STORESCP" in err.value.reason or "during negotiation" in err.value.reason

    port = free_port()
    with pytest.raises(DeliveryError) as err:
        send(dests(port), CT)
    assert not err.value.permanent and "connection refused" in err.value.reason


def test_unsupported_sop_class_is_permanent(tmp_path, dests):
    port = free_port()
    log = open(tmp_path / "strict.log", "w")
    proc = subprocess.Popen([require("storescp"), "--aetitle", "STRICT", "-od", str(tmp_path), "+xa", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=tool_env())
    try:
        wait_for(lambda: listening(port), 15, "strict storescp")
        dest = dests(port, aet="STRICT")
        private = variant(CT, tmp_path / "in", SOPClassUID="1.2.826.0.1.3680043.9.9999.1")
        with pytest.raises(DeliveryError) as err:
            send(dest, private)
        assert err.value.permanent and "does not support 1.2.826.0.1.3680043.9.9999.1" in err.value.reason
        send(dest, CT)  # the same peer takes a standard class
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_out_of_resources_is_retryable_and_a_dimse_timeout_too(scps, dests, tmp_path):
    full = scps("full", args=("+xa",))
    shutil.rmtree(full.folder)  # storescp cannot write: 0xA700
    with pytest.raises(DeliveryError) as err:
        send(dests(full.port), CT)
    assert not err.value.permanent and "0xA700 (Refused: Out of Resources)" in err.value.reason

    slow = scps("slow", args=("+xa", "--sleep-during", "3"))
    dest = dests(slow.port, timeouts={"dimse": "500ms"})
    started = time.monotonic()
    with pytest.raises(DeliveryError) as err:
        send(dest, CT)
    assert not err.value.permanent and "no C-STORE response" in err.value.reason
    assert time.monotonic() - started < 2.5  # no second attempt after a timeout


def test_response_statuses_from_a_scripted_peer(dests, tmp_path):
    """pynetdicom as the peer, answering each object with the status we give it."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

    answers: dict[str, int] = {}
    ae = AE(ae_title="SCRIPTED")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda event: answers[event.request.AffectedSOPInstanceUID])])
    try:
        dest = dests(port, aet="SCRIPTED")
        for code, delivered, permanent in [
            (0x0000, True, None), (0xB000, True, None), (0xB007, True, None), (0x0111, True, None),
            (0xA702, False, False), (0x0124, False, False), (0x0110, False, False),
            (0xA900, False, True), (0xC001, False, True), (0x0122, False, True),
        ]:
            f = variant(CT, tmp_path / "in")
            answers[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID] = code
            if delivered:
                send(dest, f)
                continue
            with pytest.raises(DeliveryError) as err:
                send(dest, f)
            assert err.value.permanent is permanent, hex(code)
            assert f"0x{code:04X} ({status_meaning(code)})" in err.value.reason
        assert dest.associations_opened == 1  # failure statuses do not break the association
    finally:
        server.shutdown()


# -- transfer syntaxes -------------------------------------------------------------------------


def test_compressed_objects_are_decompressed_for_an_uncompressed_only_peer(scps, dests):
    scp = scps(args=("+x=",))  # refuses every compressed syntax
    dest = dests(scp.port)
    for name, syntax in COMPRESSED.items():
        src = pydicom.dcmread(get_testdata_file(name))
        assert src.file_meta.TransferSyntaxUID == syntax
        send(dest, Path(src.filename))
        got = received(scp, src.SOPInstanceUID)
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert got.SOPInstanceUID == src.SOPInstanceUID and got.PatientName == src.PatientName
        assert np.array_equal(got.pixel_array, src.pixel_array), name
        for p in scp.files():
            p.unlink()  # the MR_small variants share one SOP Instance UID


def test_a_codestream_that_lies_about_its_size_is_refused_before_decompressing(scps, dests, tmp_path):
    """A peer that accepts only uncompressed data makes the destination decode; a JPEG 2000
    header claiming 60000x60000 pixels is refused at once, the object alone, with the reason."""
    import struct
    import time

    scp = scps(args=("+x=",))
    dest = dests(scp.port)
    data = bytearray(Path(get_testdata_file("J2K_pixelrep_mismatch.dcm")).read_bytes())
    at = data.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", data, at + 8, 60000, 60000)
    liar = tmp_path / "liar.dcm"
    liar.write_bytes(bytes(data))
    t0 = time.process_time()
    with pytest.raises(DeliveryError) as exc:
        send(dest, liar)
    assert time.process_time() - t0 < 2.0
    assert exc.value.permanent
    assert "declares 60000x60000 pixels with 1 component(s), but the data set says Columns 512, Rows 512" in \
        exc.value.reason
    send(dest, CT)  # the destination goes on
    assert received(scp, pydicom.dcmread(CT).SOPInstanceUID)


def test_compressed_objects_go_as_they_are_when_accepted(scps, dests):
    scp = scps(args=("+xa",))
    dest = dests(scp.port)
    for name, syntax in COMPRESSED.items():
        src = pydicom.dcmread(get_testdata_file(name))
        send(dest, Path(src.filename))
        got = received(scp, src.SOPInstanceUID)
        assert got.file_meta.TransferSyntaxUID == syntax, name
        assert got.PixelData == src.PixelData, name
        for p in scp.files():
            p.unlink()


def test_uncompressed_encodings_are_converted_for_an_implicit_only_peer(scps, dests):
    scp = scps(args=("+xi",))
    dest = dests(scp.port)
    for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtplan.dcm"):
        src = pydicom.dcmread(get_testdata_file(name))
        send(dest, Path(src.filename))
        got = received(scp, src.SOPInstanceUID)
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian, name
        if "PixelData" in src:
            assert np.array_equal(got.pixel_array, src.pixel_array), name
        for p in scp.files():
            p.unlink()


def test_transfer_syntax_preference_is_what_conversions_produce(scps, dests):
    scp = scps(args=("+x=",))  # accepts both explicit and implicit, prefers explicit
    dest = dests(scp.port, transfer_syntax="ImplicitVRLittleEndian")
    src = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    send(dest, Path(src.filename))
    got = received(scp, src.SOPInstanceUID)
    assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, src.pixel_array)
    send(dest, CT)  # an explicit object the peer accepts as it is is not converted
    assert received(scp, pydicom.dcmread(CT).SOPInstanceUID).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with a server and a client certificate, and a second CA with its own server."""
    d = tmp_path_factory.mktemp("pki")
    openssl = require("openssl")

    def run(*args):
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    def ca(name):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}")

    def leaf(name, issuer, san):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")

    ca("ca")
    ca("otherca")
    leaf("server", "ca", "DNS:localhost,IP:127.0.0.1")
    leaf("rogue", "otherca", "DNS:localhost,IP:127.0.0.1")
    leaf("client", "ca", "DNS:pacsguard")
    (d / "client.pass").write_text("s3cret\n")
    run("pkey", "-in", "client.key", "-aes256", "-passout", "pass:s3cret", "-out", "client.enc.key")
    return d


def test_tls_verifies_the_server_and_presents_a_client_certificate(scps, dests, pki):
    server = ("+tls", str(pki / "server.key"), str(pki / "server.pem"))
    plain = scps("tls", args=("+xa", *server, "-ic"))
    send(dests(plain.port, tls={"ca": pki / "ca.pem"}), CT)
    assert len(plain.files()) == 1

    mutual = scps("mtls", args=("+xa", *server, "-rc", "+cf", str(pki / "ca.pem")))
    client = dests(mutual.port, tls={"ca": pki / "ca.pem", "cert": pki / "client.pem",
                                     "key": pki / "client.enc.key", "key_password_file": pki / "client.pass"})
    send(client, CT)
    assert len(mutual.files()) == 1
    client.close()  # storescp serves one association at a time
    with pytest.raises(DeliveryError) as err:  # no client certificate: the server hangs up
        send(dests(mutual.port, tls={"ca": pki / "ca.pem"}), CT)
    assert not err.value.permanent and "TLS" in err.value.reason


def test_tls_refuses_a_server_certificate_from_another_ca(scps, dests, pki):
    rogue = scps("rogue", args=("+xa", "+tls", str(pki / "rogue.key"), str(pki / "rogue.pem"), "-ic"))
    with pytest.raises(DeliveryError) as err:
        send(dests(rogue.port, tls={"ca": pki / "ca.pem"}), CT)
    # Retryable: it is the destination's set-up, not the object, that is wrong. Objects
    # wait in the queue (in order) until the certificates are fixed, then all flow.
    assert not err.value.permanent
    assert "certificate" in err.value.reason and "not accepted" in err.value.reason
    assert rogue.files() == []

    with pytest.raises(DeliveryError) as err:  # right CA, wrong name
        send(dests(rogue.port, tls={"ca": pki / "otherca.pem", "server_name": "pacs.example"}), CT)
    assert "certificate" in err.value.reason


def test_echo(scps, dests):
    scp = scps(args=("+xa",))
    timings = dests(scp.port).echo()
    assert 0 < timings["total_s"] < 5
    with pytest.raises(DeliveryError) as err:
        dests(free_port()).echo()
    assert "connection refused" in err.value.reason


# -- invalid UIDs ----------------------------------------------------------------------------

CT_CLASS, MR_CLASS = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


def patched(path: Path, old: bytes, new: bytes) -> Path:
    """``path`` with the bytes ``old`` replaced by ``new`` (as long) wherever they occur."""
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new))
    return path


def non_ascii(path: Path, uid: str) -> Path:
    """``path`` where ``uid`` (of odd length) has a non-ASCII byte instead of its NUL padding."""
    return patched(path, uid.encode() + b"\0", uid.encode() + b"\xe9")


def too_long_instance(folder: Path) -> Path:
    with warnings.catch_warnings():  # pydicom warns about the invalid value it writes
        warnings.simplefilter("ignore")
        return variant(CT, folder, SOPInstanceUID="1.2.826.0.1.3680043.9.9999." + "1" * 40)


def remembered(dest: DicomDestination) -> dict:
    return {sop: list(syntaxes) for sop, syntaxes in dest._seen.items()}


def test_uid_check_names_what_is_wrong():
    from pacsguard.plugins.dicom.scu import uid_problem

    for ok in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1\0", "1.2.3 ", "0", "1." + "2" * 62,
               "1.2.0123"):  # leading zeros: refused by PS3.5, yet found in real archives and taken by peers
        assert uid_problem(ok) is None and uid_problem(ok, strict=False) is None, ok
    for bad, why in (("1.2.3a", "a character other than digits and dots"), ("1..2", "an empty component"),
                     (" 1.2.3", "a character other than digits and dots"), ("1.2.", "an empty component")):
        assert uid_problem(bad) == why, bad
        assert uid_problem(bad, strict=False) is None, bad  # a SOP Instance UID: the peer judges
    for bad, why in (("1.2.3\xe9", "non-ASCII character"), ("1.2.3\udcff", "non-ASCII character"),
                     ("1." + "2" * 63, "longer than 64 characters"), ("", "empty"), ("\0", "empty"),
                     (MultiValue(str, ["1.2", "1.3"]), "more than one value")):
        assert uid_problem(bad) == uid_problem(bad, strict=False) == why, bad


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")  # pydicom reading them
def test_an_invalid_uid_fails_that_object_alone(scps, dests, tmp_path):
    scp = scps(args=("+xa",))
    dest = dests(scp.port)
    good = [variant(CT, tmp_path / "in") for _ in range(3)]
    send(dest, good[0])  # an association is open: the bad objects must leave it alone
    bad = {
        "SOP Class UID is not a valid UID (non-ASCII character)": non_ascii(variant(CT, tmp_path / "bad"), CT_CLASS),
        "Transfer Syntax UID is not a valid UID (non-ASCII character)":
            non_ascii(variant(CT, tmp_path / "bad"), ExplicitVRLittleEndian),
        "SOP Instance UID is not a valid UID (longer than 64 characters)": too_long_instance(tmp_path / "bad"),
    }
    for reason, path in bad.items():
        with pytest.raises(DeliveryError) as err:
            send(dest, path)
        assert err.value.permanent and err.value.reason == reason  # no UID value in the reason
        assert remembered(dest) == {CT_CLASS: []}

    for f in good[1:] + [MR]:
        send(dest, f)
    assert len(scp.files()) == 4
    assert dest.associations_opened == 2  # CT; then CT and MR (none for the bad objects)
    assert remembered(dest) == {CT_CLASS: [], MR_CLASS: []}
    (link,) = dest._links.values()
    assert {sop for sop, _ in link.proposed} == set(link.accepted) == {CT_CLASS, MR_CLASS}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uids_peers_take_are_accepted_though_not_strictly_valid(scps, dests, tmp_path):
    scp = scps(args=("+xa",))
    dest = dests(scp.port)
    leading_zero = variant(CT, tmp_path / "in", SOPInstanceUID="1.2.826.0.1.3680043.9.9999.0123")
    hex_instance = variant(CT, tmp_path / "in", SOPInstanceUID="dccc9599087131742838cc1162a630fea87b")
    space_padded = patched(variant(CT, tmp_path / "in"), CT_CLASS.encode() + b"\0", CT_CLASS.encode() + b" ")
    for f in (leading_zero, hex_instance, space_padded):
        send(dest, f)
    assert len(scp.files()) == 3
    assert remembered(dest) == {CT_CLASS: []}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_proposal_that_cannot_be_encoded_fails_that_object_alone(scps, dests, tmp_path, monkeypatch):
    """Defence in depth: a value the UID check lets through, yet the A-ASSOCIATE-RQ cannot carry."""
    from pacsguard.plugins.dicom import scu

    monkeypatch.setattr(scu, "uid_problem", lambda value, **kw: None)
    scp = scps(args=("+xa",))
    dest = dests(scp.port)
    send(dest, variant(CT, tmp_path / "in"))
    with pytest.raises(DeliveryError) as err:
        send(dest, non_ascii(variant(CT, tmp_path / "bad"), CT_CLASS))
    assert err.value.permanent and "cannot propose" in err.value.reason
    assert "\xe9" not in err.value.reason
    assert remembered(dest) == {CT_CLASS: []}
    send(dest, variant(CT, tmp_path / "in"))
    send(dest, MR)
    assert len(scp.files()) == 3
    assert dest.associations_opened == 2  # the open association survived the bad object
