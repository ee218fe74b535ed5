"""``pacsguard process``: a configured route's pipeline on files and folders, offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

CT, MR = Path(get_testdata_file("CT_small.dcm")), Path(get_testdata_file("MR_small.dcm"))


def run(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsguard.daemon.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def setup(tmp_path: Path) -> Path:
    config = tmp_path / "pacsguard.yaml"
    config.write_text("""
destinations: {out: {type: folder, path: unused}}
routes:
  - {name: mr-only, match: {Modality: MR}, pipeline: [{set-attributes: {set: {InstitutionName: OFFLINE}}}], to: [out]}
  - {name: plain, to: [out]}
""")
    study = tmp_path / "study"
    (study / "series1").mkdir(parents=True)
    shutil.copyfile(CT, study / "series1" / "ct.dcm")
    shutil.copyfile(MR, study / "series1" / "IM0002")  # no suffix, as many exports
    return config


def test_a_route_runs_on_a_folder_and_keeps_its_layout(tmp_path):
    config = setup(tmp_path)
    out = run("process", "--route", "mr-only", tmp_path / "study", "-o", tmp_path / "out", "--config", config,
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 input(s): 2 processed into" in out.stdout
    ct, mr = pydicom.dcmread(tmp_path / "out" / "series1" / "ct.dcm"), pydicom.dcmread(
        tmp_path / "out" / "series1" / "IM0002")
    assert ct.InstitutionName == mr.InstitutionName == "OFFLINE"  # match: not applied without --match
    assert mr.PixelData == pydicom.dcmread(MR).PixelData


def test_match_applies_the_route_conditions(tmp_path):
    config = setup(tmp_path)
    out = run("process", "--route", "mr-only", "--match", tmp_path / "study", "-o", tmp_path / "out",
              "--config", config, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "1 processed" in out.stdout and "1 not matched by the route" in out.stdout
    assert [p.name for p in (tmp_path / "out" / "series1").iterdir()] == ["IM0002"]


def test_what_fails_is_reported_with_its_reason_and_the_exit_code_says_so(tmp_path):
    config = setup(tmp_path)
    (tmp_path / "study" / "notes.txt").write_text("not an image\n" * 20)
    cut = tmp_path / "study" / "cut.dcm"
    cut.write_bytes(Path(get_testdata_file("JPEG2000.dcm")).read_bytes()[:1149])
    out = run("process", "--route", "plain", tmp_path / "study", tmp_path / "missing", "-o", tmp_path / "out",
              "--config", config, cwd=tmp_path)
    assert out.returncode == 1
    assert "4 input(s): 2 processed into" in out.stdout and "3 failed" in out.stdout
    assert f"FAILED {tmp_path / 'study' / 'notes.txt'}: not a DICOM file" in out.stderr
    assert "cut.dcm: unreadable DICOM file at element (0008,9215) DerivationCodeSequence" in out.stderr
    assert f"FAILED {tmp_path / 'missing'}: no such file or folder" in out.stderr
    assert not (tmp_path / "out" / "notes.txt").exists() and not (tmp_path / "out" / "cut.dcm").exists()
    # an unchanged object is copied as it is
    assert (tmp_path / "out" / "series1" / "ct.dcm").read_bytes() == CT.read_bytes()


def test_an_unknown_route_is_a_usage_error(tmp_path):
    config = setup(tmp_path)
    out = run("process", "--route", "nope", tmp_path / "study", "-o", tmp_path / "out", "--config", config,
              cwd=tmp_path)
    assert out.returncode == 2
    assert "no route 'nope' in the config (routes: mr-only, plain)" in out.stderr


def test_any_stage_runs_offline_and_a_sealed_object_is_written_as_pgenc(tmp_path):
    """A route that seals objects for a key (encrypt, scope file): the output is X.pgenc,
    and the key holder's ``pacsguard decrypt`` gives the original bytes back."""
    assert run("keys", "generate", "vault", "--type", "x25519", "--out", tmp_path / "keys", cwd=tmp_path).returncode == 0
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"""
keys: {{vault: {{private: {tmp_path / 'keys' / 'vault.key'}}}}}
destinations: {{out: {{type: folder, path: unused}}}}
routes: [{{name: seal, pipeline: [{{encrypt: {{scope: file, recipients: [vault]}}}}], to: [out]}}]
""")
    out = run("process", "--route", "seal", CT, "-o", tmp_path / "out", "--config", config, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sealed = tmp_path / "out" / "CT_small.dcm.pgenc"
    assert sealed.is_file() and CT.read_bytes()[128:132] not in sealed.read_bytes()[:200]
    back = run("decrypt", sealed, "--key", "vault", "-o", tmp_path / "back.dcm", "--config", config, cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "back.dcm").read_bytes() == CT.read_bytes()
