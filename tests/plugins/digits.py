"""Held-out digits as DICOM objects: 32 x 32 8-bit MONOCHROME2 Secondary Capture images
(what the ``infer`` stage's shipped model takes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_digits(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """One file per image (N, 32, 32, 1) uint8; the label only in the file name."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        sop = meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"digit_{i:04d}_{int(label)}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality = "DIGIT^TEST", "DIGITS-1", "OT"
        ds.ConversionType, ds.InstanceNumber = "WSD", i + 1
        ds.Rows, ds.Columns = img.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.ascontiguousarray(img[..., 0], dtype=np.uint8).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
