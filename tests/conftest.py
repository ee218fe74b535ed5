"""Shared test helpers: real DICOM corpora (pydicom's bundled files, generated CT)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="One or more download failures occurred")


def bundled_images() -> list[Path]:
    """pydicom's bundled images (its own test_files and the pydicom-data package) that are
    valid Part-10 files with distinct SOP Instance UIDs.

    Only files present on disk: ``pydicom.data.get_testdata_files`` would try to download
    the rest of pydicom-data's repository, and there is no network here.
    """
    import pydicom
    from pydicom.data.data_manager import DATA_ROOT, DataTypes, external_data_sources

    files = [os.fspath(p) for p in (Path(DATA_ROOT) / "test_files").glob("*.dcm")]
    for source in external_data_sources().values():
        files.extend(source.get_paths("*.dcm", DataTypes.DATASET))
    seen, out = set(), []
    for p in sorted(files):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        uid = ds.get("SOPInstanceUID")
        if not uid or uid in seen or "truncated" in p:
            continue
        if not getattr(ds, "file_meta", None) or not ds.file_meta.get("TransferSyntaxUID"):
            continue
        seen.add(uid)
        out.append(Path(p))
    return out


def write_ct_series(folder: Path, n: int, *, size: int = 512, patient: str = "DOE^JANE",
                    patient_id: str = "PID-0001", seed: int = 0) -> list[Path]:
    """Write ``n`` synthetic 16-bit CT slices (Explicit VR Little Endian) into ``folder``."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2).astype(np.int16)
    paths = []
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"ct_{seed}_{i:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = patient, patient_id
        ds.Modality, ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "CT", "20240102", 1, i + 1
        ds.StudyDescription = "CT HEAD"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = (body * 1040 + rng.integers(-20, 20, (size, size))).astype(np.int16)
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def bundled() -> list[Path]:
    files = bundled_images()
    assert len(files) >= 20, "pydicom's bundled test files are missing"
    return files


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


os.environ.setdefault("TCP_NODELAY", "1")
