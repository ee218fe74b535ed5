"""The default decoding path's native fast path (``daemon.pixels.native_array``) gives
what pydicom's ``pixel_array`` gives: same values, type, shape, writeable; and leaves to
pydicom every kind it does not take."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from conftest import bundled_images
from pacsguard.daemon.pixels import native_array

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _native_files():
    out = []
    for p in bundled_images():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if ds.file_meta.TransferSyntaxUID in NATIVE:
            out.append(p)
    return out


def _same(fast, ds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ds.pixel_array
    assert fast.dtype == ref.dtype
    assert fast.shape == ref.shape
    assert np.array_equal(fast, ref)
    assert fast.flags.writeable and fast.flags.c_contiguous


def test_the_fast_path_gives_pydicoms_arrays_on_the_native_corpus():
    taken = 0
    for p in _native_files():
        ds = pydicom.dcmread(p)
        fast = native_array(ds)
        if fast is None:
            continue
        taken += 1
        _same(fast, ds)
    assert taken >= 20  # the corpus has 24 native images of the kinds it takes (palette, 1-bit, planar RGB: not)


def test_compressed_big_endian_and_odd_kinds_are_left_to_pydicom():
    kinds = {"compressed": 0, "big endian": 0, "other": 0}
    for p in bundled_images():
        ds = pydicom.dcmread(p)
        ts = ds.file_meta.TransferSyntaxUID
        if ts.is_compressed:
            kinds["compressed"] += 1
        elif ts == ExplicitVRBigEndian:
            kinds["big endian"] += 1
        elif ds.get("BitsAllocated") == 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            kinds["other"] += 1
        else:
            continue
        assert native_array(ds) is None, p.name
    assert all(kinds.values()), kinds


def _dataset(rows, cols, frames, samples, allocated, stored, signed, data, ts=ExplicitVRLittleEndian):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, stored, stored - 1, signed
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = data
    return ds


@st.composite
def _native(draw):
    allocated = draw(st.sampled_from([8, 16, 32]))
    stored = draw(st.integers(1, allocated))
    rows, cols, frames = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 3))
    samples = draw(st.sampled_from([1, 3]))
    n = rows * cols * frames * samples * allocated // 8
    data = draw(st.binary(min_size=n, max_size=n))  # the unused high bits hold anything
    if n % 2:
        data += b"\0"
    return rows, cols, frames, samples, allocated, stored, draw(st.integers(0, 1)), data


@settings(max_examples=300, deadline=None)
@given(_native())
def test_the_fast_path_gives_pydicoms_arrays_on_random_native_data(case):
    ds = _dataset(*case)
    fast = native_array(ds)
    assert fast is not None
    _same(fast, ds)


def test_a_length_that_does_not_match_the_geometry_is_left_to_pydicom():
    ds = _dataset(4, 4, 1, 1, 16, 12, 0, b"\0" * 30)
    assert native_array(ds) is None
    ds = _dataset(4, 4, 1, 1, 16, 12, 0, b"\0" * 34)
    assert native_array(ds) is None
    ds = _dataset(4, 4, 1, 1, 16, 12, 0, b"\0" * 32)
    assert native_array(ds) is not None


@pytest.mark.parametrize("change", [
    {"BitsStored": 17}, {"BitsAllocated": 12}, {"PixelRepresentation": 2},
    {"PhotometricInterpretation": "YBR_FULL"}, {"PlanarConfiguration": 1},
])
def test_kinds_outside_the_fast_path_are_left_to_pydicom(change):
    ds = _dataset(4, 4, 1, 3 if "PlanarConfiguration" in change or "YBR" in str(change) else 1, 16, 12, 0,
                  b"\0" * (96 if "PlanarConfiguration" in change or "YBR" in str(change) else 32))
    for k, v in change.items():
        setattr(ds, k, v)
    assert native_array(ds) is None
