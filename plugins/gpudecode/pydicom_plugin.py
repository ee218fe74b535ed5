"""A pydicom decoding plugin whose frames come from the GPU, so that pydicom does the rest.

pydicom's ``Decoder.as_array`` turns decoded frames into the pixel array: the dtype from
Bits Allocated and Pixel Representation, the shape, JPEG 2000 signed-data correction (a
codestream whose signedness differs from Pixel Representation), unused high bits,
YBR_FULL(_422) to RGB. Handing it frames the GPU decoded (through the documented decoder
plugin interface, ``Decoder.add_plugin``) gives arrays made exactly as pydicom makes them
from its own decoders' frames. The plugin serves only inside :func:`session` (a thread's
decode call); pydicom's own decoding never picks it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

from pydicom.pixels.common import PhotometricInterpretation as PI
from pydicom.uid import JPEG2000TransferSyntaxes

from .support import GPU_SYNTAXES

LABEL = "pacsguard-nvimgcodec"
#: pydicom's decoder-plugin contract: transfer syntax -> what the plugin needs
DECODER_DEPENDENCIES = {ts: ("numpy", "nvidia-nvimgcodec-cu12") for ts in GPU_SYNTAXES}

_local = threading.local()
_lock = threading.Lock()
_registered = False


def is_available(uid) -> bool:
    return uid in GPU_SYNTAXES


class Session:
    """The frames of one object: decoded beforehand (a batch), or one at a time."""

    def __init__(self, frames: dict[bytes, object], decode_one: Callable[[bytes], object]):
        self.frames = frames
        self.decode_one = decode_one

    def take(self, src: bytes):
        frame = self.frames.get(bytes(src))
        if frame is None:  # a frame beyond Number of Frames (pydicom looks for them in JPEG)
            frame = self.decode_one(bytes(src))
        if frame is None:
            raise RuntimeError("the GPU could not decode the frame")
        return frame


@contextlib.contextmanager
def session(frames: dict[bytes, object], decode_one: Callable[[bytes], object]):
    register()
    _local.session = Session(frames, decode_one)
    try:
        yield
    finally:
        _local.session = None


def register() -> None:
    """Add the plugin to pydicom's decoders of the GPU syntaxes, once per process."""
    global _registered
    if _registered:
        return
    from pydicom.pixels import get_decoder

    with _lock:
        if _registered:
            return
        for ts in GPU_SYNTAXES:
            decoder = get_decoder(ts)
            if LABEL not in decoder.available_plugins:
                decoder.add_plugin(LABEL, (__name__, "_decode_frame"))
        _registered = True


def _decode_frame(src: bytes, runner) -> bytes:
    """pydicom's frame decoder interface: the decoded frame as bytes."""
    current = getattr(_local, "session", None)
    if current is None:
        raise RuntimeError("serves pacsguard's gpu-decode calls only")
    frame = current.take(src)
    if runner.transfer_syntax in JPEG2000TransferSyntaxes:
        # as pydicom's pylibjpeg plugin: the decoder applied the inverse MCT, and the
        # samples come in the codestream's precision
        if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
            runner.set_option("photometric_interpretation", PI.RGB)
        precision = runner.get_option("j2k_precision", runner.bits_stored)
        runner.set_option("bits_allocated", 8 if precision <= 8 else 16)
    return frame.tobytes()
