"""pacsguard benchmark harness.

Run from the repository root::

    .venv/bin/python -m tests.benchmarks              # full run (300 CT slices, 3 repeats, 5000-image memory burst)
    .venv/bin/python -m tests.benchmarks --quick      # smoke run, about a minute
    .venv/bin/python -m tests.benchmarks --help

Contenders (each end to end: first byte sent -> last object stored at the sink):
``dcmtk-limit`` (storescu -> storescp directly), ``orthanc`` (Orthanc with a Lua
auto-router, the peer), ``pacsguard-pass`` (route without stages), ``pacsguard-stage``
(set-attributes, a header-only change), ``pacsguard-encrypt`` (the pixel data encrypted
for one recipient), ``pacsguard-deid-encrypt`` (deidentify, then encrypt the pixel data),
``pacsguard-full`` (deidentify, embed the original values reversibly, encrypt the pixel
data), ``pacsguard-folder`` (watched folder -> DICOM destination). Load
shapes: burst, steady rate (latency), large burst (memory). Besides: the stages one by
one, encryption per slice on one core, AES-GCM against ``openssl speed``, data-key
wrapping per recipient type, and the cipher-image statistics of the encrypted pixels.
Output: a table on stdout, JSON + PNG (+ the table as text) in tests/benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import contenders as contenders_mod
from . import corpus as corpus_mod
from . import crypto, inference, report, runner
from . import stages as stages_mod
from .common import RESULTS_DIR, log, median, peers
from .keys import RECIPIENT_TYPES, key_store, make_keys

GOAL_PASS_RATIO = 1.5
GOAL_ENCRYPT_RATIO = 1.3
GOAL_DEID_ENCRYPT_RATIO = 1.2
GOAL_P99_S = 1.0
GOAL_RSS_MB = 400.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: --n 20 --repeat 1 --rate-n 20 --memory-n 150 --stage-n 5 "
                        "--crypto-samples 30")
    p.add_argument("--n", type=int, help="CT slices in the burst corpus (default 300)")
    p.add_argument("--size", type=int, default=512, help="CT slice rows = columns (default 512)")
    p.add_argument("--no-bundled", action="store_true", help="leave pydicom's bundled images out of the corpus")
    p.add_argument("--repeat", type=int, help="runs per contender and load shape; the median is reported (default 3)")
    p.add_argument("--rate", type=float, default=50.0, help="offered rate of the latency test, img/s (default 50)")
    p.add_argument("--rate-n", type=int, help="images sent in the latency test (default: --n)")
    p.add_argument("--memory-n", type=int, help="images in the memory burst (default 5000)")
    p.add_argument("--memory-contender", help="contender of the memory burst (default pacsguard-pass, "
                                              "else the first selected one that is a service)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory burst")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage micro-benchmarks")
    p.add_argument("--stage-n", type=int, help="CT slices per stage micro-benchmark (default 30)")
    p.add_argument("--no-crypto", action="store_true",
                   help="skip the encryption micro-benchmarks and the cipher-image statistics")
    p.add_argument("--no-inference", action="store_true",
                   help="skip the inference benchmark (micro-batched vs one at a time, ~15 s; needs pacsguard[gpu])")
    p.add_argument("--crypto-samples", type=int, help="encryptions timed per slice kind (default 300)")
    p.add_argument("--recipient", choices=RECIPIENT_TYPES, default="x25519",
                   help="key type of the encryption route's one recipient and of the per-slice timing "
                        "(default x25519; the wrap cost of every type is measured anyway)")
    p.add_argument("--contenders", default=",".join(contenders_mod.ALL),
                   help=f"comma-separated subset of {', '.join(contenders_mod.ALL)}")
    p.add_argument("--shapes", default="burst,rate", help="load shapes to run besides memory: burst,rate")
    p.add_argument("--sink-pdu", type=int, default=131072,
                   help="max PDU the sink storescp announces (default 131072, dcmtk's maximum)")
    p.add_argument("--pipeline", type=Path,
                   help="YAML list of {stage: options} for pacsguard-encrypt instead of its encrypt stage "
                        "(key names: bench-rsa, bench-x25519, bench-pq, bench-secret, or the placeholder "
                        "{recipient}; see keys.py)")
    p.add_argument("--orthanc-delete", action="store_true",
                   help="the Orthanc Lua router also calls Delete(instanceId) after sending (default: keeps them, "
                        "as in REFERENCE.md's 72.5 img/s; Delete roughly halves Orthanc's throughput)")
    p.add_argument("--stall-timeout", type=float,
                   help="give up a run when nothing new reaches the sink for this long (s; default 150, longer "
                        "than pacsguard's 60 s DIMSE timeout plus a retry; quick 15)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder (default tests/benchmarks/results)")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder, removed at the end)")
    p.add_argument("--no-png", action="store_true", help="do not draw the chart")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="measure nothing: redo the medians, goals, table and chart of an earlier run's JSON")
    a = p.parse_args(argv)
    quick = dict(n=20, repeat=1, rate_n=20, memory_n=150, stage_n=5, crypto_samples=30, stall_timeout=15.0)
    full = dict(n=300, repeat=3, rate_n=None, memory_n=5000, stage_n=30, crypto_samples=300, stall_timeout=150.0)
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.rate_n is None:
        a.rate_n = a.n
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    for c in a.contenders:
        if c not in contenders_mod.ALL:
            p.error(f"unknown contender {c!r} (known: {', '.join(contenders_mod.ALL)})")
    a.shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    return a


# --- machine and versions ----------------------------------------------------------------------

def machine_info() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_bytes": mem,
            "memory_gib": round(mem / 2**30, 1) if mem else None, "kernel": platform.release(),
            "hostname": platform.node(), "loadavg_start": list(os.getloadavg())}


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=peers.tool_env())
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0].strip() if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(dist):
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    dcmtk = _first_line(["storescp", "--version"]).strip("$ ")
    orthanc = _first_line(["Orthanc", "--version"])
    return {"pacsguard": v("pacsguard"), "dcmtk": dcmtk, "orthanc": orthanc,
            "python": platform.python_version(), "pydicom": v("pydicom"), "pynetdicom": v("pynetdicom"),
            "matplotlib": v("matplotlib")}


# --- aggregation -------------------------------------------------------------------------------

_NUMERIC_SKIP = {"rss_timeline", "delivered_timeline"}


def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if "failed" not in r and "incomplete" not in r]
    med: dict = {}
    if ok:
        keys = [k for k, v in ok[0].items() if isinstance(v, (int, float)) and k not in _NUMERIC_SKIP]
        for k in keys:
            m = median([r.get(k) for r in ok])
            med[k] = round(m, 5) if isinstance(m, float) else m
        ips = [r["images_per_s"] for r in ok if r.get("images_per_s")]
        if ips:
            med["images_per_s_min"], med["images_per_s_max"] = min(ips), max(ips)
    worst: dict = {}
    for k in ("ack_to_delivery_p99_s", "ack_to_delivery_max_s", "longest_delivery_gap_s", "peak_rss_mb"):
        vals = [r.get(k) for r in ok if r.get(k) is not None]
        if vals:
            worst[k] = max(vals)
    status = "ok" if ok else ("failed" if runs else "skipped")
    out = {"status": status, "runs_ok": len(ok), "runs": runs, "median": med, "worst": worst}
    logs = [r["service_log"] for r in runs if isinstance(r.get("service_log"), dict) and "events" in r["service_log"]]
    if logs:
        events: dict = {}
        for lg in logs:
            for ev, n in lg["events"].items():
                events[ev] = events.get(ev, 0) + n
        out["service_log"] = {"warning": sum(lg["warning"] for lg in logs), "error": sum(lg["error"] for lg in logs),
                              "events": dict(sorted(events.items(), key=lambda kv: -kv[1])[:8])}
    if not ok and runs:
        out["error"] = (runs[-1].get("failed") or runs[-1].get("incomplete") or "?")[:1500]
    return out


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def goals(results: dict, memory: dict | None) -> list[dict]:
    c = results["contenders"]

    def ips(key):
        return c.get(key, {}).get("burst", {}).get("median", {}).get("images_per_s")

    out = []
    orth = ips("orthanc")
    for key, target, name in (("pacsguard-pass", GOAL_PASS_RATIO, "pass-through"),
                              ("pacsguard-encrypt", GOAL_ENCRYPT_RATIO, "route with encryption"),
                              ("pacsguard-deid-encrypt", GOAL_DEID_ENCRYPT_RATIO, "route deidentify + encrypt")):
        if key not in c and key == "pacsguard-deid-encrypt":
            continue  # not selected in this run
        r = ratio(ips(key), orth)
        g = {"goal": f"{name} >= {target}x Orthanc (burst img/s)", "value": r, "target": target,
             "status": "n/a" if r is None else ("PASS" if r >= target else "MISS")}
        if key in ("pacsguard-encrypt", "pacsguard-deid-encrypt") and key in c:
            g["note"] = c[key].get("note", "")
        if r is None:
            g["why"] = _why_missing(c, key, "burst") or _why_missing(c, "orthanc", "burst")
        out.append(g)
    vals, medians = {}, {}
    for key in ("pacsguard-pass", "pacsguard-stage", "pacsguard-encrypt", "pacsguard-deid-encrypt", "pacsguard-full",
                "pacsguard-folder"):
        rate_entry = c.get(key, {}).get("rate", {})
        p99 = rate_entry.get("worst", {}).get("ack_to_delivery_p99_s")
        if p99 is not None:
            vals[key] = p99
            medians[key] = rate_entry.get("median", {}).get("ack_to_delivery_p99_s")
    rate = results["settings"]["rate"]
    reps = results["settings"]["repeat"]
    g = {"goal": f"p99 ack-to-delivery < {GOAL_P99_S:g} s at {rate:g} img/s (worst of {reps} run{'s' if reps > 1 else ''})",
         "value": vals or None, "median_of_runs": medians or None, "target": GOAL_P99_S,
         "status": "n/a" if not vals else ("PASS" if all(v < GOAL_P99_S for v in vals.values()) else "MISS")}
    if vals and reps > 1:
        g["note"] = "median of runs: " + ", ".join(f"{k.replace('pacsguard-', '')} {v:.3f} s" for k, v in medians.items())
    if not vals:
        g["why"] = _why_missing(c, "pacsguard-pass", "rate")
    out.append(g)
    n = results["settings"]["memory_n"]
    peak = memory.get("median", {}).get("peak_rss_mb") if memory else None
    is_pg = bool(memory) and str(memory.get("contender", "")).startswith("pacsguard")
    incomplete = bool(memory) and memory.get("status") == "incomplete"
    g = {"goal": f"peak RSS < {GOAL_RSS_MB:g} MB through the {n}-image burst", "value": peak if is_pg else None,
         "target": GOAL_RSS_MB,
         "status": "PASS" if is_pg and peak is not None and peak < GOAL_RSS_MB
         else ("MISS" if is_pg and peak is not None else "n/a")}
    if incomplete:
        md = memory["median"]
        g["note"] = (f"run incomplete: {md.get('images_acked')} acknowledged, {md.get('images_delivered')} delivered "
                     f"before it was given up: {memory.get('error', '')[:200]}")
    if memory and not is_pg:
        g["why"] = f"memory burst ran on {memory.get('contender')}, not pacsguard"
    elif peak is None:
        g["why"] = (memory or {}).get("error") or "memory burst not run"
    out.append(g)
    out.extend(slice_goals(results.get("encryption")))
    return out


def slice_goals(enc: dict | None) -> list[dict]:
    """Encrypt and decrypt per 512x512 16-bit CT slice, judged on the slowest slice kind."""
    out = []
    for op in ("encrypt", "decrypt"):
        g = {"goal": f"{op} <= {crypto.GOAL_SLICE_MS:g} ms per 512x512 16-bit CT slice, file in -> file out "
                     f"(p50, one core, the slower kind of slice)", "target": crypto.GOAL_SLICE_MS}
        per = {label: s[op]["total_ms_p50"] for label, s in ((enc or {}).get("per_slice") or {}).items()}
        if not per:
            g.update(value=None, status="n/a", why=(enc or {}).get("error") or "encryption micro-benchmarks not run")
        else:
            worst = max(per.values())
            g.update(value=worst, status="PASS" if worst <= crypto.GOAL_SLICE_MS else "MISS",
                     note=", ".join(f"{label} {ms:.3f} ms" for label, ms in per.items()))
        out.append(g)
    return out


def _why_missing(c, key, shape) -> str | None:
    if key not in c:
        return f"{key} not selected"
    s = c[key].get(shape)
    if not s:
        return f"{key}: {shape} not run"
    if s.get("status") != "ok":
        return f"{key}: " + (s.get("error") or s.get("status") or "?").splitlines()[0][:300]
    return None


# --- main -------------------------------------------------------------------------------------

def rerender(args) -> int:
    """Recompute the aggregates and goals of a saved JSON and write the table/chart again."""
    results = json.loads(args.report.read_text())
    for e in results.get("contenders", {}).values():
        for shape in ("burst", "rate"):
            if shape in e:
                e[shape] = aggregate(e[shape]["runs"])
    _ratios(results)
    mem = results.get("memory")
    if mem and mem.get("runs"):
        keep = {k: mem[k] for k in mem if k not in ("runs", "median", "worst", "status", "runs_ok", "service_log")}
        agg = aggregate(mem["runs"])
        mem = {**keep, **agg}
        r = mem["runs"][0]
        if agg["status"] != "ok" and "failed" not in r:
            mem["status"] = "incomplete"
            mem["median"] = {k: v for k, v in r.items() if isinstance(v, (int, float))}
        results["memory"] = mem
    results["goals"] = goals(results, mem)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / (args.report.stem + "-rerendered")
    table = report.table(results)
    print(table)
    base.with_suffix(".txt").write_text(table + "\n")
    if not args.no_png:
        report.chart(results, base.with_suffix(".png"))
    base.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten: {base}.{{json,txt{'' if args.no_png else ',png'}}}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        return rerender(args)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="pacsguard-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for tool in ("storescu", "storescp", "openssl"):
        peers.require(tool)
    if "orthanc" in args.contenders:
        peers.require("Orthanc")
    results: dict = {
        "schema": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": " ".join([Path(sys.executable).name, "-m", "tests.benchmarks", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "quick": args.quick, "n": args.n, "size": args.size, "repeat": args.repeat, "rate": args.rate,
            "rate_n": args.rate_n, "memory_n": None if args.no_memory else args.memory_n,
            "stage_n": args.stage_n, "contenders": args.contenders, "shapes": args.shapes,
            "recipient": args.recipient, "crypto_samples": None if args.no_crypto else args.crypto_samples,
            "sink": {"program": "dcmtk storescp", "max_pdu": args.sink_pdu, "flags": "+xa -uf +B --promiscuous",
                     "env": "TCP_NODELAY=1"},
            "sender_burst": "dcmtk storescu -v (one association for the CT series, one for pydicom's bundled "
                            "images; TCP_NODELAY=1; own presentation-context profile proposing each file's "
                            "transfer syntax)",
            "sender_rate": "own socket C-STORE SCU on one association, fixed schedule, timestamps each response "
                           "(folder contender: write temp + rename at the same schedule)",
            "timing": "first byte sent -> mtime of the last file stored at the sink; sink polled every 10 ms",
            "service_figures": "CPU (user+sys) and RSS summed over the service's process tree, /proc polled "
                               "every 50 ms (memory burst: 200 ms)",
        },
        "contenders": {},
        "goals_targets": {"pass_through_vs_orthanc": GOAL_PASS_RATIO, "encrypt_vs_orthanc": GOAL_ENCRYPT_RATIO,
                          "slice_encrypt_decrypt_ms": crypto.GOAL_SLICE_MS,
                          "p99_ack_to_delivery_s": GOAL_P99_S, "peak_rss_mb": GOAL_RSS_MB},
    }
    try:
        keys = make_keys(scratch / "keys", args.recipient)
        store = key_store(keys)
        corpus = corpus_mod.build(scratch / "corpus", n=args.n, size=args.size, bundled=not args.no_bundled)
        warmup = corpus_mod.warmup_series(scratch / "corpus")
        results["corpus"] = corpus.describe()
        contenders = contenders_mod.make_contenders(args.contenders, keys, args.pipeline,
                                                    orthanc_delete=args.orthanc_delete)
        common = dict(cfg=corpus.storescu_cfg, warmup=warmup, sink_pdu=args.sink_pdu,
                      stall_timeout=args.stall_timeout)
        runs: dict[str, dict[str, list]] = {c.key: {} for c in contenders}
        rate_files = corpus.ct_files()[: args.rate_n]
        for shape in args.shapes:
            for rep in range(args.repeat):
                for c in contenders:
                    log(f"{shape} {rep + 1}/{args.repeat}: {c.key}")
                    if shape == "burst":
                        r = runner.run_shape(c, shape="burst", workdir=scratch / "run", files=corpus.files,
                                             groups=corpus.series(), **common)
                    elif shape == "rate":
                        r = runner.run_shape(c, shape="rate", workdir=scratch / "run", files=rate_files,
                                             groups=None, rate=args.rate, **common)
                    else:
                        raise SystemExit(f"unknown shape {shape!r}")
                    log(f"  -> {report.one_line(r)}")
                    runs[c.key].setdefault(shape, []).append(r)
        for c in contenders:
            entry = {"label": c.label, "note": c.note, "is_limit": c.is_limit, "is_peer": c.is_peer}
            for shape, rs in runs[c.key].items():
                entry[shape] = aggregate(rs)
            results["contenders"][c.key] = entry
        _ratios(results)
        memory = None
        if not args.no_memory:
            memory = _memory(args, contenders, corpus, warmup, scratch, common, keys)
            results["memory"] = memory
        if not args.no_stages:
            ct = corpus.ct_files()[: args.stage_n]
            try:
                results["stages"] = stages_mod.run(ct, corpus.files[corpus.ct_count:], keys, store=store)
            except Exception as exc:
                log(f"stage micro-benchmarks failed: {exc}")
                results["stages"] = {"error": f"{type(exc).__name__}: {exc}"}
        if not args.no_crypto:
            try:
                enc = crypto.run([f.path for f in corpus.ct_files()[: args.stage_n]], store, keys["recipient"],
                                 scratch / "crypto", samples=args.crypto_samples, seconds=1 if args.quick else 2)
                results["cipher_stats"] = enc.pop("cipher_stats")
                results["encryption"] = enc
            except Exception as exc:
                log(f"encryption micro-benchmarks failed: {exc}")
                results["encryption"] = {"error": f"{type(exc).__name__}: {exc}"}
        if not args.no_inference:
            results["inference"] = inference.harness_run(quick=args.quick)
        results["goals"] = goals(results, memory)
    finally:
        results["machine"]["loadavg_end"] = list(os.getloadavg())
        results["elapsed_s"] = round(time.time() - started, 1)
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    base = args.out / f"bench-{stamp}"
    table = report.table(results)
    print(table)
    base.with_suffix(".txt").write_text(table + "\n")
    results["files"] = {"json": str(base.with_suffix(".json")), "table": str(base.with_suffix(".txt"))}
    if not args.no_png:
        png = report.chart(results, base.with_suffix(".png"))
        if png:
            results["files"]["png"] = str(png)
    base.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    for suffix in (".json", ".txt", ".png"):
        src = base.with_suffix(suffix)
        if src.exists():
            shutil.copyfile(src, args.out / f"latest{suffix}")
    print(f"\nwritten: {', '.join(results['files'].values())} (and latest.* beside them)")
    return 0


def _ratios(results: dict) -> None:
    c = results["contenders"]

    def ips(key, shape="burst"):
        return c.get(key, {}).get(shape, {}).get("median", {}).get("images_per_s")

    for key, e in c.items():
        e["ratios"] = {"burst_vs_orthanc": ratio(ips(key), ips("orthanc")),
                       "burst_vs_limit": ratio(ips(key), ips("dcmtk-limit"))}


def _memory(args, contenders, corpus, warmup, scratch, common, keys) -> dict:
    pick = args.memory_contender
    by_key = {c.key: c for c in contenders}
    if pick is None:
        pick = "pacsguard-pass" if "pacsguard-pass" in by_key else next(
            (c.key for c in contenders if not c.is_limit), None)
    if pick is None:
        return {"status": "skipped", "why": "no service contender selected"}
    if pick not in by_key:
        by_key.update({c.key: c for c in contenders_mod.make_contenders([pick], keys, args.pipeline)})
    c = by_key[pick]
    log(f"memory burst: {args.memory_n} images -> {pick}")
    files = corpus_mod.clone_series(scratch / "memory-corpus", args.memory_n, size=args.size)
    runs = []
    try:
        r = runner.run_shape(c, shape="memory", workdir=scratch / "run", files=files, groups=[files],
                             rss_interval=0.2, keep_timeline=True, **{**common, "stall_timeout": args.stall_timeout})
        runs.append(r)
        log(f"  -> {report.one_line(r)}")
    finally:
        shutil.rmtree(scratch / "memory-corpus", ignore_errors=True)
    agg = aggregate(runs)
    out = {"contender": pick, "label": c.label, "images": args.memory_n, **agg}
    r = runs[0]
    if agg["status"] != "ok" and "failed" not in r:
        # incomplete (some objects not delivered in time): its figures still tell how memory
        # behaved while the service took the whole burst in
        out["status"] = "incomplete"
        out["median"] = {k: v for k, v in r.items() if isinstance(v, (int, float))}
    tl = r.get("rss_timeline") or []
    if tl:
        k = max(1, len(tl) // 5)
        first = median([m for _, m in tl[:k]])
        last = median([m for _, m in tl[-k:]])
        out["rss_first_fifth_mb"], out["rss_last_fifth_mb"] = first, last
        out["rss_growth_mb"] = round(last - first, 1)
        out["timeline"] = tl[:: max(1, len(tl) // 600)]  # at most ~600 points in the JSON
    out["delivered_timeline"] = r.get("delivered_timeline") or []
    for run in runs:
        run.pop("rss_timeline", None)
        run.pop("delivered_timeline", None)
    return out
