"""The whole DICOM chain with real peers on both sides:

    dcmtk storescu --C-STORE--> pacsguard (node) --C-STORE--> dcmtk storescp (all syntaxes)
                                                 \\---------> Orthanc (checked over its REST API)
                                                  \\--------> dcmtk storescp (uncompressed only)

A pass-through route keeps every attribute and pixel byte; compressed objects reach the
uncompressed-only peer decompressed, with the same pixel values (decoded on both sides).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from conftest import write_ct_series
from peers import Orthanc, Pacsguard, Storescp, free_port, storescu, wait_for

# Compressed samples with distinct SOP Instance UIDs, and the storescu flag proposing each one's syntax.
COMPRESSED = {"JPEG2000.dcm": "-xw", "SC_rgb_jpeg_dcmtk.dcm": "-xy", "emri_small_RLE.dcm": "-xr"}


def dicom(aet: str, port: int) -> str:
    return (f"{{type: dicom, ae_title: {aet}, host: 127.0.0.1, port: {port},"
            f" retry: {{initial: 0.2, max_delay: 1s, max_attempts: 20}}}}")


def config(tmp: Path, port: int, scp: Storescp, plain: Storescp, orthanc: Orthanc) -> str:
    return f"""
node: {{ae_title: PACSGUARD, port: {port}, allowed_callers: [{{ae_title: MODALITY}}]}}
spool: {{path: {tmp / 'spool'}}}
destinations:
  archive: {dicom(scp.aet, scp.port)}
  plain: {dicom(plain.aet, plain.port)}
  pacs: {dicom(orthanc.aet, orthanc.dicom_port)}
routes:
  - {{name: pass-through, match: {{calling_ae: MODALITY}}, to: [archive, plain, pacs]}}
metrics: {{enabled: false}}
logging: {{format: json}}
"""


def by_uid(paths) -> dict[str, pydicom.Dataset]:
    out = {}
    for p in paths:
        ds = pydicom.dcmread(p) if not isinstance(p, bytes) else pydicom.dcmread(io.BytesIO(p))
        out[ds.SOPInstanceUID] = ds
    return out


def same_object(sent: pydicom.Dataset, got: pydicom.Dataset) -> None:
    """Every element (group lengths aside: retired, recomputed by writers) and every pixel byte."""
    tags = sorted(t for t in sent.keys() if t.element != 0)
    assert tags == sorted(t for t in got.keys() if t.element != 0), sent.SOPInstanceUID
    for tag in tags:
        assert sent[tag].value == got[tag].value, (sent.SOPInstanceUID, tag)
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


def test_storescu_through_pacsguard_to_storescp_and_orthanc(tmp_path):
    series = write_ct_series(tmp_path / "ct", 30)
    compressed = {Path(get_testdata_file(name)): flag for name, flag in COMPRESSED.items()}
    sent = by_uid(series + list(compressed))
    assert len(sent) == 33

    port = free_port()
    with Storescp(tmp_path / "archive", aet="ARCHIVE") as scp, \
            Storescp(tmp_path / "plain", aet="PLAIN", args=("+x=",)) as plain, \
            Orthanc(tmp_path / "orthanc") as orthanc, \
            Pacsguard(tmp_path / "pg", config(tmp_path, port, scp, plain, orthanc)) as pg:
        out = storescu(port, series, calling="MODALITY")
        assert out.returncode == 0, out.stderr
        for path, flag in compressed.items():
            out = storescu(port, [path], calling="MODALITY", args=(flag,))
            assert out.returncode == 0, out.stderr

        def delivered():
            st = pg.status()
            return st if st["jobs"]["done"] == 33 else None

        st = wait_for(delivered, 120, "all 33 objects delivered to all three peers", interval=0.5)
        assert st["quarantine"]["entries"] == 0
        assert {n: d["delivered"] for n, d in st["destinations"].items()} == {"archive": 33, "plain": 33, "pacs": 33}

        # storescp (+B, bit-preserving) and Orthanc hold every object unchanged.
        archive = by_uid(scp.files())
        assert set(archive) == set(sent)
        pacs = by_uid(orthanc.instance_file(i) for i in orthanc.instances())
        assert set(pacs) == set(sent)
        for uid, ds in sent.items():
            same_object(ds, archive[uid])
            same_object(ds, pacs[uid])
            if "PixelData" in ds:
                assert archive[uid].PixelData == ds.PixelData and pacs[uid].PixelData == ds.PixelData

        # The uncompressed-only peer got compressed objects decompressed: same pixel values.
        got = by_uid(plain.files())
        assert set(got) == set(sent)
        for path in compressed:
            src = pydicom.dcmread(path)
            dst = got[src.SOPInstanceUID]
            assert not dst.file_meta.TransferSyntaxUID.is_compressed
            assert src.file_meta.TransferSyntaxUID.is_compressed
            assert np.array_equal(src.pixel_array, dst.pixel_array), path.name
        for path in series:
            ds = sent[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
            assert got[ds.SOPInstanceUID].PixelData == ds.PixelData
