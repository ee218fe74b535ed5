"""The compressed corpus of the gpu-decode tests and benchmark, and a CPU frame backend.

:func:`compressed_files`: every bundled file of pydicom and pydicom-data
(``pydicom.data.get_testdata_files``) that is DICOM with encapsulated (compressed) pixel
data. :func:`reference` decodes one with pydicom's own decoders, or says why it cannot.

:class:`CpuFrames` decodes frames with pylibjpeg (libjpeg, openjpeg): the same interface
as the GPU backend (``decode(frames)`` -> one array per frame), so the batched path of the
plugin (planning, one decode call per group, pydicom assembling the arrays) runs, and is
compared with pydicom, on a machine without a GPU. It measures nothing about the GPU.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pydicom


@functools.lru_cache(maxsize=None)
def compressed_files() -> tuple[Path, ...]:
    """Every bundled DICOM file with compressed pixel data, by path."""
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = sorted({str(Path(p).resolve()) for p in get_testdata_files("**/*")})
    out = []
    for p in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue  # not DICOM (the corpus also holds other files)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None and ts.is_transfer_syntax and ts.is_compressed:
            out.append(Path(p))
    return tuple(out)


def reference(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(pydicom's pixel array, None), or (None, why pydicom itself cannot decode it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds:
                return None, "no Pixel Data"
            return ds.pixel_array, None
        except Exception as exc:
            return None, f"pydicom cannot decode it ({type(exc).__name__})"


class CpuFrames:
    """pylibjpeg as a frame backend (libjpeg for JPEG, openjpeg for JPEG 2000 / HTJ2K): raw
    components, the codestream's precision, like the GPU backend's output."""

    name = "pylibjpeg (CPU stand-in for the frame decoder)"
    index = -1

    def __init__(self):
        self.calls: list[int] = []  # frames per decode call

    def decode(self, frames) -> list[np.ndarray | None]:
        from libjpeg.utils import decode_pixel_data as jpeg
        from openjpeg.utils import decode_pixel_data as j2k

        self.calls.append(len(frames))
        out = []
        for f in frames:
            try:
                raw = (jpeg if f.codec == "jpeg" else j2k)(f.data, version=2)
            except Exception:
                out.append(None)
                continue
            n = f.rows * f.columns * f.samples
            if len(raw) not in (n, 2 * n):
                out.append(None)
                continue
            dtype = np.uint8 if len(raw) == n else np.uint16
            out.append(np.frombuffer(bytes(raw), dtype=dtype).reshape(f.rows, f.columns, f.samples))
        return out
