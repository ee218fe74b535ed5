"""The de-identification benchmark's parts: the row classifier and the peers on real files."""

from __future__ import annotations

import copy

import pytest
from pydicom.dataelem import DataElement

from tests.benchmarks import deid

pytest.importorskip("dicognito")
pytest.importorskip("deid")

from test_deidentify_table import ROWS, row_elements, synthetic  # noqa: E402 (deid puts tests/plugins on the path)


def _row(rid: str) -> dict:
    return next(r for r in ROWS if r["id"] == rid)


def test_classifier_right_and_wrong_outcomes():
    row = _row("00080050")  # Accession Number: Z
    elems = row_elements(row)
    before = copy.deepcopy(elems)
    ds = synthetic(elems)
    assert deid.classify_row(row, before, ds) == "kept"
    assert not deid.right(row["basicProfile"], "kept")
    ds.AccessionNumber = ""
    assert deid.classify_row(row, before, ds) == "zero-length"
    assert deid.right("Z", "zero-length")
    del ds.AccessionNumber
    assert deid.classify_row(row, before, ds) == "removed" and not deid.right("Z", "removed")
    uid = DataElement(0x00080018, "UI", "1.2.3.4")
    ds = synthetic([copy.deepcopy(uid)])
    ds.SOPInstanceUID = "2.25.1"
    assert deid.classify_element(uid, ds) == "UID-replaced" and deid.right("U", "UID-replaced")
    assert not deid.right("X", "UID-replaced") and deid.right("X/Z/U*", "UID-replaced")


def test_every_tool_is_classified_on_rows():
    tools = deid.tools()
    rows = [_row("00080050"), _row("00100010"), _row("00080018"), _row("00184000")]
    out = deid.row_outcomes(tools, rows)
    assert set(out) == {t.name for t in tools}
    for res in out.values():
        assert len(res) == len(rows)
        assert all(not o.startswith("error") for _, o, _ in res.values())
    assert all(deid.right(a, o) for a, o, _ in out[tools[0].name].values())


def test_the_peers_run_on_two_bundled_files():
    tools = deid.tools()
    images = [im for im in deid.corpus() if im[0] in ("CT_small.dcm", "MR_small.dcm")]
    assert len(images) == 2
    times, quarantined, failed, n, per_image = deid.time_images(tools, images, repeat=2)
    assert n == 2 and not quarantined and not failed
    for t in tools:
        assert len(times[t.name]) == 2 and all(x > 0 for x in times[t.name])
    assert [sorted(b) for b in per_image] == [sorted(t.name for t in tools)] * 2
    ratios = deid.same_image_ratios(per_image, tools)
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    ds = copy.deepcopy(images[0][1])
    for t in tools[1:]:
        out = t(copy.deepcopy(ds))
        assert out != ds  # the peer changed something (a real run, not a pass-through)
