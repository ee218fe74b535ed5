"""Burned-in identity: objects likely to carry it are quarantined with the reason, unless the
route allows them or a Clean Pixel Data rule matches; a rule blanks its rectangles in the
decoded pixels of every frame, written back native and lossless from the decoded pixels."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.keys import Key, secret_key_id
from pacsguard.plugins.deidentify import Deidentify
from tests.conftest import bundled_images

SECRET = bytes(range(2, 34))
KEY = Key("pseudo", "secret", secret_key_id(SECRET), "/test/pseudo.key", secret=SECRET)
FACTS = TransportFacts(source="test", source_type="folder")
LOGIQ = {"Manufacturer": "G.E. Medical Systems", "ManufacturerModelName": "LOGIQ 700", "Rows": 480, "Columns": 640}
BANNER = [[0, 0, 640, 40], [600, 400, 100, 100]]  # the second one runs off the image: clipped

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    FILES = {p.name: p for p in bundled_images()}


def stage(**options) -> Deidentify:
    return Deidentify(Deidentify.Options.model_validate({"key": "pseudo", **options}))


def run(path: Path, st: Deidentify, tmp_path: Path) -> tuple[pydicom.Dataset, Item]:
    item = Item(1, path, FACTS, keys={"pseudo": KEY})
    st.process(item)
    out = tmp_path / "out.dcm"
    item.write(out)
    return pydicom.dcmread(out), item


@pytest.mark.parametrize(("name", "why"), [
    ("US1_UNCR.dcm", "ultrasound images usually carry burned-in text"),
    ("SC_rgb.dcm", "Secondary Capture images (screen captures, dose reports) usually carry burned-in text"),
    ("color3d_jpeg_baseline.dcm", "ultrasound images usually carry burned-in text"),
])
def test_likely_burned_in_objects_are_quarantined_with_the_reason(name, why, tmp_path):
    with pytest.raises(QuarantineError) as info:
        run(FILES[name], stage(), tmp_path)
    assert info.value.reason == (f"burned-in identity likely ({why}) and no clean_pixel_data rule matches it "
                                 "(burned_in: allow on the route passes such objects)")


def test_burned_in_annotation_yes_is_quarantined_and_allow_passes_it(tmp_path):
    ds = pydicom.dcmread(FILES["CT_small.dcm"])
    ds.BurnedInAnnotation = "YES"
    src = tmp_path / "in.dcm"
    ds.save_as(src)
    with pytest.raises(QuarantineError, match=r"\(Burned In Annotation is YES\)"):
        run(src, stage(), tmp_path)
    out, _ = run(src, stage(burned_in="allow"), tmp_path)
    assert out.BurnedInAnnotation == "YES" and out.PixelData == ds.PixelData  # passed as it was
    assert "113101" not in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_a_rule_that_does_not_match_does_not_clean(tmp_path):
    st = stage(clean_pixel_data=[{"match": {**LOGIQ, "Rows": 481}, "rectangles": BANNER}])
    with pytest.raises(QuarantineError, match="no clean_pixel_data rule matches"):
        run(FILES["US1_UNCR.dcm"], st, tmp_path)


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_J2KR.dcm"])
def test_clean_pixel_data_blanks_the_rectangles_losslessly(name, tmp_path):
    """The native and the lossless JPEG 2000 copy of one image give the same cleaned pixels."""
    original = pydicom.dcmread(FILES[name])
    decoded = original.pixel_array
    st = stage(clean_pixel_data=[{"match": {"Rows": 10}, "rectangles": [[0, 0, 1, 1]]},
                                 {"match": LOGIQ, "rectangles": BANNER, "fill": 7}])
    out, item = run(FILES[name], st, tmp_path)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == "RGB" and out.PlanarConfiguration == 0
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert "Clean Pixel Data Option" in list(out.DeidentificationMethod)
    pixels = out.pixel_array
    expected = decoded.copy()
    expected[0:40, :, :] = 7
    expected[400:480, 600:640, :] = 7
    assert np.array_equal(pixels, expected)
    assert 0x7FE00010 not in item.results["deidentify"]  # pixels are never recorded
    assert np.array_equal(pydicom.dcmread(FILES["US1_UNCR.dcm"]).pixel_array[40:400], pixels[40:400])


def test_every_frame_of_a_multi_frame_object_is_cleaned(tmp_path):
    name = "color3d_jpeg_baseline.dcm"
    decoded = pydicom.dcmread(FILES[name]).pixel_array
    st = stage(clean_pixel_data=[{"match": {"Manufacturer": {"regex": "^SonoSite"}}, "rectangles": [[10, 20, 30, 5]]}])
    out, _ = run(FILES[name], st, tmp_path)
    pixels = out.pixel_array
    assert pixels.shape == decoded.shape == (120, 480, 640, 3)
    assert (pixels[:, 20:25, 10:40, :] == 0).all()
    mask = np.ones(decoded.shape, bool)
    mask[:, 20:25, 10:40, :] = False
    assert np.array_equal(pixels[mask], decoded[mask])
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and out.NumberOfFrames == 120


def test_a_rule_cleans_an_object_that_is_not_a_likely_one_too(tmp_path):
    original = pydicom.dcmread(FILES["CT_small.dcm"])
    st = stage(clean_pixel_data=[{"match": {"Manufacturer": "GE MEDICAL SYSTEMS", "Columns": 128},
                                  "rectangles": [[0, 0, 10, 10]], "fill": -2000}])
    out, _ = run(FILES["CT_small.dcm"], st, tmp_path)
    pixels = out.pixel_array
    assert (pixels[:10, :10] == -2000).all() and np.array_equal(pixels[10:], original.pixel_array[10:])
    assert out.BurnedInAnnotation == "NO"
