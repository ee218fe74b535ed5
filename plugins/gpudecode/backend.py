"""The GPU side: is there a usable CUDA device and nvImageCodec here, and one batched decode.

Nothing here imports nvImageCodec until a CUDA device is known to exist (the probe asks
the NVIDIA driver through ``libcuda`` with ctypes), so a machine without a GPU never loads
the CUDA libraries. The decoder is created once per process (CUDA state does not survive a
fork) and restricted to nvImageCodec's GPU backends: its CPU backends (libjpeg-turbo,
OpenCV) are left out, pydicom's decoders being the CPU path.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from dataclasses import dataclass

import numpy as np

#: the pip requirement (``pip install pacsguard[gpudecode]``)
REQUIREMENT = "nvidia-nvimgcodec-cu12[nvjpeg,nvjpeg2k]==0.9.0.20"


def cuda_devices() -> tuple[int, str | None]:
    """(number of CUDA devices the NVIDIA driver sees, None) or (0, why there is none)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no CUDA GPU (no NVIDIA driver: libcuda.so.1 not found)"
    try:
        rc = lib.cuInit(0)
        if rc != 0:
            return 0, f"no usable CUDA GPU (the NVIDIA driver answers cuInit with error {rc})"
        count = ctypes.c_int(0)
        rc = lib.cuDeviceGetCount(ctypes.byref(count))
    except (AttributeError, OSError) as exc:
        return 0, f"no usable CUDA GPU ({type(exc).__name__} from the NVIDIA driver)"
    if rc != 0 or count.value < 1:
        return 0, "no CUDA GPU visible to this process"
    return count.value, None


def device_index(spec: str) -> int:
    """``auto`` / ``cuda`` -> 0, ``cuda:N`` -> N."""
    return int(spec.split(":", 1)[1]) if ":" in spec else 0


@dataclass(frozen=True)
class Frame:
    """One encoded frame and what the object's header says it decodes to."""

    data: bytes
    codec: str          # "jpeg" | "jpeg2k"
    rows: int
    columns: int
    samples: int


class GpuBackend:
    """nvImageCodec on one CUDA device: batched decode of encoded frames to host arrays."""

    def __init__(self, index: int, *, cpu_only: bool = False):
        """``cpu_only``: nvImageCodec's CPU backends instead (libjpeg-turbo, OpenCV), no
        device: the same calls on a machine without a GPU, for the tests; never served."""
        from nvidia import nvimgcodec

        self._nv = nvimgcodec
        self.index = index
        # fancy (interpolating) chroma upsampling, as the libjpeg family pydicom decodes with
        options = ":fancy_upsampling=1"
        if cpu_only:
            self._decoder = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                                               backends=[nvimgcodec.Backend(nvimgcodec.CPU_ONLY)], options=options)
            self.name = "nvImageCodec CPU backends"
        else:
            self._decoder = nvimgcodec.Decoder(
                device_id=index, options=options,
                backends=[nvimgcodec.Backend(nvimgcodec.GPU_ONLY), nvimgcodec.Backend(nvimgcodec.HYBRID_CPU_GPU)])
            self.name = _device_name(index)
        self._lock = threading.Lock()  # one batch at a time on the device

        # the samples as coded, at their own bit depth (without allow_any_depth 12- and 16-bit
        # samples come back scaled to 8 bits). Colour JPEG: SYCC, the components as coded
        # (UNCHANGED would convert YCbCr to RGB; pydicom converts YBR_FULL(_422) afterwards,
        # as it does with its own decoders' output, which are the raw components too);
        # JPEG 2000: UNCHANGED, the components after the inverse MCT
        self._params = {
            "raw": nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.UNCHANGED,
                                           apply_exif_orientation=False),
            "ycc": nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.SYCC,
                                           apply_exif_orientation=False),
        }

    def decode(self, frames: list[Frame]) -> list[np.ndarray | None]:
        """Each frame as a C-contiguous host array (rows, columns, samples) in the
        codestream's own precision, or None where the GPU could not decode it or what it
        decoded does not match the header (the caller then uses the CPU)."""
        out: list[np.ndarray | None] = [None] * len(frames)
        groups: dict[str, list[tuple[int, object]]] = {}
        for i, f in enumerate(frames):
            try:
                cs = self._nv.CodeStream(f.data)
            except Exception:
                continue  # not a codestream nvImageCodec parses
            if (cs.height, cs.width, cs.num_channels) != (f.rows, f.columns, f.samples) or not 0 < cs.precision <= 16:
                continue  # the header and the codestream disagree: the CPU decoders decide
            groups.setdefault("ycc" if f.codec == "jpeg" and f.samples > 1 else "raw", []).append((i, cs))
        with self._lock:
            for kind, members in groups.items():  # one batch per colour handling
                images = self._decoder.decode([cs for _, cs in members], params=self._params[kind])
                for (i, cs), img in zip(members, images):
                    out[i] = _host(img, frames[i], cs.precision)
        return out


def _host(img, frame: Frame, precision: int) -> np.ndarray | None:
    if img is None:
        return None
    host = img.cpu()
    if host is None:
        return None
    arr = np.asarray(host)
    if arr.size != frame.rows * frame.columns * frame.samples or arr.dtype.itemsize != (1 if precision <= 8 else 2):
        return None
    return np.ascontiguousarray(arr.reshape(frame.rows, frame.columns, frame.samples))


def _device_name(index: int) -> str:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        dev = ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(dev), index) == 0 and lib.cuDeviceGetName(name, 256, dev) == 0:
            return name.value.decode(errors="replace")
    except (OSError, AttributeError):
        pass
    return "CUDA device"


class _Probe:
    """The process's backend for one device spec, made once (again after a fork)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = None
        self._made: dict[str, tuple[GpuBackend | None, str | None]] = {}

    def get(self, spec: str) -> tuple[GpuBackend | None, str | None]:
        with self._lock:
            if self._pid != os.getpid():
                self._made, self._pid = {}, os.getpid()
            if spec not in self._made:
                self._made[spec] = _make(spec)
            return self._made[spec]


def installed() -> bool:
    """Whether nvImageCodec's Python package is installed (without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except (ImportError, ValueError):
        return False


def _make(spec: str) -> tuple[GpuBackend | None, str | None]:
    if not installed():
        return None, "nvImageCodec is not installed (pip install pacsguard[gpudecode])"
    count, why = cuda_devices()
    if why:
        return None, why
    index = device_index(spec)
    if index >= count:
        return None, f"device {spec!r} asked for, but the driver sees {count} CUDA device(s)"
    try:
        return GpuBackend(index), None
    except Exception as exc:  # a missing nvJPEG / CUDA library, a driver too old
        return None, f"nvImageCodec cannot start on cuda:{index} ({type(exc).__name__}: {str(exc)[:120]})"


PROBE = _Probe()
