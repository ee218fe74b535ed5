"""gpu-decode figures: ``python -m tests.benchmarks.gpudecode [--json FILE]``.

Batched nvImageCodec decoding on the GPU against pydicom's CPU decoders, on two corpora:

- ``jpeg2000``: the bundled JPEG 2000 / HTJ2K files of pydicom and pydicom-data that
  pydicom decodes here, and ``--n`` generated 512x512 16-bit CT slices compressed JPEG 2000
  lossless (pylibjpeg-openjpeg's encoder through pydicom);
- ``jpeg``: the bundled JPEG files (baseline, extended 12-bit, lossless), and ``--n``
  generated 512x512 8-bit slices compressed JPEG baseline (Pillow's encoder).

Per corpus and set (bundled, generated), in milliseconds per frame:

- ``cpu``: pydicom's decoders (``pydicom.pixels.pixel_array`` on a parsed dataset), one
  object after another on one thread (pylibjpeg holds the GIL);
- ``gpu_batched``: the plugin's backend decoding the frames in batches of ``--batch``
  (one ``nvimgcodec.Decoder.decode(list)`` call each, arrays copied back to the host);
- ``gpu_plugin``: the plugin's whole path on items (read, plan, batched decode, pydicom
  assembling the arrays), against ``cpu_hook``: the default decoding hook on the same items;
- the speed-up (``cpu`` / ``gpu_batched``; the goal is at least 10x) and the largest
  difference between the GPU's arrays and pydicom's (0 expected for lossless syntaxes).

Each figure is the median of ``--repeat`` rounds over the whole set, after one warm-up
round. Without a usable GPU the CPU figures are printed and the GPU is reported as not
measured, with the reason. Nothing else is assumed: every figure printed is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .common import TESTS_DIR  # noqa: F401  (puts tests/ on sys.path)

GOAL = 10.0


def _generated(tmp: Path, n: int) -> dict[str, list[Path]]:
    """``n`` 512x512 CT slices as JPEG 2000 lossless and as 8-bit JPEG baseline files."""
    import io

    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    from conftest import write_ct_series

    native = write_ct_series(tmp / "native", n, size=512)
    out: dict[str, list[Path]] = {"jpeg2000": [], "jpeg": []}
    (tmp / "j2k").mkdir()
    (tmp / "jpg").mkdir()
    for i, path in enumerate(native):
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        j2k = tmp / "j2k" / path.name
        d2 = pydicom.dcmread(path)
        d2.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg")
        d2.save_as(j2k, enforce_file_format=True)
        out["jpeg2000"].append(j2k)
        # 8-bit: a soft-tissue window of the slice, JPEG quality 90
        eight = np.clip((arr.astype(np.int32) + 160) * 255 // 400, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(eight, mode="L").save(buf, format="JPEG", quality=90)
        d3 = pydicom.dcmread(path)
        d3.BitsAllocated, d3.BitsStored, d3.HighBit, d3.PixelRepresentation = 8, 8, 7, 0
        for kw in ("RescaleIntercept", "RescaleSlope"):
            if kw in d3:
                delattr(d3, kw)
        d3.PixelData = encapsulate([buf.getvalue()])
        d3["PixelData"].VR = "OB"
        d3["PixelData"].is_undefined_length = True
        d3.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        jpg = tmp / "jpg" / path.name
        d3.save_as(jpg, enforce_file_format=True)
        out["jpeg"].append(jpg)
    return out


def _bundled() -> dict[str, list[Path]]:
    import pydicom

    from tests.plugins.gpudecode_corpus import compressed_files, reference
    from pacsguard.plugins.gpudecode.support import GPU_SYNTAXES

    out: dict[str, list[Path]] = {"jpeg2000": [], "jpeg": []}
    for path in compressed_files():
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        codec = GPU_SYNTAXES.get(ts)
        if codec is None or reference(path)[0] is None:
            continue
        out["jpeg2000" if codec == "jpeg2k" else "jpeg"].append(path)
    return out


def _median_ms(rounds: list[float], frames: int) -> float:
    return round(statistics.median(rounds) * 1000 / frames, 4)


def _rounds(fn, repeat: int) -> list[float]:
    fn()  # warm-up (GPU: the codec libraries' first use; CPU: the decoder imports)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure_set(paths: list[Path], gpu, batch: int, repeat: int) -> dict:
    """The figures of one set of files (see the module's docstring)."""
    import pydicom
    from pydicom.pixels import pixel_array

    from pacsguard.daemon import pixels as daemon_pixels
    from pacsguard.daemon.item import Item, TransportFacts
    from pacsguard.plugins.gpudecode import decode
    from pacsguard.plugins.gpudecode.backend import Frame

    facts = TransportFacts(source="bench", source_type="folder")
    datasets = [pydicom.dcmread(p) for p in paths]
    expected = [pixel_array(ds) for ds in datasets]
    plans = [decode.plan(Item(i, p, facts))[0] for i, p in enumerate(paths)]
    frames: list[Frame] = [f for p in plans if p is not None for f in p.frames]  # None: a layout the GPU leaves
    n_frames = len(frames)
    fig = {"objects": len(paths), "frames": n_frames,
           "sizes": sorted({f"{f.rows}x{f.columns}x{f.samples}" for f in frames}),
           "encoded_mb": round(sum(len(f.data) for f in frames) / 1e6, 3)}

    def cpu():
        for ds in datasets:
            pixel_array(ds)

    def cpu_hook():
        for i, p in enumerate(paths):
            daemon_pixels.pacsguard_decode_pixels(item=Item(i, p, facts))

    fig["cpu_ms_per_frame"] = _median_ms(_rounds(cpu, repeat), n_frames)
    fig["cpu_hook_ms_per_frame"] = _median_ms(_rounds(cpu_hook, repeat), n_frames)
    if gpu is None:
        return fig

    def gpu_batched():
        for at in range(0, n_frames, batch):
            gpu.decode(frames[at:at + batch])

    def gpu_plugin():
        for at in range(0, len(paths), batch):
            decode.decode_items([Item(i, p, facts) for i, p in enumerate(paths[at:at + batch], at)], gpu)

    fig["gpu_batched_ms_per_frame"] = _median_ms(_rounds(gpu_batched, repeat), n_frames)
    fig["gpu_plugin_ms_per_frame"] = _median_ms(_rounds(gpu_plugin, repeat), n_frames)
    fig["speedup_batched"] = round(fig["cpu_ms_per_frame"] / fig["gpu_batched_ms_per_frame"], 2)
    fig["speedup_plugin"] = round(fig["cpu_hook_ms_per_frame"] / fig["gpu_plugin_ms_per_frame"], 2)
    decode.STATS.reset()
    got = []
    for at in range(0, len(paths), batch):
        got += decode.decode_items([Item(i, p, facts) for i, p in enumerate(paths[at:at + batch], at)], gpu)
    fig["gpu_objects"] = decode.STATS.gpu
    fig["cpu_fallbacks"] = dict(decode.STATS.cpu)
    diffs = [int(np.abs(a.astype(np.int64) - e.astype(np.int64)).max()) for a, e in zip(got, expected)
             if a is not None and a.shape == e.shape]
    fig["max_abs_diff_vs_pydicom"] = max(diffs) if diffs else None
    fig["shape_or_dtype_mismatches"] = sum(1 for a, e in zip(got, expected)
                                           if a is not None and (a.shape != e.shape or a.dtype != e.dtype))
    return fig


def run(n: int, batch: int, repeat: int, device: str = "auto") -> dict:
    from pacsguard.plugins.gpudecode import backend

    gpu, why = backend.PROBE.get(device)
    report = {
        "benchmark": "gpudecode",
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "gpu": {"measured": gpu is not None, "name": getattr(gpu, "name", None),
                "device": f"cuda:{gpu.index}" if gpu is not None else None, "reason": why},
        "settings": {"generated_slices": n, "batch": batch, "repeat": repeat},
        "goal_speedup": GOAL,
        "corpora": {},
    }
    bundled = _bundled()
    with tempfile.TemporaryDirectory(prefix="pacsguard-bench-gpudecode-") as tmp:
        generated = _generated(Path(tmp), n) if n else {"jpeg2000": [], "jpeg": []}
        for corpus in ("jpeg2000", "jpeg"):
            sets = {}
            for name, paths in (("bundled", bundled[corpus]), ("generated 512x512", generated[corpus])):
                if paths:
                    sets[name] = measure_set(paths, gpu, batch, repeat)
            report["corpora"][corpus] = sets
    return report


def markdown(report: dict) -> str:
    gpu = report["gpu"]
    head = (f"GPU: {gpu['name']} ({gpu['device']})" if gpu["measured"]
            else f"GPU: not measured ({gpu['reason']})")
    out = [f"gpu-decode: nvImageCodec batched (batch {report['settings']['batch']}) vs pydicom's CPU decoders "
           f"(one thread), ms per frame, median of {report['settings']['repeat']} rounds; {head}; "
           f"CPU: {report['machine']['cpu']} x{report['machine']['cpu_count']}", "",
           "| corpus | set | objects / frames | sizes | CPU decode | CPU hook | GPU batched | GPU plugin "
           "| speed-up (batched / plugin) | goal 10x | max diff |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for corpus, sets in report["corpora"].items():
        for name, f in sets.items():
            measured = "gpu_batched_ms_per_frame" in f
            gb = f"{f['gpu_batched_ms_per_frame']}" if measured else "not measured"
            gp = f"{f['gpu_plugin_ms_per_frame']}" if measured else "not measured"
            sp = f"{f['speedup_batched']}x / {f['speedup_plugin']}x" if measured else "-"
            goal = ("yes" if f["speedup_batched"] >= GOAL else "no") if measured else "-"
            diff = f.get("max_abs_diff_vs_pydicom", "-") if measured else "-"
            sizes = ", ".join(f["sizes"][:3]) + (" ..." if len(f["sizes"]) > 3 else "")
            out.append(f"| {corpus} | {name} | {f['objects']} / {f['frames']} | {sizes} | {f['cpu_ms_per_frame']} "
                       f"| {f['cpu_hook_ms_per_frame']} | {gb} | {gp} | {sp} | {goal} | {diff} |")
    if not gpu["measured"]:
        out += ["", "The GPU was not measured (no GPU): run `python -m tests.benchmarks.gpudecode --json FILE` "
                    "on a machine with a CUDA GPU and `pip install pacsguard[gpudecode]`."]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.gpudecode", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="generated 512x512 slices per codec (default 32; 0: none)")
    p.add_argument("--batch", type=int, default=32, help="frames per GPU decode call (default 32)")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds per figure (default 5)")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N (default auto)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    warnings.simplefilter("ignore")  # pydicom's notes on the bundled files' quirks
    report = run(args.n, args.batch, args.repeat, args.device)
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
