"""Item.write: a header-only change copies the pixel data raw, and the file is exactly
what pydicom itself would have written; anything else takes pydicom's full path."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacsguard.daemon import item as itemmod
from pacsguard.daemon.item import Item, TransportFacts
from tests.conftest import bundled_images, write_ct_series

FACTS = TransportFacts(source="test", source_type="folder")


def pydicom_writes(src: Path, change) -> bytes:
    ds = pydicom.dcmread(src)
    change(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def raw_copies(monkeypatch):
    calls = []
    real = itemmod.append_range

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(itemmod, "append_range", spy)
    return calls


def _institution(ds):
    ds.InstitutionName = "Written Hospital"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small.dcm",
                                  "rtdose.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "emri_small_big_endian.dcm",
                                  "US1_UNCR.dcm", "SC_rgb.dcm"])
def test_header_only_change_is_written_as_pydicom_would(name, tmp_path, raw_copies):
    src = Path(get_testdata_file(name))
    item = Item(1, src, FACTS)
    _institution(item.dataset)
    item.write(tmp_path / "out.dcm")
    assert (tmp_path / "out.dcm").read_bytes() == pydicom_writes(src, _institution)
    ds = pydicom.dcmread(src)
    if (not ds.file_meta.TransferSyntaxUID.is_compressed and max(ds.keys()) == 0x7FE00010
            and len(ds.PixelData) > itemmod.DEFER_SIZE):
        assert len(raw_copies) == 1  # large native pixel data, last: copied by the kernel
    else:  # small (read at once) or encapsulated pixel data, or elements after it: pydicom writes it
        assert raw_copies == []


def test_a_generated_ct_slice_takes_the_raw_copy(tmp_path, raw_copies):
    (src,) = write_ct_series(tmp_path / "in", 1, size=128)
    item = Item(1, src, FACTS)
    _institution(item.dataset)
    item.write(tmp_path / "out.dcm")
    assert len(raw_copies) == 1
    assert (tmp_path / "out.dcm").read_bytes() == pydicom_writes(src, _institution)


def test_changed_pixels_take_the_full_path(tmp_path, raw_copies):
    src = Path(get_testdata_file("CT_small.dcm"))
    item = Item(1, src, FACTS)
    ds = item.dataset
    arr = ds.pixel_array.copy()
    arr[0, 0] = 1234
    ds.PixelData = arr.tobytes()
    item.write(tmp_path / "out.dcm")
    assert raw_copies == []
    assert pydicom.dcmread(tmp_path / "out.dcm").pixel_array[0, 0] == 1234


def test_elements_after_the_pixel_data_take_the_full_path(tmp_path, raw_copies):
    src = tmp_path / "padded.dcm"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 16)  # Data Set Trailing Padding
    ds.save_as(src, enforce_file_format=True)
    item = Item(1, src, FACTS)
    _institution(item.dataset)
    item.write(tmp_path / "out.dcm")
    assert raw_copies == []
    assert (tmp_path / "out.dcm").read_bytes() == pydicom_writes(src, _institution)


def test_every_bundled_image_survives_a_header_change(tmp_path):
    done = 0
    for src in bundled_images():
        try:
            expected = pydicom_writes(src, _institution)
        except Exception:
            continue  # pydicom cannot write it either
        item = Item(1, src, FACTS)
        _institution(item.dataset)
        out = tmp_path / f"{src.name}.out"
        item.write(out)
        assert out.read_bytes() == expected, src.name
        done += 1
    assert done > 20


def test_writing_leaves_the_items_dataset_whole(tmp_path):
    """Writing the header apart from the pixel data (raw copy, sealing) must not take the
    Pixel Data element out of the item's own dataset."""
    from pacsguard.daemon.item import Item, TransportFacts

    src = Path(get_testdata_file("CT_small.dcm"))
    item = Item(1, src, TransportFacts(source="t", source_type="folder"))
    item.dataset.InstitutionName = "X"
    item.write(tmp_path / "out.dcm")
    assert "PixelData" in item.dataset
    assert item.dataset.PixelData == pydicom.dcmread(src).PixelData
    assert pydicom.dcmread(tmp_path / "out.dcm").PixelData == pydicom.dcmread(src).PixelData


def test_load_pixel_data_gives_pydicoms_value_on_every_bundled_image(tmp_path):
    """One read of the received file, or pydicom's own (deflated data sets: positions in
    the inflated stream); the value is the same either way, and the write afterwards too."""
    import warnings

    fast = 0
    for path in bundled_images():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = pydicom.dcmread(path)
            if "PixelData" not in reference:
                continue
            item = Item(1, path, TransportFacts(source="t", source_type="folder"))
            before = item.dataset.get_item(0x7FE00010, keep_deferred=True)
            item.load_pixel_data()
            after = item.dataset.get_item(0x7FE00010, keep_deferred=True)
            fast += getattr(before, "value", b"") is None and after.value is not None
            assert item.dataset.PixelData == reference.PixelData, path.name
            try:
                reference.save_as(io.BytesIO(), enforce_file_format=True)
            except Exception:
                continue  # pydicom cannot write it either (raw elements without a VR)
            out = tmp_path / f"{path.stem}.dcm"
            item.write(out)
            assert pydicom.dcmread(out).PixelData == reference.PixelData, path.name
    assert fast > 20  # most of the corpus defers its pixel data, and took the one read


def test_load_pixel_data_refuses_a_file_cut_inside_its_pixel_data(tmp_path):
    (src,) = write_ct_series(tmp_path / "in", 1, size=256)
    item = Item(1, src, TransportFacts(source="t", source_type="folder"))
    _ = item.dataset
    with open(src, "r+b") as fh:
        fh.truncate(src.stat().st_size - 100)
    from pacsguard.daemon.errors import QuarantineError

    with pytest.raises(QuarantineError, match="ends inside its pixel data"):
        item.load_pixel_data()


@pytest.mark.parametrize("instance", [b"1.2.3.4 ", b" 1.2.3.4", b"1.2.3.4\0\0", b"1.2.3.44", b"1.2.3.5\0", b"1.2.3.4\0"])
def test_the_sop_uids_in_the_meta_follow_the_data_set_as_pydicom_writes_them(tmp_path, instance):
    """Compared unconverted where converting changes nothing; converted (as pydicom's
    writer does) where their padding would change."""
    ds = pydicom.dcmread(write_ct_series(tmp_path / "ct", 1, size=16)[0])  # written as read (not re-encoded)
    ds.SOPInstanceUID = "1.2.3.4"  # the meta's too, when saved
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    data = src.read_bytes()
    old = ds.SOPInstanceUID.encode() + b"\0" * (len(ds.SOPInstanceUID) % 2)
    at = data.index(b"\x08\x00\x18\x00UI")
    head = b"\x08\x00\x18\x00UI" + len(old).to_bytes(2, "little") + old
    assert data[at:at + len(head)] == head
    src.write_bytes(data[:at] + b"\x08\x00\x18\x00UI" + len(instance).to_bytes(2, "little") + instance
                    + data[at + len(head):])
    assert pydicom.dcmread(src).file_meta.get_item(0x00020003).value == b"1.2.3.4\0"
    item = Item(1, src, FACTS)
    _institution(item.dataset)
    item.write(tmp_path / "out.dcm")
    assert (tmp_path / "out.dcm").read_bytes() == pydicom_writes(src, _institution)
