"""The decoder plugins' evaluation report:
``.venv/bin/python -m tests.benchmarks.evaluate_decoders [--out docs/decoders-evaluation.md] [--json PATH] [--quick]``.

Writes ``docs/decoders-evaluation.md`` and its figures as JSON (default: beside it,
``.json``). Everything is measured in the run (about a minute on 2 CPU cores):

1. ``infer`` on the held-out split of its shipped model (:mod:`pacsguard.plugins.decoders.train_vit`):
   through the real stages (digits as DICOM files, ``scramble`` block 4 and ``infer``
   with the key), the plain model on plain images and the converted model on scrambled
   images, prediction by prediction (agreements counted); the plain model on the scrambled
   images and a model converted with a wrong key, which must collapse; and the float64
   model-level figures of ``train_vit.evaluate``;
2. the attacks on ``scramble`` (:mod:`.attacks`), on single slices and on the ``infer``
   route's images pooled under one key;
3. cipher-image statistics of ``scramble`` next to AES-256-GCM's (:mod:`.scramble_stats`),
   and of ``neural-encrypt`` next to both where the neural cipher is installed;
4. throughput per image of ``scramble``, ``unscramble`` and ``infer`` on the CPU (and on a
   GPU when torch sees one), and ``infer`` micro-batched vs one at a time (:mod:`.inference`);
5. the neural cipher's own evaluation, when ``pacsguard.plugins.decoders.train_neural``
   provides ``evaluate(device="cpu")`` ("not present" otherwise).

Beside the report it draws two figures (``decoders-evaluation.png``, ``-digits.png``) of what
the attacks recover without the key.

``--quick`` (the tests): a slice of the held-out split, the small images only, few
timing samples; its figures are not the report's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import attacks, inference, scramble_stats
from .common import REPO_ROOT, percentile

DEFAULT_OUT = REPO_ROOT / "docs" / "decoders-evaluation.md"
COMMAND = "python -m tests.benchmarks.evaluate_decoders"
TIMED_CT = "693_UNCI.dcm"


# --- infer -----------------------------------------------------------------------------------

def _labels(items) -> np.ndarray:
    return np.array([int(i.results["infer"]["label"]) for i in items])


def _classify(paths, store, stage) -> np.ndarray:
    from pacsguard.daemon.item import Item

    hook = inference.decode()
    items = [Item(i, p, inference.facts(), keys=store, decode_pixels=hook) for i, p in enumerate(paths)]
    for at in range(0, len(items), 64):
        stage.process_batch(items[at:at + 64])
    return _labels(items)


def _pixels(paths) -> np.ndarray:
    import pydicom

    return np.stack([pydicom.dcmread(p).pixel_array for p in paths])[..., None]


def infer_accuracy(n: int | None = None) -> dict:
    """The held-out split (or its first ``n``) through the real stages, for both flip settings."""
    import torch

    from pacsguard.daemon.item import Item
    from pacsguard.daemon.keys import Key, secret_key_id
    from pacsguard.plugins.decoders import blocks, runtime, train_vit, vit
    from pacsguard.plugins.decoders.scramble import Scramble
    from tests.plugins.digits import write_digits

    _, _, xte, yte = train_vit.split()
    if n:
        xte, yte = xte[:n], yte[:n]
    store = inference.keys()
    wrong_secret = train_vit.WRONG_KEY
    wrong = Key("wrong", "secret", secret_key_id(wrong_secret), "/bench/wrong.key", secret=wrong_secret)
    model, meta = train_vit.shipped()
    cfg = model.cfg
    work = Path(tempfile.mkdtemp(prefix="pacsguard-eval-digits-"))
    out: dict = {"model": meta["name"], "test_images": int(len(yte)), "chance": 0.1,
                 "split": "sklearn digits, 80/20 stratified, random_state=0 (never trained on)"}
    try:
        plain_paths = write_digits(work / "plain", xte, yte)
        plain_pred = _classify(plain_paths, store, inference.infer_stage(64))
        hook = inference.decode()
        for flip in (True, False):
            scrambler = Scramble(Scramble.Options(key="vit", block_size=cfg.patch, flip=flip))
            folder = work / f"scrambled-{flip}"
            folder.mkdir()
            paths = []
            for i, p in enumerate(plain_paths):
                dst = folder / p.name
                scrambler.process(Item(i, p, inference.facts(), keys=store, decode_pixels=hook)).write(dst)
                paths.append(dst)
            conv_pred = _classify(paths, store, inference.infer_stage(64))
            scrambled = _pixels(paths)
            x = vit.normalize(scrambled, (0, 255))
            plain_on_scrambled = runtime.run(model, x).argmax(1).numpy()
            wrong_key = blocks.derive(wrong.secret, rows=cfg.image, columns=cfg.image, samples=cfg.channels,
                                      block=cfg.patch, flip=flip)
            wrong_pred = runtime.run(vit.convert(model, wrong_key), x).argmax(1).numpy()
            model_level = train_vit.evaluate(model, xte, yte, flip=flip)

            def acc(pred) -> float:
                return round(float(np.mean(pred == yte)), 4)

            out["flip" if flip else "no_flip"] = {
                "scrambled_pixels_differ_pct": round(100 * float(np.mean(scrambled != xte)), 2),
                "plain_model_plain_images": acc(plain_pred),
                "converted_model_scrambled_images": acc(conv_pred),
                "agreements": int(np.sum(plain_pred == conv_pred)),
                "disagreements": int(np.sum(plain_pred != conv_pred)),
                "plain_model_scrambled_images": acc(plain_on_scrambled),
                "wrong_key_model_scrambled_images": acc(wrong_pred),
                "float64_model_level": {k: model_level[k] for k in (
                    "plain_model_plain_images", "converted_model_scrambled_images", "predictions_that_differ",
                    "max_logit_difference", "plain_model_scrambled_images", "wrong_key_model_scrambled_images")},
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["torch"] = torch.__version__
    return out


# --- throughput ------------------------------------------------------------------------------

def _time_stage(stage, path: Path, store, samples: int, out: Path | None = None) -> list[float]:
    from pacsguard.daemon.item import Item

    hook = inference.decode()
    times = []
    for i in range(samples):
        item = Item(i, path, inference.facts(), keys=store, decode_pixels=hook)
        _ = item.dataset  # parsed beforehand (each stage's first touch pays it once per object)
        t0 = time.perf_counter()
        item = stage.process(item)
        times.append(time.perf_counter() - t0)
        if out is not None and i == 0:
            item.write(out)
    return times


def _figure(times: list[float]) -> dict:
    p50 = percentile(times, 50)
    return {"ms_p50": round(1000 * p50, 3), "ms_p90": round(1000 * percentile(times, 90), 3),
            "images_per_s": round(1 / p50, 1), "samples": len(times)}


def throughput(samples: int = 30, infer_n: int = 360, repeat: int = 3, quick: bool = False) -> dict:
    """Per image, on the CPU: scramble and unscramble (a real 512x512 CT slice, block 16;
    a 32x32 digit, block 4 with flip), infer one at a time and micro-batched; the same on
    a GPU when torch sees one (infer only: scramble is numpy)."""
    import torch

    from pacsguard.plugins.decoders.scramble import Scramble, Unscramble

    from .common import TESTS_DIR  # noqa: F401
    from conftest import bundled_images

    store = inference.keys()
    work = Path(tempfile.mkdtemp(prefix="pacsguard-eval-tp-"))
    res: dict = {"cpu": {}, "torch_threads": 1}
    torch.set_num_threads(1)
    try:
        digits = inference.scrambled_digits(work / "digits", max(infer_n, 64), store)
        plain_digit = sorted((work / "digits" / "plain").glob("*.dcm"))[0]
        ct = None if quick else next((p for p in bundled_images() if p.name == TIMED_CT), None)
        cases = [("digit 32x32 8-bit, block 4, flip", plain_digit,
                  Scramble.Options(key="vit", block_size=4, flip=True))]
        if ct is not None:
            cases.insert(0, (f"CT {TIMED_CT} 512x512 16-bit, block 16", ct, Scramble.Options(key="vit", block_size=16)))
        for label, path, opts in cases:
            mid = work / f"scrambled-{len(res['cpu'])}.dcm"
            s = _time_stage(Scramble(opts), path, store, samples, mid)
            u = _time_stage(Unscramble(Unscramble.Options(key="vit")), mid, store, samples)
            res["cpu"][f"scramble: {label}"] = _figure(s)
            res["cpu"][f"unscramble: {label}"] = _figure(u)
            if path == ct:
                res["cpu"].update(_kernels(path, opts, samples))
        paths = digits[:infer_n]
        inference.stage_pass(paths[:32], store, 32)
        one = [inference.stage_pass(paths, store, 1) for _ in range(repeat)]
        batched = [inference.stage_pass(paths, store, 32) for _ in range(repeat)]
        n = len(paths)
        res["cpu"]["infer: digit 32x32, one at a time"] = _per_image(one, n)
        res["cpu"]["infer: digit 32x32, batches of 32"] = _per_image(batched, n)
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            inference.stage_pass(paths[:32], store, 32, "cuda")
            res["gpu"] = {"device": name,
                          "infer: digit 32x32, one at a time": _per_image(
                              [inference.stage_pass(paths, store, 1, "cuda") for _ in range(repeat)], n),
                          "infer: digit 32x32, batches of 32": _per_image(
                              [inference.stage_pass(paths, store, 32, "cuda") for _ in range(repeat)], n)}
        else:
            res["gpu"] = {"device": None, "note": "not measured (no GPU lent)"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def _kernels(path: Path, opts, samples: int) -> dict:
    """The numpy work alone (:func:`blocks.scramble` / :func:`blocks.unscramble` on the
    decoded array, the key derived once), to tell it from the stage's decoding and storing."""
    import pydicom

    from pacsguard.plugins.decoders import blocks, pixeldata

    ds = pydicom.dcmread(path)
    frames = pixeldata.as_frames(ds.pixel_array, ds)
    _, rows, columns, samples_pp = pixeldata.geometry(ds)
    key = blocks.derive(inference.keys()["vit"].secret, rows=rows, columns=columns, samples=samples_pp,
                        block=opts.block_size, flip=opts.flip)
    stored = pixeldata.stored_range(ds)
    out = {}
    for name, fn in (("scramble", blocks.scramble), ("unscramble", blocks.unscramble)):
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            fn(frames, key, stored)
            times.append(time.perf_counter() - t0)
        out[f"{name} kernel alone (blocks.{name} on the decoded array)"] = _figure(times)
    return out


def _per_image(runs: list[float], n: int) -> dict:
    best = sorted(runs)[len(runs) // 2]
    return {"ms_p50": round(1000 * best / n, 3), "images_per_s": round(n / best, 1),
            "samples": f"median of {len(runs)} runs of {n} images"}


# --- the neural cipher -----------------------------------------------------------------------

def neural() -> dict:
    try:
        from pacsguard.plugins.decoders import train_neural
    except ImportError:
        return {"present": False, "note": "not present (pacsguard.plugins.decoders.train_neural is not installed)"}
    evaluate = getattr(train_neural, "evaluate", None)
    if evaluate is None:
        return {"present": False, "note": "not present (train_neural has no evaluate())"}
    return {"present": True, "evaluation": evaluate(device="cpu")}


# --- everything ------------------------------------------------------------------------------

def machine() -> dict:
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    import cryptography
    import pydicom
    import torch

    return {"cpu": model or platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "pydicom": pydicom.__version__,
            "cryptography": cryptography.__version__, "loadavg": [round(x, 2) for x in os.getloadavg()],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def evaluate(quick: bool = False) -> dict:
    inference.quiet_logs()
    started = time.time()
    images = attacks.load_images(["CT_small.dcm", "MR_small.dcm"] if quick else None)
    res = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        "machine": machine(),
        "infer": infer_accuracy(60 if quick else None),
        "attacks": attacks.run(images),
        "infer_route_attack": [attacks.infer_route_attack(n, flip=True) for n in ((8, 60) if quick else (8, 60, None))]
        + ([] if quick else [attacks.infer_route_attack(None, flip=False)]),
        "cipher_statistics": scramble_stats.run(images),
        "throughput": throughput(samples=3 if quick else 30, infer_n=64 if quick else 360, repeat=1 if quick else 3,
                                 quick=quick),
        "micro_batching": inference.run(n=64 if quick else 360, batch=32, repeat=1 if quick else 3),
        "neural": neural(),
        "neural_cipher_statistics": scramble_stats.neural_figures(),
    }
    res["elapsed_s"] = round(time.time() - started, 1)
    return res


# --- the markdown ----------------------------------------------------------------------------

def _db(s: dict) -> str:
    return "identical (inf)" if s.get("identical") else ("-" if s.get("psnr_db") is None else f"{s['psnr_db']:.2f}")


def _q(s: dict) -> str:
    return f"{_db(s)} / {s['ssim']:.3f}"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.4g} %"


def render(r: dict) -> str:
    inf = r["infer"]
    fl = inf["flip"]
    lines = [
        "# Decoder plugins: evaluation",
        "",
        f"Generated by `{r['command']}` on {r['generated_at']} in {r['elapsed_s']:.0f} s "
        f"({r['machine']['cpu']}, {r['machine']['cpus']} CPUs, load average {r['machine']['loadavg'][0]}; "
        f"torch {r['machine']['torch']}, numpy {r['machine']['numpy']}, pydicom {r['machine']['pydicom']}, "
        f"cryptography {r['machine']['cryptography']}). Figures as JSON beside this file. Do not edit: run the "
        "command again.",
        "",
    ]
    if r.get("quick"):
        lines += ["**Quick run (smoke-test sizes): these figures are not the evaluation.**", ""]
    lines += _protects(r)
    lines += [
        "## `infer`: accuracy on the held-out split",
        "",
        f"Model `{inf['model']}`, {inf['test_images']} held-out images ({inf['split']}), through the real "
        "stages: the digits as 32x32 8-bit DICOM files, `scramble` (block 4 = the patch size) and `infer` "
        "(float32, batches of 64). Chance is 10 %.",
        "",
        "| | with negative-positive flip | without |",
        "|---|---:|---:|",
    ]
    nf = inf["no_flip"]
    rows = [("plain model, plain images", "plain_model_plain_images"),
            ("converted model, scrambled images", "converted_model_scrambled_images"),
            ("plain model, scrambled images", "plain_model_scrambled_images"),
            ("model converted with a wrong key, scrambled images", "wrong_key_model_scrambled_images")]
    for label, k in rows:
        lines.append(f"| {label} | {100 * fl[k]:.2f} % | {100 * nf[k]:.2f} % |")
    lines.append(f"| predictions equal, converted on scrambled vs plain on plain | {fl['agreements']} of "
                 f"{inf['test_images']} | {nf['agreements']} of {inf['test_images']} |")
    lines.append(f"| float64 model level: predictions that differ / largest logit difference | "
                 f"{fl['float64_model_level']['predictions_that_differ']} / "
                 f"{fl['float64_model_level']['max_logit_difference']:.1e} | "
                 f"{nf['float64_model_level']['predictions_that_differ']} / "
                 f"{nf['float64_model_level']['max_logit_difference']:.1e} |")
    lines.append(f"| scrambled pixels that differ from the plain ones | {fl['scrambled_pixels_differ_pct']:.1f} % "
                 f"| {nf['scrambled_pixels_differ_pct']:.1f} % |")
    lines += ["", "Without the key the model collapses to chance; with it, it is the plain model, prediction by "
              "prediction. The plain-model and wrong-key rows run the model directly on the stage's scrambled "
              "pixels: the `infer` stage itself refuses a key whose key ID is not the one recorded in the object "
              "(quarantined with that reason), and classifies a scrambled object only with the converted model.",
              ""]
    lines += _attacks(r["attacks"])
    lines += _route_attack(r.get("infer_route_attack") or [])
    if r.get("digits_figure"):
        lines += [f"![The infer route's digits recovered without the key]({r['digits_figure']})", ""]
    if r.get("figure"):
        lines += [f"![What the attacks make of {TIMED_CT} without the key]({r['figure']})", ""]
    lines += _stats(r["cipher_statistics"])
    lines += _throughput(r["throughput"], r["micro_batching"])
    lines += _neural(r["neural"])
    lines += _neural_stats(r.get("neural_cipher_statistics") or {})
    return "\n".join(lines) + "\n"


def _protects(r: dict) -> list[str]:
    a = {x["image"]: x for x in r["attacks"]}
    ct = a.get("693_UNCI.dcm") or next(iter(a.values()))
    small = [x for x in r["attacks"] if "block_positions_only" in x.get("jigsaw", {})]
    jig = ", ".join(f"{x['image']} ({x['jigsaw']['block_positions_only']['blocks']} blocks) "
                    f"{100 * x['jigsaw']['block_positions_only']['placed_right']:.0f} % / "
                    f"{100 * x['jigsaw']['block_positions_only']['neighbours_right']:.0f} %" for x in small)
    jig_full = ", ".join(
        f"{x['image']} {100 * x['jigsaw']['full_scramble_flip_undone'].get('neighbours_right', 0):.0f} %"
        for x in small if "neighbours_right" in x["jigsaw"]["full_scramble_flip_undone"])
    ra = r.get("infer_route_attack") or []
    route = "; ".join(f"from {x['images']} images, {x['pixels_right_pct']:.0f} % of the pixels exactly, the plain "
                      f"model reading {100 * x['plain_model_on_recovered']:.0f} % of them right "
                      f"(on the plain images {100 * x['plain_model_on_plain']:.0f} %)" for x in ra if x["flip"])
    order = ", ".join(f"{x['image']} {x['shared_order']['in_block_positions_right_pct']:.0f} %" for x in r["attacks"]
                      if "shared_order" in x)
    order = f"in-block positions right up to the block's symmetries: {order}"
    cp = ", ".join(f"{x['image']}: {x['chosen_plaintext']['chosen_images']}" for x in r["attacks"])
    inf = r["infer"]["flip"]
    return [
        "## What `scramble` protects, and what it does not",
        "",
        "`scramble` is a perceptual scrambler for inference on protected images (the block-wise scheme for "
        "vision transformers of the Kiya lab), not a cipher; the cipher-image statistics papers report are "
        "necessary-looking, never sufficient (broken chaotic ciphers meet them too). Measured here:",
        "",
        "It protects:",
        "",
        f"- **what a person sees at a glance**: a scrambled slice does not resemble the original (on "
        f"{ct['image']}: PSNR "
        f"{_db(ct['no_key']['scrambled'])} dB, SSIM {ct['no_key']['scrambled']['ssim']:.3f}; unscrambled with a "
        f"wrong key: {_q(ct['wrong_key'])});",
        f"- **what a model without the key gets from the pixels as sent** (no attack): the plain model on "
        f"scrambled images "
        f"{100 * inf['plain_model_scrambled_images']:.1f} %, a model converted with a wrong key "
        f"{100 * inf['wrong_key_model_scrambled_images']:.1f} % (chance 10 %), while the key holder's converted "
        f"model gives the plain model's predictions exactly;",
        f"- **exact restoration** for the key holder (here: "
        f"{'exact on every image' if all(x['round_trip_exact'] for x in r['attacks']) else 'NOT exact on some image'}"
        "; the test suite checks `unscramble` on every bundled image `scramble` takes).",
        "",
        "It does not protect:",
        "",
        "- **the header**: patient name, IDs, dates stay as they are (scramble changes pixels only; "
        "`deidentify` or `encrypt` first);",
        f"- **against anyone who can have images scrambled with the key**: one key orders every image of a "
        f"geometry, so a chosen-plaintext attack (images whose values spell each pixel's position) recovers "
        f"the whole order and flip mask and then unscrambles every image of that key exactly (images needed: "
        f"{cp}). Anyone who can send images into the route and read its output can do this; a known "
        "plaintext/cipher pair goes a long way too;",
        f"- **the negative-positive flip** adds little: the leading-bit attack removes it exactly "
        f"({ct['leading_bit']['flip_layer_removed_pct']:.0f} % of pixels), and the minimum-difference attack, "
        f"with the mask shared by every block, recovers the mask "
        f"({ct['minimum_difference']['shared_mask_bits_right_pct']:.0f} % of its bits on {ct['image']});",
        f"- **the images of a route, from the scrambled images alone**: the key is shared by every image, so "
        f"an attacker pools over them; on the `infer` route's digits (block 4, flip) {route}; see the table "
        f"below;",
        f"- **the shuffle inside the blocks, from the scrambled image alone**: the in-block order is one "
        f"permutation shared by every block, and positions that are neighbours in the plain block hold the most "
        f"similar values over all the blocks; laying the positions out by that similarity recovers the order "
        f"({order}; the scorer, not the attacker, knows the key), after which only the block positions remain "
        f"and the jigsaw solver shows parts of the anatomy (the figure below);",
        f"- **block positions alone** fall to a simple jigsaw solver (blocks at their place / neighbour pairs "
        f"right: {jig}; a reassembly shifted by one block has none at its place but its neighbours right: see the "
        f"figure; what it misses, on noisy flat background, is "
        f"this solver's limit, not a measured margin); left in place, the shuffle inside the blocks stops it "
        f"(neighbour pairs right after it: {jig_full}), but the previous point undoes that shuffle;",
        "- **the converted model**: it is key material; the plain weights ship with the package, so the "
        "converted patch embedding and position embeddings give the in-block order and the block order away;",
        "- **the values**: every block keeps its multiset of values and the image its histogram (without flip "
        "the entropy is the plain image's; see the statistics below), so coarse content (how much bone, air, "
        "contrast) shows through; there is **no diffusion** (one changed pixel changes one pixel of the "
        "output) and **no integrity** (changes go unnoticed).",
        "",
        "In short: `scramble` keeps images from being read at a glance and lets a keyed model classify them; "
        "it does not keep a determined party without the key from the anatomy (ciphertext only: the attacks "
        "above and the figure), nor anyone who can have images scrambled with the key from every image. For "
        "confidentiality use `encrypt` (AES-256-GCM): its key and tag carry the security.",
        "",
    ]


def _attacks(rows: list[dict]) -> list[str]:
    out = [
        "## Attacks on `scramble`",
        "",
        f"Real slices of pydicom / pydicom-data, `scramble` with block {rows[0]['block'] if rows else 16}. "
        "Each cell: PSNR (dB, against the image's own dynamic range: negative where the flip moves values far "
        "outside it) / SSIM against the plain image, unless said. "
        "See tests/benchmarks/attacks.py for each attack.",
        "",
        "| image | no key (scrambled, flip) | wrong key | leading-bit: flip layer removed | leading-bit, flip only "
        "(no permutation): folded vs plain | min-difference, flip only: pixels right | min-difference + shared "
        "mask: mask bits right | chosen plaintext (images) |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for x in rows:
        lb, md = x["leading_bit"], x["minimum_difference"]
        out.append(f"| {x['image']} ({x['what']}) | {_q(x['no_key']['scrambled'])} | {_q(x['wrong_key'])} | "
                   f"{lb['flip_layer_removed_pct']:.1f} % | {_q(lb['flip_only_vs_plain_either_polarity'])} | "
                   f"{md['flip_only_pixels_right_pct']:.1f} % | {md['shared_mask_bits_right_pct']:.1f} % | "
                   f"{_q(x['chosen_plaintext'])} ({x['chosen_plaintext']['chosen_images']}) |")
    out += [
        "",
        "Leading-bit on negative-positive alone (the toy scheme: no permutation) shows the folded image "
        "(values above the middle of the stored range folded back), scored against the plain image in either "
        "grey-scale polarity: where an image lies in one half of the stored range it is the image itself, in "
        "reverse video. Minimum-difference is scored up to one global negative-positive (both "
        "polarities read as the image).",
        "",
        "Jigsaw-solver baseline (prediction-based edge compatibility over the second-best alternative; "
        "Kruskal-style merging of the cheapest pairs into clusters that fit the grid, then greedy filling around "
        "the largest; the scorer, not the solver, knows which block is which). \"Placed right\": direct "
        "comparison (a reassembly shifted by one block scores 0); \"neighbours right\": adjacent pairs of the "
        "reassembly that are adjacent the same way in the plain image. PSNR and SSIM compare pixel by pixel: a "
        "reassembly that is right in pieces but shifted scores low while it reads well (the figure).",
        "",
        "| image | blocks | block positions only: placed right / neighbours right / PSNR, SSIM of the reassembly "
        "| full scramble (flip undone first): placed right / neighbours right / PSNR, SSIM |",
        "|---|---:|---|---|",
    ]
    for x in rows:
        j = x["jigsaw"]
        if "skipped" in j:
            out.append(f"| {x['image']} | - | skipped: {j['skipped']} | |")
            continue
        b, f = j["block_positions_only"], j["full_scramble_flip_undone"]
        full = (f"{100 * f['placed_right']:.1f} % / {100 * f['neighbours_right']:.1f} % / {_q(f)}"
                if "placed_right" in f else f.get("note", "-"))
        out.append(f"| {x['image']} | {b['blocks']} | {100 * b['placed_right']:.1f} % / "
                   f"{100 * b['neighbours_right']:.1f} % / {_q(b)} | {full} |")
    out += [
        "",
        "The in-block order from the scrambled image alone (flip undone first by the minimum-difference attack "
        "with the shared mask): the mean absolute difference, over the blocks that are not flat, of the "
        "block-normalised values at two in-block positions is smallest for plain neighbours; Isomap "
        "(scikit-learn) lays the positions out in 2-D, the layout is snapped to the block's grid and polished "
        "by swaps; then the jigsaw solver puts the unshuffled blocks together (their shared orientation chosen "
        "by how well they fit). Scored up to the 8 rotations / reflections (of a block; of the whole image).",
        "",
        "| image | in-block positions right | reassembly: PSNR / SSIM (best symmetry) |",
        "|---|---:|---|",
    ]
    for x in rows:
        so = x.get("shared_order")
        if not so:
            continue
        re = so.get("reassembly_vs_plain_best_symmetry")
        out.append(f"| {x['image']} | {so['in_block_positions_right_pct']:.1f} % | "
                   f"{_q(re) if re else 'not reassembled (too many blocks for the solver)'} |")
    out.append("")
    return out


def _route_attack(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = ["### The infer route: many images under one key, ciphertext only", "",
           "The held-out digits scrambled as the `infer` route scrambles them (block 4 = the model's patch, one key "
           "for all). The whole key is shared, so the attacker pools over the images: the flip mask by the "
           "minimum-difference majority over every block, the in-block order from all the blocks, the block order "
           "by the jigsaw solver on edge costs summed over all the images (each of the 8 orientations of the "
           "in-block order tried, the cheapest kept). Scored with the whole-image orientation chosen once for all "
           "images (as a person would, by looking at one); the plain model reads the recovered images.", "",
           "| scrambled images pooled | flip | pixels right | mean SSIM | plain model on recovered | on plain | "
           "on scrambled |", "|---:|---|---:|---:|---:|---:|---:|"]
    for x in rows:
        out.append(f"| {x['images']} | {'yes' if x['flip'] else 'no'} | {x['pixels_right_pct']:.1f} % | "
                   f"{x['recovered_vs_plain_mean_ssim']:.3f} | {100 * x['plain_model_on_recovered']:.2f} % | "
                   f"{100 * x['plain_model_on_plain']:.2f} % | {100 * x['plain_model_on_scrambled']:.2f} % |")
    out += ["", "\"Pixels right\" counts exact values at their place: a recovery right in pieces but shifted (blank "
            "border blocks are interchangeable) scores low there; the plain model's accuracy says how readable the "
            "recovered images are.", ""]
    return out


def _stats(rows: list[dict]) -> list[str]:
    out = [
        "## Cipher-image statistics: `scramble` next to AES-256-GCM",
        "",
        "Same images, same pixel bytes (AES-256-GCM of cryptography on the stored little-endian words, the "
        "tag left out). NPCR / UACI (%) between two cipher images: independent keys (fresh key), keys one bit "
        "apart (key sensitivity), plain images one pixel apart under the same key (and, for AES-GCM, the same "
        "nonce, for this measurement only). UACI over the Bits Allocated range. Correlation of adjacent pixels "
        "horizontal / vertical / diagonal. Ideal: independent uniform noise of that size and depth "
        "(tests/benchmarks/cipherstats.py).",
        "",
        "| image | scheme | entropy (bits) | correlation h / v / d | NPCR / UACI fresh key | key sensitivity "
        "(1 bit) | plaintext sensitivity (1 pixel) |",
        "|---|---|---:|---|---|---|---|",
    ]

    def corr(s):
        return " / ".join(f"{s[f'correlation_{d}']:.4f}" for d in ("horizontal", "vertical", "diagonal"))

    def pair(s):
        return f"{s['npcr_pct']:.4f} / {s['uaci_pct']:.4f}"

    for x in rows:
        name = f"{x['image']} ({x['bits_allocated']}-bit, {x['shape'][0]}x{x['shape'][1]})"
        out.append(f"| {name} | plain | {x['plain']['entropy_bits']:.4f} | {corr(x['plain'])} | | | |")
        for scheme, s in x["schemes"].items():
            out.append(f"| | {scheme} | {s['entropy_bits']:.4f} | {corr(s)} | {pair(s['fresh_key'])} | "
                       f"{pair(s['key_sensitivity'])} | {pair(s['plaintext_sensitivity'])} |")
        i = x["ideal"]
        out.append(f"| | ideal | {i['entropy_bits']:.4f} | 0 (\u00b1{i['correlation_bound']}) | "
                   f"{i['npcr_pct']:.4f} (> {i['npcr_critical_pct']:.4f}) / {i['uaci_pct']:.4f} | | |")
    below = [f"{x['image']} ({name.replace('_', ' ')}: {s[name]['npcr_pct']:.4f} % < "
             f"{x['ideal']['npcr_critical_pct']:.4f} %)"
             for x in rows for s in [x["schemes"]["AES-256-GCM"]] for name in ("fresh_key", "key_sensitivity")
             if s[name]["npcr_pct"] < x["ideal"]["npcr_critical_pct"]]
    out += ["", "The bounds in brackets are tests at alpha = 0.05: an ideal cipher misses them 1 time in 20"
            + (f"; AES-GCM does here on {', '.join(below)}, a few equal pixels more than expected by chance."
               if below else "."), ""]
    out += ["AES-GCM meets the ideal values; neither scheme diffuses (CTR mode changes one pixel for one "
            "pixel, which is no weakness of AES-GCM: its security rests on the key, a fresh nonce and the tag). "
            "`scramble` without flip keeps the plain image's entropy (the same values, moved), keeps much of "
            "the adjacent-pixel correlation (pixels of one block stay in one block), and its NPCR / UACI follow "
            "the image (flat regions give equal values under any key).", ""]
    return out


def _throughput(t: dict, mb: dict) -> list[str]:
    gpu = t["gpu"]
    gpu_head = gpu["device"] or "GPU"
    out = [
        "## Throughput per image",
        "",
        f"`Stage.process` on items parsed beforehand (decoding the pixels, the work, writing them back into the "
        f"object; not the file write), p50 of {next(iter(t['cpu'].values()))['samples']} samples; `infer`: one "
        f"image per call vs `process_batch` on 32; torch with {t['torch_threads']} thread.",
        "",
        f"| stage and image | CPU ms/image | CPU images/s | {gpu_head} |",
        "|---|---:|---:|---|",
    ]
    for label, f in t["cpu"].items():
        g = gpu.get(label) if gpu["device"] else None
        if g:
            gcell = f"{g['ms_p50']:.3f} ms ({g['images_per_s']:,.0f}/s)"
        elif gpu["device"]:
            gcell = "numpy: runs on the CPU"
        else:
            gcell = gpu["note"]
        out.append(f"| {label} | {f['ms_p50']:.3f} | {f['images_per_s']:,.1f} | {gcell} |")
    out += ["", "### Inference: micro-batched vs one image at a time (same run)", "",
            inference.table(mb), ""]
    return out


def _neural_stats(n: dict) -> list[str]:
    if not n.get("present"):
        return []
    out = ["### Cipher-image statistics: `neural-encrypt` next to `scramble` and AES-256-GCM", "",
           f"On {n['what']}, {n['images']} images of 32x32 8-bit stacked: entropy of all the cipher values, "
           "adjacent-pixel correlation averaged over the images, NPCR / UACI (%) over the whole stack, as above "
           "(AES-256-GCM: one nonce per image; `neural-encrypt`: the evaluation's salts, the key changed).", "",
           "| scheme | entropy (bits) | correlation h / v / d | NPCR / UACI fresh key | key sensitivity (1 bit) | "
           "plaintext sensitivity (1 pixel per image) |", "|---|---:|---|---|---|---|"]

    def corr(x):
        return " / ".join(f"{x[f'correlation_{d}']:.4f}" for d in ("horizontal", "vertical", "diagonal"))

    def pair(x):
        return f"{x['npcr_pct']:.4f} / {x['uaci_pct']:.4f}"

    out.append(f"| plain | {n['plain']['entropy_bits']:.4f} | {corr(n['plain'])} | | | |")
    for name, x in n["schemes"].items():
        out.append(f"| {name} | {x['entropy_bits']:.4f} | {corr(x)} | {pair(x['fresh_key'])} | "
                   f"{pair(x['key_sensitivity'])} | {pair(x['plaintext_sensitivity'])} |")
    i = n["ideal"]
    out.append(f"| ideal | {i['entropy_bits']:.4f} | 0 (\u00b1{i['correlation_bound']}) | {i['npcr_pct']:.4f} "
               f"(> {i['npcr_critical_pct']:.4f}) / {i['uaci_pct']:.4f} | | |")
    return out + [""]


def _flatten(d, prefix="") -> list[tuple[str, object]]:
    items = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            items.extend(_flatten(v, key + "."))
        else:
            items.append((key, v))
    return items


def _neural(n: dict) -> list[str]:
    out = ["## Neural cipher (`neural-encrypt` / `neural-restore` / `roi`, experimental)", ""]
    if not n.get("present"):
        return out + [n.get("note", "not present"), ""]
    out += ["Its own evaluation (`pacsguard.plugins.decoders.train_neural.evaluate(device=\"cpu\")`), as it "
            "returns it:", "", "| figure | value |", "|---|---|"]
    for k, v in _flatten(n["evaluation"]):
        out.append(f"| {k} | {v} |")
    return out + [""]


def make_figure(path: Path, name: str = TIMED_CT) -> str | None:
    """A PNG of what the attacks make of one slice (plain, scrambled, flip undone and in-block
    order recovered, reassembled; block positions alone and their reassembly). Returns the
    file name, or None without matplotlib or the image."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    found = attacks.load_images([name])
    if not found:
        return None
    img = found[0]
    b = attacks.BLOCK
    lo, hi = img.stored
    full = attacks.key_for(img, flip=True)
    cipher = attacks.scramble(img, full)
    undone, mask = attacks.shared_mask(cipher, img.stored, b)
    if np.mean(mask == full.flip) < 0.5:  # the attacker keeps the polarity that reads right
        undone = (lo + hi) - undone
    unshuffled = attacks.unshuffle(undone, attacks.in_block_order(undone, b), b)
    positions = attacks.scramble(img, attacks.partial_key(full, pi=False, flip=False))
    rows, columns = img.pixels.shape
    grid = (rows // b, columns // b)
    panels = [("plain", img.pixels), ("scramble (block 16, flip): what is sent", cipher),
              ("flip undone, in-block order recovered", unshuffled),
              ("... then the jigsaw solver", attacks.orient_and_solve(unshuffled, b)),
              ("block positions alone (no in-block shuffle)", positions),
              ("... and the jigsaw solver on it",
               attacks._untile(attacks._tiles(positions, b)[attacks.solve_jigsaw(attacks._tiles(positions, b), grid)],
                               grid))]
    lo_v, hi_v = np.percentile(img.pixels, [1, 99.5])
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.8))
    for ax, (title, im) in zip(axes.ravel(), panels):
        ax.imshow(im, cmap="gray", vmin=lo_v, vmax=hi_v, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Attacks on scramble without the key: {name} (pydicom-data)", fontsize=11)
    fig.tight_layout()
    fig.subplots_adjust(hspace=0.12, top=0.92)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=56)
    plt.close(fig)
    return path.name


def make_digits_figure(path: Path, shown: int = 10) -> str | None:
    """A PNG of the infer route's attack: held-out digits, scrambled (block 4, flip), and
    what the pooled ciphertext-only attack recovers from all 360 (one orientation for all)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from pacsguard.plugins.decoders import blocks, train_vit

    _, _, xte, _ = train_vit.split()
    key = blocks.derive(attacks.KEY, rows=32, columns=32, samples=1, block=4, flip=True)
    cipher = blocks.scramble(xte, key)[..., 0]
    plain = xte[..., 0].astype(np.int64)
    recovered = max(attacks.symmetries(attacks.pooled_attack(cipher, (0, 255), 4)),
                    key=lambda r: float(np.mean(r == plain)))
    fig, axes = plt.subplots(3, shown, figsize=(1.1 * shown, 3.6))
    for row, (title, images) in enumerate((("plain", plain), ("scrambled", cipher), ("recovered", recovered))):
        for i in range(shown):
            axes[row, i].imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes[row, i].axis("off")
        axes[row, 0].set_title(title, fontsize=8, loc="left")
    fig.suptitle(f"infer route (block 4, flip, one key): recovered from the {len(xte)} scrambled images alone",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=64)
    plt.close(fig)
    return path.name


def _jsonable(o):
    if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
        return None
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


def _finite(o):
    """JSON has no inf or nan: they become null."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def write(results: dict, out: Path, json_path: Path | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(results))
    json_path = json_path or out.with_suffix(".json")
    json_path.write_text(json.dumps(_finite(results), indent=2, default=_jsonable, allow_nan=False) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="the markdown report (default docs/decoders-evaluation.md)")
    p.add_argument("--json", type=Path, help="the figures as JSON (default: beside --out, .json)")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (figures not meaningful)")
    args = p.parse_args(argv)
    results = evaluate(quick=args.quick)
    if not args.quick:
        results["figure"] = make_figure(args.out.with_suffix(".png"))
        results["digits_figure"] = make_digits_figure(args.out.with_name(args.out.stem + "-digits.png"))
    write(results, args.out, args.json)
    print(f"written: {args.out}, {args.json or args.out.with_suffix('.json')} ({results['elapsed_s']} s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
