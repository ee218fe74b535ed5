"""File scope: whole objects sealed as ``.pgenc``, through the pipeline, the spool and the
folder destination; every tamper case (truncation included) is refused with its reason
and leaves no plaintext behind."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import struct
import tracemalloc
import uuid
from types import MappingProxyType
from pathlib import Path

import pydicom
import pytest

from pacsguard.daemon.delivery import DestinationWorker
from pacsguard.daemon.errors import DeliveryError, QuarantineError
from pacsguard.daemon.item import Item, TransportFacts, header_path
from pacsguard.daemon.pipeline import Processor, Runtime
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.router import Route
from pacsguard.daemon.spool import Spool
from pacsguard.plugins.encryption import sealed
from pacsguard.plugins.encryption.stages import Encrypt
from pacsguard.plugins.setattrs import SetAttributes
from tests.plugins.encryption_corpus import ident, image, images
from tests.plugins.encryption_keys import TYPES, make_key, public_only

FACTS = TransportFacts(source="test", source_type="folder")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def seal_stage(*names: str) -> Encrypt:
    return Encrypt(Encrypt.Options.model_validate({"scope": "file", "recipients": list(names) or ["r"]}))


def seal_file(src: Path, dst: Path, key=None) -> Path:
    key = key or make_key("x25519")
    seal_stage().process(Item(1, src, FACTS, keys={"r": public_only(key)})).write(dst)
    return dst


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("path", images(), ids=ident)
def test_an_unchanged_object_is_sealed_byte_for_byte(path, tmp_path):
    out = seal_file(path, tmp_path / "x.pgenc")
    assert out.read_bytes().startswith(sealed.MAGIC) and sealed.is_sealed(out)
    # no plaintext in it: the file's magic and first elements (random ciphertext holds
    # b"DICM" alone by chance now and then, a 64-byte run of the original never)
    assert path.read_bytes()[128:192] not in out.read_bytes()
    assert pydicom.dcmread(header_path(out)).SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
    sealed.unseal_file(out, tmp_path / "back.dcm", [make_key("x25519")])
    assert sha(tmp_path / "back.dcm") == sha(path)


@pytest.mark.parametrize("kind", TYPES)
def test_every_recipient_type_opens_it(kind, tmp_path):
    keys = [make_key(k) for k in TYPES]
    item = Item(1, image("emri_small.dcm"), FACTS, keys={k.type: public_only(k) for k in keys})
    seal_stage(*TYPES).process(item).write(tmp_path / "x.pgenc")
    assert item.results["encrypt"]["file"]["key_ids"] == [k.key_id for k in keys]
    sealed.unseal_file(tmp_path / "x.pgenc", tmp_path / "back.dcm", [make_key(kind)])
    assert sha(tmp_path / "back.dcm") == sha(image("emri_small.dcm"))


def test_earlier_changes_are_sealed_and_later_ones_refused(tmp_path):
    item = Item(1, image("CT_small.dcm"), FACTS, keys={"r": public_only(make_key("x25519"))})
    SetAttributes(SetAttributes.Options.model_validate({"set": {"InstitutionName": "Sealed"}})).process(item)
    seal_stage().process(item)
    with pytest.raises(QuarantineError, match="sealed whole"):
        SetAttributes(SetAttributes.Options.model_validate({"set": {"InstitutionName": "x"}})).process(item)
    with pytest.raises(QuarantineError, match="already sealed"):
        seal_stage().process(item)
    item.write(tmp_path / "x.pgenc")
    sealed.unseal_file(tmp_path / "x.pgenc", tmp_path / "back.dcm", [make_key("x25519")])
    assert pydicom.dcmread(tmp_path / "back.dcm").InstitutionName == "Sealed"
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob("*.part"))


def test_big_objects_stream_in_bounded_memory(tmp_path):
    data = os.urandom(24 << 20)
    sealer = sealed.Sealer([public_only(make_key("pq-hybrid"))])
    src, enc, back = tmp_path / "plain", tmp_path / "x.pgenc", tmp_path / "back"
    src.write_bytes(data)
    tracemalloc.start()
    with open(src, "rb") as fin, open(enc, "wb") as fout:
        sealer(fin, fout)
    sealed.unseal_file(enc, back, [make_key("pq-hybrid")])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert back.read_bytes() == data
    assert peak < 8 * sealed.DEFAULT_CHUNK, peak  # a few chunks, not the 24 MiB
    with open(enc, "rb") as fh:
        head = fh.read(1 << 16)
    chunks = -(-len(data) // sealed.DEFAULT_CHUNK)
    assert enc.stat().st_size == _parts(head)[1] + len(data) + 16 * chunks


# --- through the pipeline, the spool and the folder destination -------------------------


def test_sealed_objects_reach_a_folder_destination_as_pgenc(tmp_path):
    from tests.daemon.test_delivery import folder_destination

    pm = get_plugin_manager(entry_points=False)
    spool = Spool(tmp_path / "spool")
    try:
        src = tmp_path / f"{uuid.uuid4().hex}.dcm"
        shutil.copyfile(image("MR_small.dcm"), src)
        job = spool.ingest_file(src, FACTS)
        route = Route("vault", [], stages=[seal_stage("archive")], to=["out"])
        keys = MappingProxyType({"archive": public_only(make_key("pq-hybrid"))})  # the key store's, per generation
        proc = Processor(spool, pm.hook, lambda: Runtime([route], keys=keys), workers=1)
        proc.process([job])

        d = spool.next_delivery("out")
        assert d.path.name == f"{job}.vault.pgenc" and sealed.is_sealed(d.path)
        assert header_path(d.path).is_file()
        assert sorted(p.name for p in spool.out.iterdir()) == [d.path.name, header_path(d.path).name]

        dest, dspec = folder_destination(pm, tmp_path / "outbound")
        DestinationWorker("out", dest, dspec, spool, pm.hook)._deliver(d)
        ds = pydicom.dcmread(image("MR_small.dcm"))
        target = tmp_path / "outbound" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.pgenc"
        assert target.read_bytes() == d.path.read_bytes()
        sealed.unseal_file(target, tmp_path / "back.dcm", [make_key("pq-hybrid")])
        assert sha(tmp_path / "back.dcm") == sha(image("MR_small.dcm"))

        assert spool.get_job(job).state == "done"
        spool.cleanup(retention=-1)
        assert list(spool.out.iterdir()) == []
    finally:
        spool.close()


def test_a_dicom_destination_refuses_a_sealed_object(tmp_path):
    from pacsguard.plugins.dicom.scu import DicomDestination

    enc = seal_file(image("CT_small.dcm"), tmp_path / "x.pgenc")
    dest = DicomDestination("pacs", DicomDestination.Options.model_validate(
        {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}))
    try:
        with pytest.raises(DeliveryError) as excinfo:
            dest.send(enc, pydicom.dcmread(header_path(enc)))
    finally:
        dest.close()
    assert excinfo.value.permanent and "route it to a folder destination" in excinfo.value.reason
    assert collect(get_plugin_manager(entry_points=False)).stages["encrypt"].cls is Encrypt


# --- tampering, truncation and wrong keys -----------------------------------------------


def _parts(data: bytes) -> tuple[dict, int]:
    length = struct.unpack(">I", data[9:13])[0]
    return json.loads(data[13:13 + length]), 13 + length


def _with_header(data: bytes, change) -> bytes:
    header, end = _parts(data)
    change(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    return data[:9] + struct.pack(">I", len(raw)) + raw + data[end:]


def _flip_b64(value: str, at: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[at] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def _flip(at):
    def change(data: bytes) -> bytes:
        out = bytearray(data)
        out[at(data)] ^= 1
        return bytes(out)
    return change


def _swap_chunks(data: bytes) -> bytes:
    _, end = _parts(data)
    step = 1000 + 16
    first, second = data[end:end + step], data[end + step:end + 2 * step]
    return data[:end] + second + first + data[end + 2 * step:]


def _cut_at_chunk(data: bytes) -> bytes:
    _, end = _parts(data)
    return data[:end + 3 * (1000 + 16)]


TAMPERING = {
    "ciphertext": (_flip(lambda d: _parts(d)[1] + 1500), sealed.CHANGED),
    "tag": (_flip(lambda d: _parts(d)[1] + 1000 + 3), sealed.CHANGED),
    "last-tag": (_flip(lambda d: len(d) - 1), sealed.CHANGED),
    "nonce": (lambda d: _with_header(d, lambda h: h.update(base_nonce=_flip_b64(h["base_nonce"], 5))),
              sealed.CHANGED),
    "chunk-size": (lambda d: _with_header(d, lambda h: h.update(chunk_size=1024)), sealed.CHANGED),
    "wrapped-key": (lambda d: _with_header(d, lambda h: h["recipients"][0].update(
        wrapped=_flip_b64(h["recipients"][0]["wrapped"], 40))), "does not open with that key"),
    "chunks-reordered": (_swap_chunks, sealed.CHANGED),
    "truncated-inside-a-chunk": (lambda d: d[:-700], sealed.CHANGED),
    "truncated-at-a-chunk-boundary": (_cut_at_chunk, "its final chunk is missing"),
    "truncated-early-in-a-chunk": (lambda d: d[:_parts(d)[1] + 4 * 1016 + 5], "ends inside chunk 4"),
    "truncated-after-the-header": (lambda d: d[:_parts(d)[1]], "no chunk after the header"),
    "truncated-inside-the-header": (lambda d: d[:40], "ends inside its header"),
    "header-not-json": (lambda d: d[:13] + b"x" + d[14:], "header is damaged"),
    "other-version": (lambda d: d[:8] + b"\x02" + d[9:], ".pgenc version 2 is not supported"),
    "not-sealed": (lambda d: image("CT_small.dcm").read_bytes(), sealed.NOT_SEALED),
    "empty": (lambda d: b"", sealed.NOT_SEALED),
}


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory) -> bytes:
    """CT_small sealed in 1000-byte chunks (about 40 of them)."""
    sealer = sealed.Sealer([public_only(make_key("x25519"))], chunk_size=1000)
    out = io.BytesIO()
    sealer(io.BytesIO(image("CT_small.dcm").read_bytes()), out)
    return out.getvalue()


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_is_refused_with_its_reason_and_leaves_nothing(case, small_chunks, tmp_path):
    change, reason = TAMPERING[case]
    bad = tmp_path / "bad.pgenc"
    bad.write_bytes(change(small_chunks))
    with pytest.raises(QuarantineError) as excinfo:
        sealed.unseal_file(bad, tmp_path / "out.dcm", [make_key("x25519")])
    assert reason in excinfo.value.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pgenc"]  # no plaintext, not even partial


def test_the_untampered_fixture_opens(small_chunks, tmp_path):
    (tmp_path / "ok.pgenc").write_bytes(small_chunks)
    sealed.unseal_file(tmp_path / "ok.pgenc", tmp_path / "out.dcm", [make_key("x25519")])
    assert (tmp_path / "out.dcm").read_bytes() == image("CT_small.dcm").read_bytes()


def test_a_wrong_key_names_the_key_ids(small_chunks, tmp_path):
    (tmp_path / "x.pgenc").write_bytes(small_chunks)
    other = make_key("rsa")
    with pytest.raises(QuarantineError) as excinfo:
        sealed.unseal_file(tmp_path / "x.pgenc", tmp_path / "out.dcm", [other])
    assert excinfo.value.reason == f"not encrypted for key ID {other.key_id} (recipients: {make_key('x25519').key_id})"
    assert not (tmp_path / "out.dcm").exists()
