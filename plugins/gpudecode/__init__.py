"""gpu-decode: pixel data decoded on an NVIDIA GPU with nvImageCodec, for every stage.

Turned on with ``pixels: {decoder: gpu}`` (and ``pip install pacsguard[gpudecode]``). It
implements the ``pacsguard_decode_pixels`` hook (one object) and
``pacsguard_decode_pixels_batch`` (a batching stage's group, decoded in one GPU call), so
every stage that asks for pixels (``item.pixels()``, ``Item.pixels_of(items)``) gets them
from the GPU where it serves:

- JPEG baseline and extended (8/12-bit), JPEG lossless (process 14, SV1), JPEG 2000 and
  HTJ2K (lossless and lossy), at the codestream's full bit depth, 1 or 3 samples, any
  number of frames (:mod:`.support`);
- pydicom assembles the array from the GPU's frames (:mod:`.pydicom_plugin`): dtype,
  shape, JPEG 2000 signed-data correction and colour as pydicom's own decoders give them.

Everything else falls back to pydicom's CPU decoders, per object, with the reason counted
(:data:`.decode.STATS`): no GPU, nvImageCodec missing, a transfer syntax it does not serve
(JPEG-LS, RLE, native), a frame the GPU could not decode. ``pacsguard plugins`` shows which
decoder serves which transfer syntax on this machine.
"""

from __future__ import annotations

import structlog

from pacsguard.daemon import pixels as _pixels
from pacsguard.daemon.hookspecs import hookimpl

from . import backend as _backend
from .decode import STATS, decode_items
from .pydicom_plugin import LABEL
from .support import GPU_SYNTAXES, LIBRARIES, NOT_ON_GPU, cpu_decoders, syntaxes

log = structlog.get_logger("pacsguard.gpudecode")

__all__ = ["STATS", "active_backend", "report", "table"]

_warned: set = set()


def _settings(item) -> tuple[str, str]:
    """(decoder, device) of the ``pixels:`` section the item's config generation carries."""
    s = getattr(item, "pixel_settings", None)
    return (getattr(s, "decoder", "cpu"), getattr(s, "device", "auto"))


def active_backend(decoder: str = "gpu", device: str = "auto"):
    """The GPU backend serving ``pixels: {decoder, device}`` in this process, or None (not
    turned on, or not usable here: the reason is logged once per process and device)."""
    if decoder != "gpu":
        return None
    gpu, why = _backend.PROBE.get(device)
    if gpu is None and device not in _warned:
        _warned.add(device)
        log.warning("gpu-decode: no GPU decoding in this process; pydicom's CPU decoders decode every object",
                    reason=why)
    return gpu


@hookimpl
def pacsguard_decode_pixels(item):
    gpu = active_backend(*_settings(item))
    if gpu is None:
        return None
    arr = decode_items([item], gpu)[0]
    if arr is None:
        return None  # the next implementation decides: pydicom's CPU decoders
    return arr


@hookimpl
def pacsguard_decode_pixels_batch(items):
    gpus = [active_backend(*_settings(item)) for item in items]
    if all(g is None for g in gpus):
        return None
    out: list = [None] * len(items)
    by_gpu: dict[int, list[int]] = {}
    for i, g in enumerate(gpus):
        if g is not None:
            by_gpu.setdefault(id(g), []).append(i)
    for idx in by_gpu.values():  # one batched call per device (one, unless generations differ)
        for i, arr in zip(idx, decode_items([items[i] for i in idx], gpus[idx[0]])):
            out[i] = arr
    return [a if a is not None else _pixels.pacsguard_decode_pixels(item=item) for a, item in zip(out, items)]


def table(device: str = "auto") -> tuple[str, list[tuple[str, str, str]]]:
    """(the GPU in words, rows of (transfer syntax, decoder, why not GPU)) on this machine
    with ``pixels: {decoder: gpu, device: DEVICE}``."""
    gpu, why = _backend.PROBE.get(device)
    where = f"{gpu.name} (cuda:{gpu.index})" if gpu is not None else f"unavailable: {why}"
    rows = []
    for ts in syntaxes():
        from pydicom.uid import UID

        name = f"{UID(ts).keyword} {ts}"
        cpu = cpu_decoders(ts, exclude=LABEL)
        if ts in NOT_ON_GPU:
            rows.append((name, f"cpu: {cpu}", NOT_ON_GPU[ts]))
        elif gpu is None:
            rows.append((name, f"cpu: {cpu}", why))
        else:
            rows.append((name, f"gpu: nvImageCodec {LIBRARIES[GPU_SYNTAXES[ts]]}", "-"))
    rows.append(("native, deflated (uncompressed)", "cpu: pydicom (no codec)", "nothing to decode"))
    return where, rows


def report(device: str = "auto") -> list[str]:
    """Lines for ``pacsguard plugins``: the GPU, and the transfer-syntax table."""
    where, rows = table(device)
    head = ("transfer syntax", "decoder", "why not GPU")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = [f"GPU: {where}",
             "with pixels: {decoder: gpu} (default: cpu), each transfer syntax is decoded by:",
             "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return lines
