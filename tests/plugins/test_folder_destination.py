"""The folder destination and its path template: no attribute value can leave the root."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file

from pacsguard.daemon.errors import DeliveryError
from pacsguard.plugins.folder.destination import FolderDestination
from pacsguard.plugins.folder.template import (
    DEFAULT_TEMPLATE,
    MAX_COMPONENT,
    MISSING,
    render,
    sanitize_component,
    template_fields,
)

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
CUSTOM_TEMPLATE = "{PatientID}/{StudyDescription}/{SOPInstanceUID}.dcm"

HOSTILE = {
    "dotdot-slash": "../../etc",
    "absolute": "/abs/path",
    "nul": "1.2.3\x00../../evil",
    "long": "9" * 500,
    "dotdot": "..",
    "backslashes": "..\\..\\windows",
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The object to send, kept outside every test's tmp_path so a walk of it sees only output."""
    path = tmp_path_factory.mktemp("source") / "ct.dcm"
    shutil.copyfile(CT_SMALL, path)
    return path


def header(**values) -> pydicom.Dataset:
    ds = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    with warnings.catch_warnings():  # hostile values are invalid for their VR, on purpose
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            if value is None:
                del ds[keyword]
            else:
                setattr(ds, keyword, value)
    return ds


def destination(root: Path, template: str = DEFAULT_TEMPLATE) -> FolderDestination:
    return FolderDestination("out", FolderDestination.Options(path=root, template=template))


def walk(top: Path) -> tuple[set[Path], set[Path]]:
    files, dirs = set(), set()
    for dirpath, dirnames, filenames in os.walk(top):
        dirs.update(Path(dirpath, d) for d in dirnames)
        files.update(Path(dirpath, f) for f in filenames)
    return files, dirs


# --- template validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{NotAKeyword}/{SOPInstanceUID}.dcm", "is not a DICOM keyword"),
        ("{0}/{SOPInstanceUID}.dcm", "is not a DICOM keyword"),
        ("{PatientID:>20}/{SOPInstanceUID}.dcm", "format specs and conversions are not supported"),
        ("{PatientID!r}/{SOPInstanceUID}.dcm", "format specs and conversions are not supported"),
        ("{PatientID.__class__}/x.dcm", "is not a DICOM keyword"),
        ("/srv/{SOPInstanceUID}.dcm", "template must be a relative path"),
        ("", "template must be a relative path"),
        ("../{SOPInstanceUID}.dcm", "must not contain '..'"),
        ("{PatientID}/../../{SOPInstanceUID}.dcm", "must not contain '..'"),
        ("{PatientID}/{SOPInstanceUID}.dcm/..", "must not contain '..'"),
    ],
)
def test_bad_templates_are_refused(template, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        template_fields(template)
    with pytest.raises(ValidationError):
        FolderDestination.Options(path="/tmp/x", template=template)


def test_good_templates_list_their_fields():
    assert template_fields(DEFAULT_TEMPLATE) == ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    assert template_fields(CUSTOM_TEMPLATE) == ["PatientID", "StudyDescription", "SOPInstanceUID"]
    assert template_fields("{Modality}-{SOPInstanceUID}.dcm") == ["Modality", "SOPInstanceUID"]


def test_template_that_renders_no_path_is_refused_at_config_time():
    with pytest.raises(ValueError):
        template_fields(".")


def test_empty_field_is_refused():
    with pytest.raises(ValueError):
        template_fields("{}/{SOPInstanceUID}.dcm")


def test_relative_root_becomes_absolute():
    opts = FolderDestination.Options(path="some/where")
    assert opts.path.is_absolute() and opts.path.parts[-2:] == ("some", "where")
    assert opts.template == DEFAULT_TEMPLATE and opts.fsync is True
    with pytest.raises(ValidationError):
        FolderDestination.Options(path="/tmp/x", mode="0644")


# --- sanitize_component --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.840.10008", "1.2.840.10008"),
        ("a/b", "a_b"),
        ("/abs/path", "_abs_path"),
        ("a\\b", "a_b"),
        ("a\0b", "a_b"),
        ("a\x01b\x1fc\x7fd", "a_b_c_d"),
        ("line\nbreak\ttab", "line_break_tab"),
        (".", "_"),
        ("..", "__"),
        ("...", "___"),
        (" .. ", "__"),
        (".hidden", "hidden"),
        ("..secret", "secret"),
        ("../../etc", "_.._etc"),
        ("", "_"),
        ("   ", "_"),
        ("DOE^JANE", "DOE^JANE"),
    ],
)
def test_sanitize_component(value, expected):
    assert sanitize_component(value) == expected


NASTY = ["/", "\\", "\0", ".", "..", "...", "./.", "../", "\x00..", ". .", "\n", ".\t.", "x" * 500,
         "/" * 500, "." * 500, "é" * 500, "a" * 119 + "é", "😀" * 200]


@pytest.mark.parametrize("value", NASTY, ids=range(len(NASTY)))
def test_sanitized_component_is_always_one_safe_name(value):
    s = sanitize_component(value)
    assert s and s not in (".", "..")
    assert not s.startswith(".")
    assert not any(ch in s for ch in "/\\\0") and all(32 <= ord(ch) != 127 for ch in s)
    assert len(s.encode("utf-8")) <= MAX_COMPONENT
    assert sanitize_component(value) == s  # stable


def test_long_values_are_cut_but_stay_distinct():
    a, b = "1." * 250, "1." * 249 + "2."
    assert len(a) == len(b) == 500
    sa, sb = sanitize_component(a), sanitize_component(b)
    assert len(sa.encode()) <= MAX_COMPONENT and len(sb.encode()) <= MAX_COMPONENT
    assert sa != sb
    assert sa.startswith("1.1.1.") and sb.startswith("1.1.1.")
    assert sanitize_component("x" * MAX_COMPONENT) == "x" * MAX_COMPONENT  # at the limit: kept whole


# --- render --------------------------------------------------------------------------


def test_render_uses_attribute_values():
    ds = header()
    assert str(render(DEFAULT_TEMPLATE, ds)) == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    assert str(render("{ImageType}/{SOPInstanceUID}.dcm", ds)).startswith("ORIGINAL_PRIMARY_AXIAL/")


@pytest.mark.parametrize("value", [None, ""], ids=["absent", "empty"])
def test_missing_attribute_renders_as_unknown(value):
    rel = render(CUSTOM_TEMPLATE, header(StudyDescription=value))
    assert rel.parts[1] == MISSING == "UNKNOWN"


def test_person_name_renders_as_its_text():
    rel = render("{PatientName}/{SOPInstanceUID}.dcm", header(PatientName="DOE^JANE"))
    assert rel.parts[0] == "DOE^JANE"


# --- FolderDestination.send ----------------------------------------------------------

CASES = [(DEFAULT_TEMPLATE, kw, name) for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
         for name in HOSTILE] + \
        [(CUSTOM_TEMPLATE, kw, name) for kw in ("PatientID", "StudyDescription", "SOPInstanceUID")
         for name in HOSTILE]


@pytest.mark.parametrize(("template", "keyword", "case"), CASES,
                         ids=[f"{'default' if t == DEFAULT_TEMPLATE else 'custom'}-{k}-{c}" for t, k, c in CASES])
def test_hostile_values_never_leave_the_root(tmp_path, source, template, keyword, case):
    root = tmp_path / "deep" / "er" / "root"  # room above the root for '..' to land in
    dest = destination(root, template)
    value = HOSTILE[case]
    for attempt in range(2):  # a retry overwrites, it never adds a second file
        dest.send(source, header(**{keyword: value}))
        files, dirs = walk(tmp_path)
        outside = {p for p in files | dirs if not p.is_relative_to(root) and p not in root.parents}
        assert outside == set()
        assert len(files) == 1, sorted(map(str, files))
    (written,) = files
    rel = written.relative_to(root)
    assert len(rel.parts) == 3  # one component per template part: nothing collapsed or split
    assert written.resolve().is_relative_to(root.resolve())
    assert written.read_bytes() == source.read_bytes()
    assert not written.name.startswith(".") and not written.name.endswith(".tmp")
    assert all(len(part.encode()) <= MAX_COMPONENT + len(".dcm") for part in rel.parts)
    assert sanitize_component(value) in [p.removesuffix(".dcm") for p in rel.parts]


def test_every_hostile_value_in_one_root(tmp_path, source):
    root = tmp_path / "a" / "b" / "root"
    dest = destination(root, CUSTOM_TEMPLATE)
    seen: set[Path] = set()
    for keyword in ("PatientID", "StudyDescription", "SOPInstanceUID"):
        for value in HOSTILE.values():
            dest.send(source, header(**{keyword: value}))
            files, dirs = walk(tmp_path)
            assert all(p.is_relative_to(root) or p in root.parents for p in files | dirs)
            new = files - seen
            assert len(new) == 1, (keyword, value, sorted(map(str, new)))
            seen = files
    assert all(p.read_bytes() == source.read_bytes() for p in seen)
    assert not [p for p in seen if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_send_writes_the_file_at_the_rendered_path(tmp_path, source):
    root = tmp_path / "root"  # created on first send
    ds = header(PatientID="PID-1", StudyDescription=None)
    destination(root, CUSTOM_TEMPLATE).send(source, ds)
    target = root / "PID-1" / "UNKNOWN" / f"{ds.SOPInstanceUID}.dcm"
    assert target.read_bytes() == source.read_bytes()
    files, _ = walk(tmp_path)
    assert files == {target}


def test_send_below_a_regular_file_fails_cleanly(tmp_path, source):
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a folder")
    dest = destination(blocker / "root")
    with pytest.raises(DeliveryError) as excinfo:
        dest.send(source, header())
    assert "cannot write to destination folder" in excinfo.value.reason
    files, _ = walk(tmp_path)
    assert files == {blocker}
    assert blocker.read_bytes() == b"not a folder"


def test_source_file_vanishing_leaves_no_temp_file(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DeliveryError) as excinfo:
        destination(root).send(tmp_path / "gone.dcm", header())
    assert excinfo.value.permanent is False  # ENOENT: retried
    files, _ = walk(root)
    assert files == set()


def test_temporary_files_left_by_a_kill_are_removed_at_start(tmp_path, source):
    """A kill -9 during a write leaves ROOT/.pacsguard-tmp/*.tmp: the destination removes
    them when it starts sending again; objects are written as before."""
    from pacsguard.daemon.delivery import DestinationWorker
    from pacsguard.daemon.spool import Spool

    root = tmp_path / "out"
    leftover = root / ".pacsguard-tmp" / "0123abcd.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an object")
    dest = destination(root)

    class Spec:
        parallel, retry = 1, None

    spool = Spool(tmp_path / "spool")
    worker = DestinationWorker("out", dest, Spec(), spool, hook=None)
    worker.start()
    worker.stop(5)
    spool.close()
    assert not leftover.exists()
    dest.send(source, header())
    files = [p for p in root.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{header().SOPInstanceUID}.dcm"]
