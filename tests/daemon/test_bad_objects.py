"""Objects that break the parser in the ways a fuzz sweep found: each one is quarantined
alone, with a reason an administrator can read, and never holds up its neighbours.

Drives ``Processor.process`` and the worker loop with a real spool and real plugin manager.
"""

from __future__ import annotations

import resource
import struct
import time
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacsguard.daemon.parsing import ParseLimits, read_header
from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.pipeline import Processor

from tests.conftest import bundled_images
from tests.daemon.test_pipeline import deliveries, ingest, pm, rec, runtime_from, spool  # noqa: F401 (fixtures)

CT = Path(get_testdata_file("CT_small.dcm"))
J2K = Path(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
FACTS = TransportFacts(source="inbound", source_type="folder")


def flipped_vr(tag: bytes = b"\x08\x00\x16\x00") -> bytes:
    """CT_small with the VR of one element (default SOP Class UID) bit-flipped to 'XY'."""
    data = bytearray(CT.read_bytes())
    at = data.find(tag + (b"UI" if tag == b"\x08\x00\x16\x00" else b""))
    data[at + 4:at + 6] = b"XY"
    return bytes(data)


def deflated(body_size: int) -> bytes:
    """A Deflated Explicit VR Little Endian object whose data set inflates to ``body_size``:
    CT_small's header, then a long zero-filled private OB element (compresses ~1000:1)."""
    ds = pydicom.dcmread(CT)
    del ds.PixelData
    raw = pydicom.filebase.DicomBytesIO()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(raw, enforce_file_format=True)
    head = raw.getvalue()
    meta_end = 132 + 12 + struct.unpack_from("<I", head, 140)[0]
    plain = bytearray(zlib.decompress(head[meta_end:], -zlib.MAX_WBITS))
    plain += b"\x09\x00\x10\x00OB\x00\x00" + struct.pack("<I", body_size)  # (0009,0010) — simply long
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = bytearray(head[:meta_end]) + deflater.compress(bytes(plain))
    chunk = bytes(1 << 20)
    for _ in range(body_size >> 20):
        out += deflater.compress(chunk)
    out += deflater.flush()
    return bytes(out)


def big_codestream() -> bytes:
    """A real 512x512 JPEG 2000 head CT whose codestream header claims 60000x60000 pixels."""
    data = bytearray(J2K.read_bytes())
    at = data.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", data, at + 8, 60000, 60000)
    return bytes(data)


def run_workers(proc: Processor, spool, jobs: list[int]) -> None:
    """Submit ``jobs`` to the processor's real worker threads; stop once none is left 'received'."""
    proc.start()
    for j in jobs:
        proc.submit(j)
    deadline = time.monotonic() + 20
    while spool.received_jobs() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.stop(5)


def quarantine_reasons(spool) -> dict[int, tuple[str, str]]:
    return {e["job_id"]: (e["reason"], e["place"]) for e in spool.quarantine_entries()}


def test_a_broken_element_quarantines_its_object_alone_and_says_which(spool, pm, rec, tmp_path):
    """A bit-flipped VR on SOP Class UID raised NotImplementedError out of the batch, which
    then stayed queued forever, innocent neighbours included."""
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    good1, bad, good2 = ingest(spool, tmp_path), ingest(spool, tmp_path, data=flipped_vr()), ingest(spool, tmp_path)

    Processor(spool, pm.hook, lambda: runtime, workers=1).process([good1, bad, good2])

    assert quarantine_reasons(spool) == {
        bad: ("element (0008,0016) SOPClassUID: its value representation (VR) is not a valid DICOM VR", "parse")}
    assert sorted(d.job_id for d in deliveries(spool, "a")) == [good1, good2]


def test_a_broken_element_that_routing_trips_over_is_named(spool, pm, rec, tmp_path):
    """The bad element is one a route condition reads (Rows, a US value of 3 bytes): it
    parses, passes the integrity checks, and breaks only when routing converts it."""
    runtime = runtime_from("routes:\n  - {name: big, match: {Rows: {gt: 100}}, to: [a]}\n"
                           "  - {name: all, to: [a]}\n", pm, tmp_path)
    data = bytearray(CT.read_bytes())
    at = data.find(b"\x28\x00\x10\x00US")
    data[at + 6:at + 8] = struct.pack("<H", 3)
    data[at + 10:at + 10] = b"\x00"
    good, bad = ingest(spool, tmp_path), ingest(spool, tmp_path, data=bytes(data))

    Processor(spool, pm.hook, lambda: runtime, workers=1).process([bad, good])

    assert quarantine_reasons(spool)[bad] == (
        "cannot route the object: element (0028,0010) Rows: its length is not a whole number of values of its"
        " value representation", "route")
    assert [d.job_id for d in deliveries(spool, "a")] == [good, good]  # both routes


def test_an_invalid_vr_anywhere_is_refused_at_parse_with_its_element(spool, pm, rec, tmp_path):
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    bad = ingest(spool, tmp_path, data=flipped_vr(b"\x08\x00\x80\x00"))  # InstitutionName, untouched by routing
    Processor(spool, pm.hook, lambda: runtime, workers=1).process([bad])
    assert quarantine_reasons(spool)[bad] == (
        "element (0008,0080) InstitutionName: its value representation (VR) is not a valid DICOM VR", "parse")


def test_the_worker_loop_never_stalls_on_a_batch(spool, pm, rec, tmp_path):
    """Through the real worker threads: a batch with a bad object finishes, and nothing
    stays 'received'."""
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    jobs = [ingest(spool, tmp_path, data=flipped_vr() if i % 3 == 1 else None) for i in range(9)]
    proc = Processor(spool, pm.hook, lambda: runtime, workers=1, batch_size=8)
    run_workers(proc, spool, jobs)
    assert spool.received_jobs() == []
    assert sorted(quarantine_reasons(spool)) == jobs[1::3]
    assert len(deliveries(spool, "a")) == 6


def test_a_batch_level_failure_falls_back_to_one_by_one(spool, pm, rec, tmp_path, monkeypatch):
    """A fault that escapes process() for the batch (here: a host bug on one job) does not
    keep the others from being processed."""
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    jobs = [ingest(spool, tmp_path) for _ in range(4)]
    proc = Processor(spool, pm.hook, lambda: runtime, workers=1, batch_size=8)
    real = proc._finish

    def finish(works):
        if any(w.job.id == jobs[2] for w in works):
            raise RuntimeError("host bug")
        return real(works)

    monkeypatch.setattr(proc, "_finish", finish)
    run_workers(proc, spool, jobs)
    assert sorted(d.job_id for d in deliveries(spool, "a")) == [jobs[0], jobs[1], jobs[3]]
    reason, place = quarantine_reasons(spool)[jobs[2]]
    assert reason.startswith("cannot process the object failed unexpectedly (RuntimeError at ")


def test_a_deflate_bomb_is_refused_in_bounded_memory(tmp_path):
    """2 GiB of zeros in a 2 MB deflated object: refused while inflating, memory flat."""
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflated(2 << 30))
    assert bomb.stat().st_size < 4 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(QuarantineError, match=r"inflates to more than 64\.0 MiB .*deflate bomb"):
        read_header(bomb, ParseLimits(max_inflated=64 << 20))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 48, f"peak RSS grew by {grown_mib:.0f} MiB"


def test_a_small_deflated_object_still_reads(tmp_path):
    ok = tmp_path / "small.dcm"
    ok.write_bytes(deflated(4 << 20))
    ds = read_header(ok, ParseLimits(max_inflated=64 << 20))
    assert ds.SOPInstanceUID == pydicom.dcmread(CT).SOPInstanceUID


def test_the_inflate_bound_comes_from_the_config(spool, pm, rec, tmp_path):
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    bomb = ingest(spool, tmp_path, data=deflated(80 << 20))
    Processor(spool, pm.hook, lambda: runtime, workers=1, limits=ParseLimits(max_inflated=16 << 20)).process([bomb])
    reason, place = quarantine_reasons(spool)[bomb]
    assert "inflates to more than 16.0 MiB" in reason and place == "parse"


def test_a_codestream_that_lies_about_its_size_fails_at_once_with_the_reason(tmp_path):
    path = tmp_path / "big.dcm"
    path.write_bytes(big_codestream())
    item = Item(1, path, FACTS)
    from pacsguard.daemon.plugins import get_plugin_manager

    t0 = time.process_time()
    with pytest.raises(QuarantineError) as exc:
        get_plugin_manager(entry_points=False).hook.pacsguard_decode_pixels(item=item)
    assert time.process_time() - t0 < 2.0
    assert exc.value.reason == ("the JPEG 2000 codestream of frame 1 declares 60000x60000 pixels with 1 component(s),"
                                " but the data set says Columns 512, Rows 512, SamplesPerPixel 1")


def test_every_bundled_compressed_image_passes_the_geometry_check():
    """No false alarms on real data: every compressed image pydicom decodes passes."""
    from pacsguard.daemon.codestream import check_pixel_geometry

    checked = 0
    for name in bundled_images():
        try:
            ds = pydicom.dcmread(name)
            ts = ds.file_meta.TransferSyntaxUID
        except Exception:
            continue
        if not ts.is_compressed or "PixelData" not in ds or "embedded-sequence-delimiter" in name.name:
            continue  # (that one's codestream really is damaged: its SIZ holds a delimiter)
        check_pixel_geometry(ds)
        checked += 1
    assert checked >= 20


def test_pixel_data_that_ends_before_its_delimiter_says_so(spool, pm, rec, tmp_path):
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    short = ingest(spool, tmp_path, Path(get_testdata_file("emri_small_jpeg_2k_lossless_too_short.dcm")))
    Processor(spool, pm.hook, lambda: runtime, workers=1).process([short])
    assert quarantine_reasons(spool)[short] == (
        "truncated DICOM file: the file ends inside element (7FE0,0010) PixelData, before its sequence delimiter",
        "parse")


def test_a_data_set_without_file_meta_is_accepted_and_written_with_one(spool, pm, rec, tmp_path):
    """OT-PAL-8-face.dcm: a legacy export without preamble or File Meta Information, which
    pydicom and dcmtk read. It is delivered as a proper Part-10 file, its data set unchanged."""
    src = Path(get_testdata_file("OT-PAL-8-face.dcm"))
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    job = ingest(spool, tmp_path, src)
    Processor(spool, pm.hook, lambda: runtime, workers=1).process([job])
    [d] = deliveries(spool, "a")
    out = pydicom.dcmread(d.path)
    orig = pydicom.dcmread(src, force=True)
    assert out.preamble is not None and out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert out.file_meta.MediaStorageSOPInstanceUID == orig.SOPInstanceUID
    # every element kept, except the retired group lengths (gggg,0000) pydicom leaves out
    assert [(e.tag, e.value) for e in out] == [(e.tag, e.value) for e in orig if e.tag.element != 0]


def nested_sequences(levels: int) -> bytes:
    """CT_small with ``levels`` sequences nested inside each other (undefined lengths)."""
    def sq(element: int) -> bytes:
        return struct.pack("<HH", 0x0008, element) + b"SQ\0\0\xff\xff\xff\xff"

    body = b""
    for i in range(levels):
        body = (sq(0x1110 if i == levels - 1 else 0x1115) + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body
                + b"\xfe\xff\x0d\xe0\0\0\0\0\xfe\xff\xdd\xe0\0\0\0\0")
    data = bytearray(CT.read_bytes())
    at = data.find(b"\x10\x00\x10\x00")  # before PatientName, in tag order
    data[at:at] = body
    return bytes(data)


def test_deep_sequences_get_a_sentence_not_a_source_line(spool, pm, rec, tmp_path):
    runtime = runtime_from("routes:\n  - {name: all, to: [a]}\n", pm, tmp_path)
    deep, shallow = ingest(spool, tmp_path, data=nested_sequences(2000)), ingest(spool, tmp_path,
                                                                                  data=nested_sequences(20))
    Processor(spool, pm.hook, lambda: runtime, workers=1).process([deep, shallow])
    assert quarantine_reasons(spool) == {deep: ("unreadable DICOM file: sequences nested too deeply", "parse")}
    assert [d.job_id for d in deliveries(spool, "a")] == [shallow]


def test_element_problem_names_the_element_inside_a_sequence(tmp_path):
    from pacsguard.daemon.parsing import element_problem

    data = bytearray(nested_sequences(3))
    at = data.find(b"\xfe\xff\x00\xe0\xff\xff\xff\xff", data.find(b"\x08\x00\x15\x11SQ")) + 8
    data[at:at] = b"\x08\x00\x3e\x10XY\x04\x00TEXT"  # (0008,103E) with a bad VR, two levels down
    path = tmp_path / "nested-bad.dcm"
    path.write_bytes(data)
    assert element_problem(read_header(path)) == (
        "element (0008,103E) SeriesDescription (at nesting depth 2, inside (0008,1110) ReferencedStudySequence):"
        " its value representation (VR) is not a valid DICOM VR")


def test_a_file_cut_inside_a_sequence_names_the_sequence(tmp_path):
    """pydicom raises OSError "No tag to read at file position ..." for this one."""
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(Path(get_testdata_file("JPEG2000.dcm")).read_bytes()[:1149])
    with pytest.raises(QuarantineError) as exc:
        read_header(cut)
    assert exc.value.reason == ("unreadable DICOM file at element (0008,9215) DerivationCodeSequence: one of its"
                                " sequences ends early (no element where an item should be)")
