"""Helpers for the stego tests: items with the default decoding path, the stages, a
de-identification record as a deidentify stage would leave it."""

from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsguard.daemon import pixels as default_decoder
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.plugins.stego.stages import Embed, Reveal

FACTS = TransportFacts(source="test", source_type="folder")
#: what a de-identification changes (and records): identity, dates, UIDs
RECORD = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "OtherPatientIDs",
          "StudyDate", "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "StudyID",
          "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_UIDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}


def item(path: Path, keys: dict) -> Item:
    return Item(1, path, FACTS, keys=keys, decode_pixels=lambda item: default_decoder.pacsguard_decode_pixels(item=item))


def embed_stage(*recipients: str, **options) -> Embed:
    return Embed(Embed.Options.model_validate({"recipients": list(recipients), **options}))


def reveal_stage(name: str) -> Reveal:
    return Reveal(Reveal.Options.model_validate({"key": name}))


def deidentify(it: Item, keywords=RECORD) -> Dataset:
    """Do what a deidentify stage does: record the original values of what it changes in
    ``item.results["deidentify"]`` and change them (UIDs replaced, the rest blanked or
    removed). Returns the record."""
    ds = it.dataset
    record = Dataset()
    for keyword in keywords:
        if keyword in ds:
            record[keyword] = copy.deepcopy(ds[keyword])
    for keyword in record.dir():
        if keyword in _UIDS:
            setattr(ds, keyword, generate_uid())
        elif keyword in ("PatientName", "PatientID"):
            setattr(ds, keyword, "ANONYMOUS")
        else:
            del ds[keyword]
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    it.results["deidentify"] = record
    return record


def decoded(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path).pixel_array


def sha(arr: np.ndarray) -> str:
    """SHA-256 of decoded pixels as native little endian bytes."""
    return hashlib.sha256(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).hexdigest()
