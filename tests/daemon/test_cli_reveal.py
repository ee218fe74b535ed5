"""``pacsguard reveal``: a carrier described without a key; with a key of the config's
key store, the original pixels and header written to a new file; failures per file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacsguard.daemon.cli import main
from tests.conftest import write_ct_series
from tests.plugins.encryption_corpus import differing


@pytest.fixture
def site(tmp_path) -> dict:
    """Keys generated as an operator would, a config naming them, and a study embedded by
    ``pacsguard process`` through a route that then rewrites the identity."""
    for name in ("reid", "other"):
        assert main(["keys", "generate", name, "--type", "x25519", "--out", str(tmp_path / "keys")]) == 0
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"""
keys:
  reid: {{private: {tmp_path / 'keys' / 'reid.key'}}}
  other: {{private: {tmp_path / 'keys' / 'other.key'}}}
destinations: {{out: {{type: folder, path: unused}}}}
routes:
  - name: hide
    pipeline:
      - embed: {{recipients: [reid], attributes: [PatientName, PatientID, StudyDate]}}
      - set-attributes: {{set: {{PatientName: ANONYMOUS, PatientID: ANON}}, remove: [StudyDate]}}
    to: [out]
""")
    study = write_ct_series(tmp_path / "study", 2, size=128)
    assert main(["process", "--route", "hide", str(tmp_path / "study"), "-o", str(tmp_path / "hidden"),
                 "--config", str(config), "-q"]) == 0
    return {"config": str(config), "study": study, "hidden": tmp_path / "hidden", "tmp": tmp_path}


def test_without_a_key_it_says_only_what_the_carrier_shows(site, capsys):
    capsys.readouterr()
    assert main(["reveal", str(site["hidden"]), "--config", site["config"]]) == 0
    out = capsys.readouterr().out
    assert out.count("carrier present (reversible, threshold") == 2
    assert "HPKE-X25519-SHA256-AES256GCM" in out and "DOE" not in out and "PID-0001" not in out
    assert main(["reveal", str(site["hidden"] / "ct_0_0000.dcm"), "--inspect", "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["method"] == "reversible" and report["carrier_bytes"] > 100
    assert [r["method"] for r in report["recipients"]] == ["HPKE-X25519-SHA256-AES256GCM"]
    assert not list(site["hidden"].glob("*.revealed.dcm"))


def test_with_the_key_the_original_pixels_and_header_come_back(site, capsys):
    out = site["tmp"] / "back"
    assert main(["reveal", str(site["hidden"]), "-o", str(out), "--key", "reid", "--config", site["config"]]) == 0
    said = capsys.readouterr().out
    assert "revealed 2, failed 0" in said and "pixels restored" in said
    assert "attributes restored: StudyDate, PatientName, PatientID" in said
    for src in site["study"]:
        original, back = pydicom.dcmread(src), pydicom.dcmread(out / src.name)
        assert np.array_equal(back.pixel_array, original.pixel_array)
        assert back.PixelData == original.PixelData
        assert differing(back, original) == []
        assert pydicom.dcmread(site["hidden"] / src.name).PatientName == "ANONYMOUS"


def test_beside_the_input_and_never_over_an_existing_file(site, capsys):
    hidden = site["hidden"] / "ct_0_0000.dcm"
    assert main(["reveal", str(hidden), "--key", "reid", "--config", site["config"]]) == 0
    revealed = hidden.with_name("ct_0_0000.revealed.dcm")
    first = revealed.read_bytes()
    capsys.readouterr()
    assert main(["reveal", str(hidden), "--key", "reid", "--config", site["config"]]) == 1
    assert "exists: not overwritten" in capsys.readouterr().err
    assert revealed.read_bytes() == first


def test_failures_are_reported_per_file(site, capsys):
    out = site["tmp"] / "nope"
    assert main(["reveal", str(site["hidden"]), "-o", str(out), "--key", "other", "--config", site["config"]]) == 1
    err = capsys.readouterr().err
    assert err.count("not encrypted for key ID") == 2
    assert not list(out.rglob("*.dcm"))
    assert main(["reveal", str(site["study"][0]), "-o", str(out / "x.dcm"), "--key", "reid",
                 "--config", site["config"]]) == 1
    assert "no pacsguard carrier in the pixel data" in capsys.readouterr().err
    assert main(["reveal", str(site["tmp"] / "missing.dcm"), "--key", "reid", "--config", site["config"]]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["reveal", str(site["hidden"]), "--key", "partner", "--config", site["config"]]) == 1
    assert "no key 'partner' in the key store" in capsys.readouterr().err


def test_a_changed_pixel_is_reported_and_nothing_is_written(site, capsys):
    hidden = site["hidden"] / "ct_0_0001.dcm"
    ds = pydicom.dcmread(hidden)
    arr = ds.pixel_array.copy()
    arr[64, 64] += 1
    ds.PixelData = arr.tobytes()
    tampered = site["tmp"] / "tampered.dcm"
    ds.save_as(tampered)
    assert main(["reveal", str(tampered), "--key", "reid", "--config", site["config"]]) == 1
    assert "changed after embedding" in capsys.readouterr().err
    assert not Path(str(tampered).replace(".dcm", ".revealed.dcm")).exists()
