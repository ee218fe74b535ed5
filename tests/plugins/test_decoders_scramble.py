"""scramble -> unscramble is exact on every bundled image it supports and refused, with the
reason, on the rest; the keyed orders are stable, and depend on the key."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.item import Item, TransportFacts
from pacsguard.daemon.keys import Key, secret_key_id
from pacsguard.daemon.plugins import get_plugin_manager
from pacsguard.plugins.decoders import blocks, marking
from pacsguard.plugins.decoders.scramble import Scramble, Unscramble
from tests.conftest import bundled_images

FACTS = TransportFacts(source="test", source_type="folder")
DECODE = get_plugin_manager(entry_points=False).hook.pacsguard_decode_pixels

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def secret_key(name: str = "vit", secret: bytes | None = None) -> Key:
    secret = secret if secret is not None else bytes(range(32))
    return Key(name, "secret", secret_key_id(secret), f"/test/{name}.key", secret=secret)


KEY, OTHER = secret_key(), secret_key("other", os.urandom(32))


def scramble_stage(block: int = 16, flip: bool = False, key: str = "vit") -> Scramble:
    return Scramble(Scramble.Options(key=key, block_size=block, flip=flip))


def run(stage, src: Path, dst: Path, keys=None) -> Path:
    item = Item(1, src, FACTS, keys=keys or {"vit": KEY, "other": OTHER}, decode_pixels=DECODE)
    stage.process(item).write(dst)
    return dst


def expected_refusal(ds, block: int) -> str | None:
    """What the README says scramble refuses, read from the header."""
    if "PixelData" not in ds:
        return "pixel data: scramble handles 8- and 16-bit integer pixels only"
    if ds.get("BitsAllocated") not in (8, 16):
        return f"Bits Allocated {ds.BitsAllocated}"
    if ds.get("SamplesPerPixel", 1) not in (1, 3):
        return "samples per pixel"
    if ds.Rows % block or ds.Columns % block:
        return f"{ds.Rows} x {ds.Columns} pixels is not a multiple of the block size {block}"
    if any(t.group & 0xFF00 == 0x6000 and t.element == 0x3000 for t in ds.keys()):
        return "overlay planes"
    if "IconImageSequence" in ds:
        return "icon image"
    return None


def read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def check_round_trip(path: Path, tmp_path: Path, block: int, flip: bool) -> None:
    original = read(path)
    try:
        plain = original.pixel_array
    except Exception:  # no installed decoder handles it: scramble refuses it the same way
        with pytest.raises(QuarantineError, match="cannot decode pixel data"):
            run(scramble_stage(block, flip), path, tmp_path / "scr.dcm")
        return
    scrambled_path = run(scramble_stage(block, flip), path, tmp_path / "scr.dcm")
    scr = read(scrambled_path)
    ts = original.file_meta.TransferSyntaxUID
    assert scr.file_meta.TransferSyntaxUID == (ExplicitVRLittleEndian if ts.is_compressed else ts)
    assert (scr.Rows, scr.Columns, scr.get("NumberOfFrames", 1)) == \
           (original.Rows, original.Columns, original.get("NumberOfFrames", 1))
    assert scr.pixel_array.shape == plain.shape and scr.pixel_array.dtype == plain.dtype
    if len(np.unique(plain)) > 1:
        assert not np.array_equal(scr.pixel_array, plain)
    b = scr.private_block(marking.GROUP, marking.SCRAMBLE_CREATOR)
    assert b[marking.SCHEME].value == "PACSGUARD SCRAMBLE 1"
    assert (b[marking.BLOCK_SIZE].value, b[marking.FLIP].value, b[marking.KEY_ID].value) == \
           (block, "YES" if flip else "NO", KEY.key_id)
    assert b[marking.ORIGINAL_TS].value == original.file_meta.TransferSyntaxUID
    assert scr.ImageComments.startswith("PACSGUARD SCRAMBLED")
    assert f"block {block}" in scr.DerivationDescription and KEY.key_id in scr.DerivationDescription

    back = read(run(Unscramble(Unscramble.Options(key="vit")), scrambled_path, tmp_path / "back.dcm"))
    assert back.pixel_array.dtype == plain.dtype
    assert np.array_equal(back.pixel_array, plain)
    for keyword in ("ImageComments", "DerivationDescription"):
        assert back.get(keyword) == original.get(keyword)
    with pytest.raises(KeyError):
        back.private_block(marking.GROUP, marking.SCRAMBLE_CREATOR)


@pytest.mark.parametrize("path", bundled_images(), ids=lambda p: p.name)
def test_scramble_unscramble_is_exact_on_every_bundled_image_it_supports(path, tmp_path):
    refusal = expected_refusal(read(path), 16)
    if refusal is not None:
        with pytest.raises(QuarantineError, match=refusal):
            run(scramble_stage(16), path, tmp_path / "scr.dcm")
        return
    check_round_trip(path, tmp_path, 16, flip=False)


SMALL_BLOCKS = ["CT_small.dcm", "ExplVR_BigEnd.dcm", "emri_small.dcm", "SC_rgb_jpeg.dcm", "OBXXXX1A.dcm",
                "J2K_pixelrep_mismatch.dcm", "color-pl.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]


@pytest.mark.parametrize("name", SMALL_BLOCKS)
def test_small_blocks_with_negative_positive_are_exact_too(name, tmp_path):
    [path] = [p for p in bundled_images() if p.name == name]
    refusal = expected_refusal(read(path), 4)
    if refusal is not None:
        with pytest.raises(QuarantineError, match=refusal):
            run(scramble_stage(4, flip=True), path, tmp_path / "scr.dcm")
        return
    check_round_trip(path, tmp_path, 4, flip=True)


def test_the_corpus_has_both_supported_and_refused_images():
    reasons = [expected_refusal(read(p), 16) for p in bundled_images()]
    assert sum(r is None for r in reasons) >= 25
    assert any("not a multiple" in (r or "") for r in reasons)


def test_negative_positive_stays_in_the_stored_range(tmp_path):
    [path] = [p for p in bundled_images() if p.name == "emri_small.dcm"]  # 12 bits stored in 16
    scr = read(run(scramble_stage(4, flip=True), path, tmp_path / "scr.dcm"))
    plain = read(path).pixel_array
    assert scr.pixel_array.max() <= 4095 and scr.pixel_array.min() >= 0
    assert scr.pixel_array.max() > plain.max()  # the dark background turned bright in places


def test_scrambled_pixels_do_not_resemble_the_plain_ones_position_by_position(tmp_path):
    [path] = [p for p in bundled_images() if p.name == "CT_small.dcm"]
    plain = read(path).pixel_array.astype(float)
    for block, flip in ((16, False), (4, True)):
        scr = read(run(scramble_stage(block, flip), path, tmp_path / "scr.dcm")).pixel_array.astype(float)
        assert abs(np.corrcoef(plain.ravel(), scr.ravel())[0, 1]) < 0.3


def test_unscramble_with_another_key_is_refused(tmp_path):
    [path] = [p for p in bundled_images() if p.name == "CT_small.dcm"]
    scr = run(scramble_stage(16), path, tmp_path / "scr.dcm")
    with pytest.raises(QuarantineError, match=f"scrambled with key ID {KEY.key_id}; key 'other' has key ID"):
        run(Unscramble(Unscramble.Options(key="other")), scr, tmp_path / "back.dcm")


def test_scrambling_twice_and_unscrambling_a_plain_object_are_refused(tmp_path):
    [path] = [p for p in bundled_images() if p.name == "CT_small.dcm"]
    scr = run(scramble_stage(16), path, tmp_path / "scr.dcm")
    with pytest.raises(QuarantineError, match="already scrambled"):
        run(scramble_stage(16), scr, tmp_path / "twice.dcm")
    with pytest.raises(QuarantineError, match="not scrambled by pacsguard"):
        run(Unscramble(Unscramble.Options(key="vit")), path, tmp_path / "back.dcm")


def test_a_missing_key_is_refused_by_name(tmp_path):
    [path] = [p for p in bundled_images() if p.name == "CT_small.dcm"]
    with pytest.raises(QuarantineError, match="key 'vit' is not loaded"):
        run(scramble_stage(16), path, tmp_path / "scr.dcm", keys={"other": OTHER})


def test_keys_declare_a_secret_and_unscramble_undoes():
    [use] = Scramble.key_uses(Scramble.Options(key="vit"))
    assert (use.name, use.types, use.private) == ("vit", frozenset({"secret"}), False)
    [use] = Unscramble.key_uses(Unscramble.Options(key="vit"))
    assert use.private


def test_keyed_orders_are_stable_across_versions_and_depend_on_the_key():
    key = blocks.derive(b"\0" * 32, rows=32, columns=32, samples=1, block=4, flip=True)
    # pinned: an object scrambled today must unscramble after any upgrade
    assert key.sigma[:8].tolist() == PINNED_SIGMA
    assert key.pi[:8].tolist() == PINNED_PI
    assert key.flip[:8].tolist() == PINNED_FLIP
    assert sorted(key.sigma.tolist()) == list(range(64)) and sorted(key.pi.tolist()) == list(range(16))
    other = blocks.derive(b"\1" + b"\0" * 31, rows=32, columns=32, samples=1, block=4, flip=True)
    assert not np.array_equal(key.sigma, other.sigma) and not np.array_equal(key.pi, other.pi)
    bigger = blocks.derive(b"\0" * 32, rows=64, columns=32, samples=1, block=4, flip=True)
    assert np.array_equal(bigger.pi, key.pi)  # one pi per block size: one converted patch embedding
    assert "sigma" not in repr(key) and "pi=" not in repr(key)


PINNED_SIGMA = [19, 11, 1, 12, 32, 17, 2, 4]
PINNED_PI = [7, 1, 9, 3, 6, 14, 5, 2]
PINNED_FLIP = [False, True, False, False, True, True, True, False]
