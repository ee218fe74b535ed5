"""End to end: the real service receives over DICOM from dcmtk and pynetdicom peers,
acknowledges only what is durable, and delivers it unchanged to a folder destination."""

from __future__ import annotations

import subprocess
import threading
import warnings
from pathlib import Path

import pydicom
import pytest
from e2e_util import PATIENT_ID, PATIENT_NAME, local_bundled_images, write_ct_series
from peers import Pacsguard, echoscu, free_port, storescu, wait_for
from pydicom.data import get_testdata_file

# odd bundled samples make pydicom warn (invalid UIDs, VR guesses) when the tests read them
pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::UserWarning")]

# storescu's proposal flags for the transfer syntaxes it can name
PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.1.99": "-xd",
}
COMPRESSED = ["JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"]

# Elements the sender (dcmtk) itself drops or recomputes when it encodes a data set for the
# network: group lengths (retired, recomputed) and the trailing padding (not content).
SENDER_REWRITES = {0xFFFCFFFC}


def config(port: int, *, node_extra: str = "", spool_extra: str = "", routes: str | None = None,
           out_extra: str = "", dests_extra: str = "") -> str:
    routes = routes or "  - {name: pass, to: [out]}\n"
    return (f"node:\n  ae_title: PACSGUARD\n  host: 0.0.0.0\n  port: {port}\n{node_extra}"
            f"spool:\n  path: spool\n{spool_extra}"
            f"destinations:\n  out: {{type: folder, path: out{out_extra}}}\n  m1: {{type: folder, path: m1}}\n"
            f"{dests_extra}"
            f"routes:\n{routes}"
            "metrics: {enabled: false}\nlogging: {format: json}\n")


def _dcmtk_can_send(path: Path) -> bool:
    out = subprocess.run(["dcmdump", "-q", "+P", "0008,0016", "+P", "0008,0018", str(path)],
                         capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.count(") UI ") == 2


def storescu_profile(path: Path, files: list[Path]) -> Path:
    """A storescu --config-file profile "Exact": one presentation context per (SOP class,
    transfer syntax) of ``files``, so each file goes out in its own transfer syntax."""
    names: dict[str, str] = {}
    contexts: list[str] = []
    for f in files:
        meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        name = names.setdefault(str(meta.TransferSyntaxUID), f"TS{len(names) + 1}")
        line = f"{meta.MediaStorageSOPClassUID}\\{name}"
        if line not in contexts:
            contexts.append(line)
    assert len(contexts) <= 128
    lines = ["[[TransferSyntaxes]]"]
    for ts, name in names.items():
        lines += [f"[{name}]", f"TransferSyntax1 = {ts}"]
    lines += ["", "[[PresentationContexts]]", "[Exact]"]
    lines += [f"PresentationContext{i + 1} = {c}" for i, c in enumerate(contexts)]
    lines += ["", "[[Profiles]]", "[Exact]", "PresentationContexts = Exact", ""]
    path.write_text("\n".join(lines))
    return path


def delivered(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> delivered file (the folder destination names files after it)."""
    return {p.stem: p for p in folder.rglob("*.dcm")} if folder.exists() else {}


def _same_elements(sent, got, where=""):
    for elem in sent:
        if elem.tag.element == 0 or elem.tag in SENDER_REWRITES:
            continue
        assert elem.tag in got, f"{where}{elem.tag} missing"
        other = got[elem.tag]
        if elem.VR == "SQ":
            assert len(elem.value) == len(other.value), f"{where}{elem.tag}"
            for i, (a, b) in enumerate(zip(elem.value, other.value)):
                _same_elements(a, b, f"{where}{elem.keyword}[{i}].")
        else:
            assert elem.value == other.value, f"{where}{elem.tag} {elem.keyword} differs"
    extra = [e.tag for e in got if e.tag not in sent and e.tag.element != 0 and e.tag not in SENDER_REWRITES]
    assert not extra, f"{where}elements added: {extra}"


def assert_same_object(sent: Path, got: Path, calling_ae: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = pydicom.dcmread(sent), pydicom.dcmread(got)
    assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID, sent.name
    # File Meta names what the C-STORE request carried: the data set's own UIDs (a few
    # bundled files have File Meta that disagrees with their data set)
    assert b.file_meta.MediaStorageSOPClassUID == a.SOPClassUID, sent.name
    assert b.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID, sent.name
    # the receiver's identity in File Meta: justified differences
    assert b.file_meta.SourceApplicationEntityTitle == calling_ae
    assert b.file_meta.ImplementationClassUID != pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    _same_elements(a, b, f"{sent.name}: ")
    if "PixelData" in a:
        assert a.PixelData == b.PixelData, f"{sent.name}: pixel data bytes differ"


def job_count(pg: Pacsguard) -> int:
    return sum(pg.status()["jobs"].values())


def part_files(pg: Pacsguard) -> list[Path]:
    return list((pg.workdir / "spool" / "incoming").rglob("*.part"))


# --- one service for the receiving, access and routing checks --------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    work = tmp_path_factory.mktemp("node")
    port = free_port()
    node_extra = ("  allowed_callers:\n    - {ae_title: STORESCU}\n    - {ae_title: ECHOSCU}\n"
                  "    - {ae_title: MODALITY1}\n    - {ae_title: REMOTE, host: 127.0.0.2}\n")
    routes = ("  - {name: modality1, match: {calling_ae: MODALITY1}, to: [m1], final: true}\n"
              "  - {name: pass, to: [out]}\n")
    pg = Pacsguard(work, config(port, node_extra=node_extra, routes=routes))
    with pg:
        pg.port = port
        yield pg
    assert_no_phi(pg)


def assert_no_phi(pg: Pacsguard) -> None:
    text = pg.log_text()
    for marker in (PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID, "PID-0001"):
        assert marker not in text, f"patient data {marker!r} in the service log"


def send_as_is(port: int, files: list[Path], calling: str) -> list[int]:
    """C-STORE each file's bytes unchanged with a pynetdicom requestor; the statuses."""
    from pynetdicom import AE

    from peers import configure_pynetdicom as configure

    configure()  # send files as they are, without decoding them
    ae = AE(ae_title=calling)
    for f in files:
        meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(f).Status for f in files]
    finally:
        assoc.release()


def test_bundled_and_ct_images_arrive_unchanged(node, tmp_path):
    bundled = local_bundled_images()
    by_dcmtk = [p for p in bundled if _dcmtk_can_send(p)] + write_ct_series(tmp_path / "ct", 4)
    others = [p for p in bundled if p not in by_dcmtk]  # files storescu refuses to read
    assert len(by_dcmtk) >= 50 and len(others) <= 3
    profile = storescu_profile(tmp_path / "exact.cfg", by_dcmtk)
    out = storescu(node.port, by_dcmtk, calling="STORESCU", args=("-xf", str(profile), "Exact"))
    assert out.returncode == 0, out.stderr + out.stdout
    assert send_as_is(node.port, others, "STORESCU") == [0] * len(others)
    want = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in by_dcmtk + others}
    got = wait_for(lambda: (d := delivered(node.workdir / "out")).keys() >= want.keys() and d, 60,
                   "every image in the folder destination")
    for uid, sent in want.items():
        assert_same_object(sent, got[uid], "STORESCU")


def test_compressed_images_keep_their_transfer_syntax_and_route_by_calling_ae(node):
    m1 = node.workdir / "m1"
    for name in COMPRESSED:
        f = Path(get_testdata_file(name))
        meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        flag = PROPOSE[str(meta.TransferSyntaxUID)]
        out = storescu(node.port, [f], calling="MODALITY1", args=(flag,))
        assert out.returncode == 0, out.stderr + out.stdout
        uid = str(meta.MediaStorageSOPInstanceUID)

        def arrived():  # several samples share one SOP Instance UID: wait for this one's syntax
            p = delivered(m1).get(uid)
            ok = p and pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == meta.TransferSyntaxUID
            return p if ok else None

        assert_same_object(f, wait_for(arrived, 30, f"{name} in m1"), "MODALITY1")
    # the calling_ae route is final: nothing MODALITY1 sent went through the pass route
    for p in delivered(node.workdir / "out").values():
        assert pydicom.dcmread(p, stop_before_pixels=True).file_meta.SourceApplicationEntityTitle != "MODALITY1"


def test_echo_allowed_and_unknown_callers_refused(node, tmp_path):
    before = job_count(node)
    assert echoscu(node.port, calling="ECHOSCU").returncode == 0
    refused = echoscu(node.port, calling="UNKNOWN")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    ct = write_ct_series(tmp_path, 1, size=64)
    assert storescu(node.port, ct, calling="UNKNOWN").returncode != 0
    wrong_called = storescu(node.port, ct, calling="STORESCU", called="NOT_US")
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr
    # REMOTE is allowed from 127.0.0.2 only
    assert echoscu(node.port, calling="REMOTE").returncode != 0
    assert storescu(node.port, ct, calling="REMOTE").returncode != 0
    assert job_count(node) == before
    log = node.log_text()
    assert '"reason": "calling AE title not allowed from this host"' in log
    assert PATIENT_NAME not in log and "PID-0001" not in log


def test_allowed_caller_bound_to_its_host(node, tmp_path):
    """dcmtk cannot pick its source address: a pynetdicom peer connects from 127.0.0.2."""
    from pynetdicom import AE

    from peers import configure_pynetdicom as configure

    configure()
    (ct,) = write_ct_series(tmp_path, 1, size=64, seed=7)
    ae = AE(ae_title="REMOTE")
    ae.add_requested_context(pydicom.uid.CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PACSGUARD", bind_address=("127.0.0.2", 0))
    assert assoc.is_established
    assert assoc.send_c_store(ct).Status == 0
    assoc.release()
    uid = str(pydicom.dcmread(ct).SOPInstanceUID)
    got = wait_for(lambda: delivered(node.workdir / "out").get(uid), 30, "the image from 127.0.0.2")
    assert_same_object(ct, got, "REMOTE")


# --- limits, TLS, crash --------------------------------------------------------------------------


def test_spool_over_its_limit_answers_a700_and_keeps_nothing_half_stored(tmp_path, service):
    port = free_port()
    files = write_ct_series(tmp_path / "ct", 5)  # ~0.5 MB each: two fit under 1 MiB
    # Undelivered work fills the spool (delivered objects would be evicted to make room):
    # every object also goes to a DICOM node that is down, so none is ever done.
    down = f"  down: {{type: dicom, ae_title: DOWN, host: 127.0.0.1, port: {free_port()}}}\n"
    with service(config(port, spool_extra="  max_size: 1MiB\n", dests_extra=down,
                        routes="  - {name: pass, to: [out, down]}\n")) as pg:
        out = storescu(port, files, calling="STORESCU", args=("-v", "-nh"))  # -nh: go on after a refusal
        text = out.stdout + out.stderr
        assert text.count("Received Store Response (Success)") == 2, text
        assert text.count("Received Store Response (Refused: OutOfResources)") == 3, text  # 0xA700
        halted = storescu(port, files[:1], calling="STORESCU")
        assert halted.returncode != 0  # without -nh, storescu reports the refusal in its exit code
        assert job_count(pg) == 2
        assert not part_files(pg)
        wait_for(lambda: len(delivered(pg.workdir / "out")) == 2, 30, "the two accepted images")
        assert pg.log_text().count('"C-STORE refused: spool over its size limit') == 1  # once per spell
    assert not part_files(pg)


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """A CA with server and client certificates, and a rogue CA with a client of its own."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    for ca in ("ca", "rogue"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=test {ca}", "-addext", "basicConstraints=critical,CA:TRUE", cwd=d)
    for name, ca, san in (("server", "ca", "DNS:localhost,IP:127.0.0.1"), ("client", "ca", "DNS:client"),
                          ("intruder", "rogue", "DNS:intruder")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_tls_both_ways(tmp_path, service):
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    tls = (f"  tls:\n    cert: {pki / 'server.pem'}\n    key: {pki / 'server.key'}\n"
           f"    ca: {pki / 'ca.pem'}\n    require_client_cert: true\n")
    ct = write_ct_series(tmp_path / "ct", 3, size=64)
    with service(config(port, node_extra=tls)) as pg:
        def send(f, *args):
            return storescu(port, [f], calling="STORESCU", args=args)

        ok = send(ct[0], "+tls", str(pki / "client.key"), str(pki / "client.pem"), "-pw", "+cf", str(pki / "ca.pem"))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        intruder = send(ct[1], "+tls", str(pki / "intruder.key"), str(pki / "intruder.pem"), "-pw",
                        "+cf", str(pki / "ca.pem"))
        assert intruder.returncode != 0
        assert send(ct[2]).returncode != 0  # plain TCP to the TLS port
        uid = str(pydicom.dcmread(ct[0]).SOPInstanceUID)
        got = wait_for(lambda: delivered(pg.workdir / "out").get(uid), 30, "the image sent over TLS")
        assert_same_object(ct[0], got, "STORESCU")
        assert job_count(pg) == 1
        assert pg.log_text().count('"TLS handshake failed: connection refused"') == 2
        assert [x for x in pg.log_lines() if x.get("level") in ("error", "critical")] == []


def test_kill_9_during_a_burst_loses_nothing_acknowledged(tmp_path, service, immutable):
    """Every image the sender got Success for is delivered after kill -9 and a restart.

    The destination folder is immutable until the restart, so every acknowledged image is
    still only in the spool (received, routed or pending) when the service is killed."""
    from pynetdicom import AE

    from peers import configure_pynetdicom as configure

    configure()
    files = write_ct_series(tmp_path / "ct", 150)
    uid_of = {f.stem: str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    port = free_port()
    pg = service(config(port, out_extra=", retry: {initial: 200ms, max_delay: 500ms}"))
    out = pg.workdir / "out"
    out.mkdir(parents=True)
    immutable(out)
    pg.start()
    acked: list[str] = []
    done = threading.Event()

    def burst():  # each image on its own C-STORE; record exactly which got Success
        ae = AE(ae_title="MODALITY1")
        ae.dimse_timeout = 2  # the peer is killed mid-burst: do not wait long for its answer
        ae.add_requested_context(pydicom.uid.CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSGUARD")
        try:
            for f in files:
                if not assoc.is_established:
                    break
                rsp = assoc.send_c_store(f)
                if rsp and rsp.get("Status") == 0x0000:
                    acked.append(f.stem)
        finally:
            if assoc.is_established:
                assoc.release()
            done.set()

    sender = threading.Thread(target=burst, daemon=True)
    sender.start()
    wait_for(lambda: len(acked) >= 40 or done.is_set(), 60, "40 acknowledged images")
    pg.kill()
    sender.join(30)
    assert 40 <= len(acked) < len(files), "the burst must be cut by the kill"
    assert not delivered(out)
    immutable(out, False)
    pg.start()
    want = {uid_of[s] for s in acked}
    got = wait_for(lambda: (d := delivered(out)).keys() >= want and d, 60,
                   f"the {len(want)} acknowledged images after the restart")
    assert not part_files(pg)
    for stem in acked[-3:]:  # the last acknowledged ones were the most at risk
        sent = next(f for f in files if f.stem == stem)
        assert_same_object(sent, got[uid_of[stem]], "MODALITY1")
