"""Property tests of embed and reveal on random images (shapes, bit depths, signedness,
colour, frames, padding, values at both range ends, constant images) and random
payloads: reveal gives back exactly the original pixels and payload, or refuses; after
any change of a pixel, or with another key, it always refuses: it never returns
something else."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pacsguard.daemon.errors import QuarantineError
from pacsguard.plugins.stego import embedding
from tests.plugins.encryption_keys import make_key, public_only

KEY, OTHER = make_key("x25519"), make_key("x25519", "other")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def datasets(draw):
    bits_stored = draw(st.sampled_from([8, 12, 16]))
    bits = 8 if bits_stored == 8 else 16
    signed = draw(st.booleans())
    samples = draw(st.sampled_from([1, 1, 3]))
    frames = draw(st.sampled_from([1, 1, 2, 3]))
    rows, cols = draw(st.integers(8, 128)), draw(st.integers(8, 128))
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    seed = draw(st.integers(0, 2**32 - 1))
    g = np.random.default_rng(seed)
    shape = (frames, rows, cols, samples)
    kind = draw(st.sampled_from(["smooth", "smooth", "smooth", "noise", "constant", "ends"]))
    if kind == "smooth":
        yy, xx = np.mgrid[0:rows, 0:cols]
        ramp = (yy * g.integers(-2, 3) + xx * g.integers(-2, 3))[None, :, :, None]
        arr = g.integers(lo, hi + 1) + ramp + g.integers(-2, 3, shape)
    elif kind == "noise":
        arr = g.integers(lo, hi + 1, shape)
    elif kind == "constant":
        arr = np.full(shape, draw(st.sampled_from([lo, hi, (lo + hi) // 2])))
    else:  # both range ends and their neighbours, in blocks: the overflow path
        arr = np.repeat(g.choice([lo, lo + 1, hi - 1, hi], (frames, rows, cols // 4 + 1, samples)), 4, axis=2)[:, :, :cols]
    arr = np.clip(arr, lo, hi).astype(np.dtype(f"{'i' if signed else 'u'}{bits // 8}"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    # a UID from the drawn seed: its length (random with generate_uid()) changes the payload,
    # hence whether it fits, and Hypothesis needs the same draws for the same data
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid(entropy_srcs=[str(seed)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits_stored, bits_stored - 1, int(signed)
    if samples == 1 and draw(st.booleans()):
        ds.PixelPaddingValue = int(arr.reshape(-1)[0])
    stored = arr.astype(arr.dtype.newbyteorder("<"))
    if bits_stored < bits:  # the stored bits only, as a writer puts them (two's complement within them)
        stored = (stored.view(f"<u{bits // 8}") & ((1 << bits_stored) - 1)).astype(f"<u{bits // 8}")
    ds.PixelData = stored.tobytes()
    ds.PatientName, ds.PatientID = "DOE^JANE", "PID-1"
    return _reread(ds)


def _reread(ds: Dataset) -> Dataset:
    """Through the bytes, as the object travels."""
    fp = io.BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(fp.getvalue()))


def _payload(data) -> Dataset:
    record = Dataset()
    record.PatientName = data.draw(st.text("ABCXYZ^", max_size=20))  # (trailing spaces are padding in DICOM)
    record.PatientID = data.draw(st.text("0123456789", min_size=1, max_size=16))
    extra = data.draw(st.one_of(st.just(b""), st.binary(max_size=64), st.binary(max_size=600)))
    if extra:
        record.add_new(0x00091010, "OB", extra + b"\0" * (len(extra) % 2))
    return record


def _embedded(ds: Dataset, record: Dataset, **kw) -> Dataset | None:
    try:
        embedding.embed(ds, ds.pixel_array, record, [public_only(KEY)], **kw)
    except embedding.NoRoom as exc:
        assert "needs" in exc.reason and "available" in exc.reason
        event("no room")
        return None
    event("embedded")
    return _reread(ds)


@SETTINGS
@given(datasets(), st.data())
def test_reveal_restores_exactly_or_embedding_refuses(ds, data):
    original, record = ds.pixel_array.copy(), _payload(data)
    marked = _embedded(ds, record)
    if marked is None:
        return
    marked.PatientName, marked.PatientID = "ANONYMOUS", "ANON"  # rewritten on the way
    embedding.reveal(marked, marked.pixel_array, [KEY])
    back = _reread(marked)
    assert np.array_equal(back.pixel_array, original) and back.pixel_array.dtype == original.dtype
    for elem in record:
        assert back[elem.tag].value == elem.value


@SETTINGS
@given(datasets(), st.data())
def test_a_changed_pixel_is_refused_or_undone(ds, data):
    """One pixel changed by one: reveal refuses, or (a bit it never read: the unused tail
    of the side information) gives back exactly the original pixels and payload."""
    original, record = ds.pixel_array.copy(), _payload(data)
    marked = _embedded(ds, record)
    if marked is None:
        return
    arr = marked.pixel_array.copy()
    flat = arr.reshape(-1)
    i = data.draw(st.integers(0, flat.size - 1))
    hi = (1 << (marked.BitsStored - (1 if marked.PixelRepresentation else 0))) - 1
    flat[i] = flat[i] + 1 if flat[i] < hi else flat[i] - 1
    try:
        embedding.reveal(marked, arr, [KEY])
    except QuarantineError:
        event("refused")
        return
    event("undone")
    back = _reread(marked)
    assert np.array_equal(back.pixel_array, original)
    for elem in record:
        assert back[elem.tag].value == elem.value


@SETTINGS
@given(datasets(), st.data())
def test_another_key_is_always_refused(ds, data):
    marked = _embedded(ds, _payload(data))
    if marked is None:
        return
    with pytest.raises(QuarantineError, match="not encrypted for key ID"):
        embedding.reveal(marked, marked.pixel_array, [OTHER])


@SETTINGS
@given(datasets())
def test_an_unmarked_image_is_refused(ds):
    with pytest.raises(QuarantineError, match="carrier"):
        embedding.reveal(ds, ds.pixel_array, [KEY])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.data(), st.integers(1, 4))
def test_lsb_reveals_the_payload_or_refuses(ds, data, k):
    record = _payload(data)
    marked = _embedded(ds, record, method="lsb", lsb_bits=k)
    if marked is None:
        return
    embedding.reveal(marked, marked.pixel_array, [KEY])
    for elem in record:
        assert marked[elem.tag].value == elem.value
