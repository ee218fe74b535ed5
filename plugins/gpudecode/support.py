"""Which transfer syntaxes nvImageCodec decodes on the GPU here, and why not the others.

The GPU serves the JPEG family (nvJPEG: baseline, extended 12-bit, lossless process 14
and its selection value 1) and the JPEG 2000 family (nvJPEG2000: JPEG 2000 and HTJ2K,
lossless and lossy). The rest is decoded by pydicom's CPU decoders, as without the plugin.
"""

from __future__ import annotations

from pydicom import uid

#: transfer syntax -> the nvImageCodec codec (and the NVIDIA library behind it)
GPU_SYNTAXES: dict[str, str] = {
    uid.JPEGBaseline8Bit: "jpeg",
    uid.JPEGExtended12Bit: "jpeg",
    uid.JPEGLossless: "jpeg",
    uid.JPEGLosslessSV1: "jpeg",
    uid.JPEG2000Lossless: "jpeg2k",
    uid.JPEG2000: "jpeg2k",
    uid.HTJ2KLossless: "jpeg2k",
    uid.HTJ2KLosslessRPCL: "jpeg2k",
    uid.HTJ2K: "jpeg2k",
}

#: nvImageCodec codec -> the extension (library) that decodes it on the GPU
LIBRARIES = {"jpeg": "nvJPEG", "jpeg2k": "nvJPEG2000"}

#: lossless transfer syntaxes: the GPU's pixels must equal the CPU decoders' exactly; for
#: the lossy ones two conforming decoders may differ by rounding (IDCT / irreversible wavelet)
LOSSLESS = frozenset({uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEG2000Lossless, uid.HTJ2KLossless,
                      uid.HTJ2KLosslessRPCL})

#: compressed transfer syntaxes pydicom decodes that the GPU does not, and why
NOT_ON_GPU: dict[str, str] = {
    uid.JPEGLSLossless: "nvImageCodec has no JPEG-LS decoder",
    uid.JPEGLSNearLossless: "nvImageCodec has no JPEG-LS decoder",
    uid.RLELossless: "nvImageCodec has no DICOM RLE decoder (RLE decodes at memory speed on the CPU)",
}

#: what the GPU path takes: Bits Allocated and Samples per Pixel
BITS = (8, 16)
SAMPLES = (1, 3)


def syntaxes() -> list[str]:
    """Every compressed transfer syntax of the table, in UID order."""
    return sorted({*GPU_SYNTAXES, *NOT_ON_GPU}, key=lambda u: [int(p) for p in u.split(".")])


def cpu_decoders(ts: str, exclude: str = "") -> str:
    """pydicom's decoding plugins installed for ``ts`` (``exclude``: our own label)."""
    try:
        from pydicom.pixels import get_decoder

        names = [n for n in get_decoder(ts).available_plugins if n != exclude]
    except Exception:
        names = []
    return "pydicom: " + ", ".join(names) if names else "none installed (pip install pacsguard[codecs])"
