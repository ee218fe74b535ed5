"""Helpers for the end-to-end tests: DICOM files, drops into a watched folder, configs.

Imported as ``import e2e_util`` (pytest puts ``tests/e2e`` on ``sys.path``). Everything
here drives the real ``pacsguard run`` subprocess through ``tests/peers.py``; nothing
mocks the service.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import threading
import time
from pathlib import Path

import pydicom
import yaml
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

TESTS = Path(__file__).resolve().parents[1]
PLUGIN_SITE = Path(__file__).resolve().parent / "plugin_site"
PATIENT_NAME = "DOE^JANE"  # the PHI marker: must never appear in a service log
PATIENT_ID = "PID-E2E-4711"


def _root_conftest():
    """tests/conftest.py under a private module name (``conftest`` itself is ambiguous
    once several conftest files are loaded)."""
    spec = importlib.util.spec_from_file_location("pacsguard_tests_root_conftest", TESTS / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ROOT_CONFTEST = _root_conftest()
write_ct_series = ROOT_CONFTEST.write_ct_series


def bundled_images() -> list[Path]:
    """pydicom's bundled images, as tests/conftest.py selects them."""
    return ROOT_CONFTEST.bundled_images()


local_bundled_images = bundled_images  # the earlier name (other test modules import it)


def make_image(path: Path, *, size: int = 64, modality: str = "CT", patient: str = PATIENT_NAME,
               patient_id: str = PATIENT_ID, study: str | None = None, series: str | None = None,
               sop: str | None = None, instance: int = 1, **attrs) -> str:
    """Write one small synthetic image (Explicit VR LE); return its SOP Instance UID.

    ``attrs`` are extra attributes by keyword (values are written as given, even if they
    break the VR's rules: hostile-value tests need that).
    """
    import numpy as np

    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    sop = sop or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName, ds.PatientID = patient, patient_id
    ds.Modality, ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = modality, "20240102", 1, instance
    ds.StudyDescription = f"{modality} E2E"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(size * size, dtype=np.uint16).reshape(size, size) * (instance % 7 + 1)
                    % 4096).astype(np.uint16).tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def visible_files(root: Path) -> list[Path]:
    """Regular files below ``root`` whose names do not start with a dot."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def all_files(root: Path) -> list[Path]:
    """Every non-directory entry below ``root`` (files, links, fifos), hidden ones too."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out.extend(Path(dirpath) / f for f in filenames)
        out.extend(Path(dirpath) / d for d in dirnames if os.path.islink(Path(dirpath) / d))
    return sorted(out)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped by anyone) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# --- dropping files into a watched folder -----------------------------------------------


def drop_copy(src: Path, inbound: Path, name: str | None = None) -> Path:
    """Write directly under the final name, quickly (open, write, close)."""
    dest = inbound / (name or src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def drop_rename(src: Path, inbound: Path, name: str | None = None) -> Path:
    """Write under a temp name inside the watched folder (ignored: ``*.tmp``), then rename."""
    dest = inbound / (name or src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.x.tmp")
    shutil.copyfile(src, tmp)
    os.rename(tmp, dest)
    return dest


def slow_write(src: Path, dest: Path, *, chunks: int = 4, pause: float = 0.5) -> None:
    """Write ``src`` to ``dest`` (its final name) in ``chunks`` pieces, sleeping ``pause``
    seconds between them, with the file open the whole time; close at the end."""
    data = Path(src).read_bytes()
    step = -(-len(data) // chunks)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            os.fsync(fh.fileno())
            if i + step < len(data):
                time.sleep(pause)


def slow_writers(pairs: list[tuple[Path, Path]], **kw) -> list[threading.Thread]:
    """Start one slow writer thread per (src, dest); returns the threads (join them)."""
    errors: list[BaseException] = []

    def run(src, dest):
        try:
            slow_write(src, dest, **kw)
        except BaseException as exc:  # noqa: BLE001 - reported by the joiner
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.errors = errors  # type: ignore[attr-defined]
    return threads


# --- configs ----------------------------------------------------------------------------


def folder_config(tmp: Path, *, destinations: dict, routes: list, settle: float = 0.2,
                  rescan: float = 1.0, metrics: dict | None = None, **extra) -> str:
    """YAML for a service watching ``tmp/in`` with its spool in ``tmp/spool``."""
    cfg = {
        "watch": [{"name": "in", "path": str(tmp / "in"), "settle": settle, "rescan_interval": rescan}],
        "spool": {"path": str(tmp / "spool")},
        "processing": {"workers": 2, "batch_size": 8},
        "destinations": destinations,
        "routes": routes,
        "logging": {"level": "info", "format": "json"},
        "metrics": metrics if metrics is not None else {"enabled": False},
        "shutdown_timeout": "10s",
    }
    cfg.update(extra)
    return yaml.safe_dump(cfg, sort_keys=False)


def events(svc, event: str) -> list[dict]:
    return [line for line in svc.log_lines() if line.get("event") == event]


def count_event(svc, event: str) -> int:
    return svc.log_text().count(f'"event": "{event}"')


def jobs_done(svc) -> int:
    return svc.status()["jobs"]["done"]


def settled(svc) -> int:
    """Deliveries done plus objects and deliveries quarantined, from the service log (each
    of these events is logged after its spool transaction commits). Polling the log is
    cheap; each ``pacsguard status`` call starts a Python process (about a second)."""
    text = svc.log_text()
    return sum(text.count(f'"event": "{e}"')
               for e in ("object delivered", "object quarantined", "delivery quarantined"))
