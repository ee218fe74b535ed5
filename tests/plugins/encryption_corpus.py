"""Every image that ships with pydicom and pydicom-data, for the encryption round trips.

All Part-10 files with Pixel Data in pydicom's own test files and in the pydicom-data
package (files on disk only: no download), except those pydicom cannot decode. On this
corpus those are (and ``test_the_corpus_skips_only_known_broken_files`` keeps it so):

- ``JPEG-lossy.dcm``: its JPEG codestream is damaged (libjpeg error; pydicom's own tests
  use it as a failure case; ``JPGExtended.dcm`` is the good copy);
- ``JPEG2000-embedded-sequence-delimiter.dcm``: openjpeg cannot decode its codestream;
- ``MR_truncated.dcm``: the pixel data is cut short;
- ``badVR.dcm``: Number of Frames is ``1A``;
- ``meta_missing_tsyntax.dcm``, ``nested_priv_SQ.dcm``: no transfer syntax / no Image
  Pixel module.

Files without file meta information (``no_meta.dcm``, ``ExplVR_*NoMeta.dcm``,
``OT-PAL-8-face.dcm``, ``rtstruct.dcm``) are not Part-10 files and never reach a stage.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

KNOWN_UNDECODABLE = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "MR_truncated.dcm",
                     "badVR.dcm", "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm"}


def _all_files() -> list[Path]:
    from pydicom.data.data_manager import DATA_ROOT, DataTypes, external_data_sources

    files = [Path(p) for p in (Path(DATA_ROOT) / "test_files").rglob("*.dcm")]
    for source in external_data_sources().values():
        files.extend(Path(p) for p in source.get_paths("*.dcm", DataTypes.DATASET))
    return sorted(set(files), key=lambda p: (p.name, str(p)))


@lru_cache(maxsize=None)
def corpus() -> tuple[list[Path], list[str]]:
    """(the decodable Part-10 images, the names of those skipped)."""
    import pydicom

    keep, skipped = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in _all_files():
            try:
                ds = pydicom.dcmread(p)
            except Exception:
                continue  # not Part-10 (no file meta): never reaches a stage
            if "PixelData" not in ds:
                continue
            try:
                ds.pixel_array
            except Exception:
                skipped.append(p.name)
                continue
            keep.append(p)
    return keep, skipped


def images() -> list[Path]:
    return corpus()[0]


def image(name: str) -> Path:
    return next(p for p in images() if p.name == name)


def ident(path: Path) -> str:
    return path.name if sum(p.name == path.name for p in images()) == 1 else f"{path.parent.name}/{path.name}"


def differing(a, b, ignore=()) -> list[str]:
    """The attributes that differ; group lengths (gggg,0000) aside: pydicom drops these
    retired elements whenever it writes a data set, encrypted or not."""
    tags = sorted(t for t in set(a.keys()) | set(b.keys()) if t.element != 0)
    return [str(a.get(t, b.get(t)).keyword or t) for t in tags
            if (a.get(t, b.get(t)).keyword not in ignore) and (t not in a or t not in b or a[t] != b[t])]
