"""Inference throughput with micro-batching vs one image at a time, in the same run:
``.venv/bin/python -m tests.benchmarks.inference [--n 360] [--batch 32] [--repeat 3] [--json PATH]``.

The objects are the held-out digits of the shipped model (:mod:`pacsguard.plugins.decoders.train_vit`)
as 32 x 32 8-bit DICOM files, scrambled by the real ``scramble`` stage (block 4, flip)
beforehand (untimed): the research route's ``infer`` then classifies them with the
model converted with the key. Two levels, each one-at-a-time and batched, alternated
``--repeat`` times (the median reported):

- **stage**: ``Infer.process`` on each item vs ``Infer.process_batch`` on groups of
  ``--batch`` items (items parsed beforehand; pixel decoding, the model and writing the
  result into the object counted);
- **pipeline**: the daemon's own batching path: a real :class:`~pacsguard.daemon.spool.Spool`
  (on /dev/shm when there is one) and :class:`~pacsguard.daemon.pipeline.Processor` with one
  worker thread, every object submitted at once, timed until the last is routed (parse,
  the stage, writing the output file, routing). Both runs take ``--batch`` objects per
  worker batch; only ``infer``'s ``batch_size`` differs (``--batch`` vs 1), so the
  difference is the micro-batching of the model calls.

The model is tiny (a 3-layer ViT on 64 tokens of 32 dimensions): on a CPU most of a lone
image's time is torch's per-call overhead, which batching spreads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import MappingProxyType

from .common import median

FLIP = True
BLOCK = 4


def quiet_logs() -> None:
    """The stages log one line per object at info level: keep them out of the figures."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def keys() -> dict:
    import hashlib

    from pacsguard.daemon.keys import Key, secret_key_id

    secret = hashlib.sha256(b"pacsguard inference benchmark key").digest()
    return {"vit": Key("vit", "secret", secret_key_id(secret), "/bench/vit.key", secret=secret)}


def facts():
    from pacsguard.daemon.item import TransportFacts

    return TransportFacts(source="bench", source_type="folder")


def decode():
    from pacsguard.daemon.plugins import get_plugin_manager

    return get_plugin_manager(entry_points=False).hook.pacsguard_decode_pixels


def scrambled_digits(folder: Path, n: int, store: dict) -> list[Path]:
    """``n`` held-out digits (repeated when ``n`` > 360) as DICOM files, scrambled by the
    real stage and written."""
    import numpy as np

    from pacsguard.daemon.item import Item
    from pacsguard.plugins.decoders import train_vit
    from pacsguard.plugins.decoders.scramble import Scramble

    from tests.plugins.digits import write_digits

    _, _, xte, yte = train_vit.split()
    idx = np.resize(np.arange(len(xte)), n)
    plain = write_digits(folder / "plain", xte[idx], yte[idx])
    stage = Scramble(Scramble.Options(key="vit", block_size=BLOCK, flip=FLIP))
    out, hook = [], decode()
    (folder / "scrambled").mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(plain):
        dst = folder / "scrambled" / p.name
        stage.process(Item(i, p, facts(), keys=store, decode_pixels=hook)).write(dst)
        out.append(dst)
    return out


def infer_stage(batch_size: int, device: str = "cpu"):
    from pacsguard.plugins.decoders.infer import Infer

    return Infer(Infer.Options(key="vit", device=device, batch_size=batch_size, max_wait_ms=10))


def stage_pass(paths: list[Path], store: dict, batch: int, device: str = "cpu") -> float:
    """Seconds for ``Infer`` on every object: ``batch`` 1 calls ``process`` per item,
    otherwise ``process_batch`` on groups of ``batch``."""
    from pacsguard.daemon.item import Item

    hook = decode()
    stage = infer_stage(max(batch, 1), device)
    items = [Item(i, p, facts(), keys=store, decode_pixels=hook) for i, p in enumerate(paths)]
    for it in items:
        _ = it.dataset  # parsed beforehand, as every stage after the first finds it
    t0 = time.perf_counter()
    if batch <= 1:
        for it in items:
            stage.process(it)
    else:
        for at in range(0, len(items), batch):
            stage.process_batch(items[at:at + batch])
    seconds = time.perf_counter() - t0
    assert all("label" in it.results.get("infer", {}) for it in items), "every object classified"
    return seconds


def _spool_root() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="pacsguard-bench-infer-", dir=shm if shm.is_dir() else None))


def pipeline_pass(paths: list[Path], store: dict, infer_batch: int, take: int, device: str = "cpu") -> float:
    """Seconds from submitting every object to a real spool and processor (one worker
    taking ``take`` objects at a time) until the last is routed."""
    from pacsguard.daemon.pipeline import Processor, Runtime
    from pacsguard.daemon.plugins import get_plugin_manager
    from pacsguard.daemon.router import Route
    from pacsguard.daemon.spool import Spool

    root = _spool_root()
    spool = Spool(root / "spool")
    try:
        incoming = root / "in"
        incoming.mkdir()
        jobs = []
        for i, p in enumerate(paths):
            copy = incoming / f"{i}.dcm"
            shutil.copyfile(p, copy)
            jobs.append(spool.ingest_file(copy, facts()))
        runtime = Runtime(routes=[Route("research", [], stages=[infer_stage(infer_batch, device)], to=["sink"])],
                          keys=MappingProxyType(store))
        pm = get_plugin_manager(entry_points=False)
        proc = Processor(spool, pm.hook, lambda: runtime, workers=1, batch_size=take)
        proc.start()
        t0 = time.perf_counter()
        try:
            for j in jobs:
                proc.submit(j)
            deadline = time.monotonic() + 300
            while spool.received_jobs() and time.monotonic() < deadline:
                time.sleep(0.002)
            seconds = time.perf_counter() - t0
        finally:
            proc.stop(10)
        states = {spool.get_job(j).state for j in jobs}
        if states != {"routed"}:
            raise RuntimeError(f"not every object was routed: states {sorted(states)}")
        return seconds
    finally:
        spool.close()
        shutil.rmtree(root, ignore_errors=True)


def run(n: int = 360, batch: int = 32, repeat: int = 3, device: str = "cpu", threads: int | None = 1) -> dict:
    """The figures (see the module docstring); ``threads``: torch's intra-op threads
    (default 1: on a shared 2-core machine two threads spin against other work and the
    figures scatter by 10x; None leaves torch's default)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    store = keys()
    work = Path(tempfile.mkdtemp(prefix="pacsguard-bench-digits-"))
    try:
        paths = scrambled_digits(work, n, store)
        stage_pass(paths[:batch], store, batch, device)  # build the converted model, warm torch up
        stage_pass(paths[:8], store, 1, device)
        times: dict[str, list[float]] = {k: [] for k in ("stage_one", "stage_batched", "pipeline_one",
                                                         "pipeline_batched")}
        for _ in range(repeat):
            times["stage_one"].append(stage_pass(paths, store, 1, device))
            times["stage_batched"].append(stage_pass(paths, store, batch, device))
            times["pipeline_one"].append(pipeline_pass(paths, store, 1, batch, device))
            times["pipeline_batched"].append(pipeline_pass(paths, store, batch, batch, device))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res: dict = {"images": n, "batch_size": batch, "repeat": repeat, "device": device,
                 "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                 "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    for level in ("stage", "pipeline"):
        one, batched = median(times[f"{level}_one"]), median(times[f"{level}_batched"])
        res[level] = {"one_at_a_time_images_per_s": round(n / one, 1),
                      "batched_images_per_s": round(n / batched, 1),
                      "one_at_a_time_ms_per_image": round(1000 * one / n, 3),
                      "batched_ms_per_image": round(1000 * batched / n, 3),
                      "speed_up": round(one / batched, 2),
                      "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items() if k.startswith(level)}}
    return res


def table(res: dict) -> str:
    rows = ["| level | one at a time (img/s) | micro-batched (img/s) | speed-up |", "|---|---:|---:|---:|"]
    names = {"stage": "`Infer` stage (process vs process_batch)",
             "pipeline": "pipeline (spool + Processor, parse to routed)"}
    for level in ("stage", "pipeline"):
        r = res[level]
        rows.append(f"| {names[level]} | {r['one_at_a_time_images_per_s']:,.1f} | {r['batched_images_per_s']:,.1f} "
                    f"| {r['speed_up']:.2f}x |")
    rows.append("")
    rows.append(f"{res['images']} scrambled 32x32 digits, batch size {res['batch_size']}, device {res['device']}, "
                f"torch {res['torch']} with {res['torch_threads']} thread(s) on {res['cpus']} CPU(s), load average "
                f"{res['loadavg'][0]}; median of {res['repeat']} alternated runs.")
    return "\n".join(rows)


def harness_run(quick: bool = False) -> dict:
    """The benchmark inside ``python -m tests.benchmarks`` (64 objects once with --quick,
    else 360 three times); what is missing or failed is reported, never raised."""
    from pacsguard.plugins.decoders import runtime

    if not runtime.is_available():
        return {"status": "skipped", "why": f"needs {', '.join(runtime.missing())} (pip install pacsguard[gpu])"}
    quiet_logs()
    try:
        return {"status": "ok", **run(n=64 if quick else 360, batch=32, repeat=1 if quick else 3)}
    except Exception as exc:
        return {"status": "failed", "why": f"{type(exc).__name__}: {exc}"}


def report_lines(res: dict) -> list[str]:
    """The harness report's INFERENCE section (text lines)."""
    if res.get("status") != "ok":
        return ["", f"INFERENCE: {res.get('status')}: {res.get('why')}"]
    out = ["", f"INFERENCE (infer, {res['images']} scrambled 32x32 digits, device {res['device']}, torch "
               f"{res['torch_threads']} thread(s)): one at a time vs micro-batched (batch {res['batch_size']}), "
               f"median of {res['repeat']}"]
    for level, name in (("stage", "Infer stage"), ("pipeline", "spool + Processor")):
        r = res[level]
        out.append(f"  {name:<20} {r['one_at_a_time_images_per_s']:>9.1f} img/s -> {r['batched_images_per_s']:>9.1f} "
                   f"img/s  ({r['speed_up']:.2f}x)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=360, help="objects per run (default 360: the held-out split)")
    p.add_argument("--batch", type=int, default=32, help="infer batch_size of the batched runs (default 32)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; 0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    quiet_logs()
    res = run(args.n, args.batch, args.repeat, args.device, args.threads or None)
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
