"""The benchmark corpus: a generated 16-bit CT series plus pydicom's bundled images.

Every contender gets exactly the same files. The corpus is grouped by series because the
sender opens one association per series (as a modality does; the bundled images, from many
tiny series, share one).

Also here: the dcmtk ``storescu`` configuration that proposes each file's own transfer
syntax (storescu's default proposes only uncompressed syntaxes and would fail on, or
transcode, the compressed bundled images), and a fast generator for the large memory
burst (one template slice cloned with fresh, same-length SOP Instance UIDs).
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import UID

from .common import log, peers

# Files in pydicom's test data that parse but that no real sender would send as they are
# (wrong VRs declared in the file) are still fine: the sink stores bytes. Only these are left out:
_SKIP_NAMES = ("truncated", "NoMeta", "no_meta")

UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2")


@dataclass
class CorpusFile:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    series: str
    size: int


@dataclass
class Corpus:
    root: Path
    files: list[CorpusFile] = field(default_factory=list)
    ct_count: int = 0
    ct_size: int = 0
    bundled_count: int = 0
    storescu_cfg: Path | None = None
    excluded: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]

    def series(self) -> list[list[CorpusFile]]:
        """Files grouped by series, in first-seen order (one association each).

        The bundled images come from ~20 tiny series of one to a few files; they travel
        together on one association, or storescu's start-up (~50 ms a process) would weigh
        more than the transfer in the burst figures.
        """
        groups: "OrderedDict[str, list[CorpusFile]]" = OrderedDict()
        for f in self.files[: self.ct_count]:
            groups.setdefault(f.series, []).append(f)
        if self.files[self.ct_count:]:
            groups["pydicom-bundled"] = self.files[self.ct_count:]
        return list(groups.values())

    def ct_files(self) -> list[CorpusFile]:
        return self.files[: self.ct_count]

    def describe(self) -> dict:
        return {
            "files": len(self.files),
            "bytes": self.bytes,
            "series": len({f.series for f in self.files}),
            "associations": len(self.series()),
            "ct_series": {"images": self.ct_count, "rows": self.ct_size, "columns": self.ct_size,
                          "bits": 16, "transfer_syntax": "Explicit VR Little Endian",
                          "bytes": sum(f.size for f in self.ct_files())},
            "pydicom_bundled": {"images": self.bundled_count,
                                "bytes": sum(f.size for f in self.files[self.ct_count:])},
            "excluded_bundled": self.excluded,
        }


def describe_file(path: Path) -> CorpusFile | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's test files are odd on purpose
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    sop_class = (meta.get("MediaStorageSOPClassUID") if meta is not None else None) or ds.get("SOPClassUID")
    sop = (meta.get("MediaStorageSOPInstanceUID") if meta is not None else None) or ds.get("SOPInstanceUID")
    if not ts or not sop_class or not sop:
        return None
    series = str(ds.get("SeriesInstanceUID") or "")
    if not series or not ds.get("StudyInstanceUID"):
        series = ""  # a PACS refuses it (Orthanc: OutOfResources); see bundled_candidates
    return CorpusFile(Path(path), str(sop_class), str(sop), str(ts), series, path.stat().st_size)


def bundled_candidates(excluded: list[str] | None = None) -> list[CorpusFile]:
    """pydicom's bundled Part-10 files (read from the installed package, no download) that
    a PACS would take: SOP Class/Instance, Study and Series Instance UIDs present, the SOP
    Instance UID not seen before. ``excluded`` collects the others with the reason."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    out, seen = [], set()
    excluded = excluded if excluded is not None else []
    for p in sorted(folder.glob("*.dcm")):
        if any(s in p.name for s in _SKIP_NAMES):
            excluded.append(f"{p.name} (broken on purpose)")
            continue
        f = describe_file(p)
        if f is None:
            excluded.append(f"{p.name} (no file meta / SOP UIDs)")
        elif f.sop_instance in seen:
            excluded.append(f"{p.name} (duplicate SOP Instance UID)")
        elif not f.series:
            excluded.append(f"{p.name} (no Study/Series Instance UID)")
        else:
            seen.add(f.sop_instance)
            out.append(f)
    return out


def write_storescu_config(path: Path, files: list[CorpusFile]) -> Path:
    """A storescu ``--config-file`` profile ``Bench`` proposing every (SOP class, transfer
    syntax) pair of the corpus as it is, so no file is transcoded on the way."""
    pairs: "OrderedDict[str, list[str]]" = OrderedDict()
    for f in files:
        tss = pairs.setdefault(f.sop_class, [])
        if f.transfer_syntax not in tss:
            tss.append(f.transfer_syntax)
    ts_groups = ["[Uncompressed]"] + [f"TransferSyntax{i + 1} = {ts}" for i, ts in enumerate(UNCOMPRESSED)]
    contexts, n_ctx = [], 0
    other: "OrderedDict[str, str]" = OrderedDict()
    for sop_class, tss in pairs.items():
        n_ctx += 1
        contexts.append(f"PresentationContext{n_ctx} = {sop_class}\\Uncompressed")
        for ts in tss:
            if ts in UNCOMPRESSED:
                continue
            group = other.setdefault(ts, f"TS{len(other) + 1}")
            n_ctx += 1
            contexts.append(f"PresentationContext{n_ctx} = {sop_class}\\{group}")
    if n_ctx > 128:
        raise ValueError(f"corpus needs {n_ctx} presentation contexts (DICOM allows 128)")
    for ts, group in other.items():
        ts_groups += [f"[{group}]", f"TransferSyntax1 = {ts}"]
    text = "\n".join(["[[TransferSyntaxes]]", *ts_groups, "", "[[PresentationContexts]]", "[Bench]",
                      *contexts, "", "[[Profiles]]", "[Bench]", "PresentationContexts = Bench", ""])
    path.write_text(text)
    return path


def build(root: Path, *, n: int, size: int = 512, bundled: bool = True, precheck: bool = True,
          seed: int = 0) -> Corpus:
    """Generate the CT series (``n`` slices of ``size`` x ``size``) and add pydicom's images."""
    from conftest import write_ct_series  # tests/conftest.py

    root.mkdir(parents=True, exist_ok=True)
    log(f"corpus: generating {n} CT slices {size}x{size} int16")
    ct_paths = write_ct_series(root / "ct", n, size=size, seed=seed) if n else []
    files = [describe_file(p) for p in ct_paths]
    corpus = Corpus(root=root, files=files, ct_count=len(files), ct_size=size)
    if bundled:
        extra = bundled_candidates(corpus.excluded)
        if precheck:
            extra, refused = _precheck(root, extra)
            corpus.excluded += [f"{name} (refused by dcmtk storescu -> storescp)" for name in refused]
        corpus.files += extra
        corpus.bundled_count = len(extra)
    corpus.storescu_cfg = write_storescu_config(root / "storescu-bench.cfg", corpus.files)
    log(f"corpus: {len(corpus.files)} files, {corpus.bytes / 1e6:.1f} MB "
        f"({corpus.ct_count} CT + {corpus.bundled_count} bundled)")
    return corpus


def _precheck(root: Path, files: list[CorpusFile]) -> tuple[list[CorpusFile], list[str]]:
    """Keep the bundled files that dcmtk storescu -> storescp sends and stores as they are."""
    from .senders import storescu_burst
    from .sink import Sink

    cfg = write_storescu_config(root / "precheck.cfg", files)
    sink_dir = root / "precheck-sink"
    with Sink(sink_dir, max_pdu=131072) as sink:
        sent = storescu_burst(sink.port, "SINK", _by_series(files), cfg, timeout=120)
        sink.wait_for(sent.acked, timeout=30)
        stored = sink.arrivals()
        sink.clear()
    ok = {s.uid for s in sent.items if s.status == 0 and s.uid in stored}
    keep = [f for f in files if f.sop_instance in ok]
    dropped = [f.path.name for f in files if f.sop_instance not in ok]
    sink_dir.rmdir()
    return keep, dropped


def _by_series(files: list[CorpusFile]) -> list[list[CorpusFile]]:
    groups: "OrderedDict[str, list[CorpusFile]]" = OrderedDict()
    for f in files:
        groups.setdefault(f.series, []).append(f)
    return list(groups.values())


def warmup_series(root: Path, n: int = 4) -> list[CorpusFile]:
    """A few small CT slices (own UIDs) sent before each measured run to warm the path up."""
    from conftest import write_ct_series

    paths = write_ct_series(root / "warmup", n, size=64, seed=99)
    return [describe_file(p) for p in paths]


# --- the large burst: one template, cloned with same-length UIDs ------------------------

def clone_series(folder: Path, n: int, *, size: int = 512, seed: int = 7) -> list[CorpusFile]:
    """``n`` CT slices from one generated template, each with its own SOP Instance UID.

    Byte-level copies (the UID is replaced in place, same length), so thousands of
    0.5 MB files take seconds, not minutes. The pixels are the same in every clone.
    """
    from conftest import write_ct_series

    folder.mkdir(parents=True, exist_ok=True)
    tmpl_path = write_ct_series(folder / "template", 1, size=size, seed=seed)[0]
    ds = pydicom.dcmread(tmpl_path)
    base = "1.2.826.0.1.3680043.8.498." + str(1 + secrets.randbelow(9)) + "".join(
        str(secrets.randbelow(10)) for _ in range(15))
    first = UID(f"{base}.{100000}")
    ds.SOPInstanceUID = first
    ds.file_meta.MediaStorageSOPInstanceUID = first
    ds.save_as(tmpl_path, enforce_file_format=True)
    data = tmpl_path.read_bytes()
    needle = str(first).encode()
    if data.count(needle) != 2:
        raise RuntimeError("template UID should occur exactly twice (file meta and data set)")
    out = []
    for i in range(n):
        uid = f"{base}.{100000 + i}".encode()
        assert len(uid) == len(needle)
        path = folder / f"burst_{i:06d}.dcm"
        tmp = folder / f".burst_{i:06d}.tmp"
        tmp.write_bytes(data.replace(needle, uid))
        os.replace(tmp, path)
        out.append(CorpusFile(path, str(ds.SOPClassUID), uid.decode(), str(ds.file_meta.TransferSyntaxUID),
                              str(ds.SeriesInstanceUID), len(data)))
    tmpl_path.unlink()
    (folder / "template").rmdir()
    return out
