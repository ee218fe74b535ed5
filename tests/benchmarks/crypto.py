"""Encryption micro-benchmarks, on one core (the process pinned to one CPU meanwhile):

- per 512x512 16-bit CT slice, file in -> file out, pixel scope: ``Item`` (parse the
  header), the ``encrypt`` / ``decrypt`` stage (reads the pixel data, wraps or unwraps the
  data key, AES-256-GCM), ``Item.write`` (pydicom encodes the object; the folder is a tmpfs
  where there is one, so the figure is CPU, not the disk's fsync);
- AES-256-GCM throughput on 512 KiB buffers: python ``cryptography`` (the one-shot call,
  and the plugin's own seal/open) against ``openssl speed -evp aes-256-gcm`` in the same
  run, the limit of what the library calls can give;
- wrapping and unwrapping one data key per recipient type;
- the cipher-image statistics of the output (:mod:`.cipherstats`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

from . import cipherstats
from .common import log, median, peers, percentile
from .keys import NAMES, RECIPIENT_TYPES

SLICE_BYTES = 512 * 512 * 2
GOAL_SLICE_MS = 2.0
#: (label, pydicom-data file, what it is): real images for the per-slice timing and the statistics
REAL_16 = ("real CT 693_UNCI.dcm", "693_UNCI.dcm", "CT 512x512, 16 bits allocated, 14 stored (pydicom-data)")
REAL_8 = ("real US OBXXXX1A.dcm", "OBXXXX1A.dcm", "ultrasound 600x800, 8 bits (pydicom-data)")


def run(ct_paths: list[Path], store: dict, recipient: str, folder: Path, *, samples: int = 300,
        seconds: float = 2.0) -> dict:
    """All of the above; ``recipient`` names the key of the per-slice timing."""
    from pacsguard.daemon.memory import tune_allocator

    folder = _scratch(folder)
    tuned = tune_allocator()  # as the service's worker runs
    cpus = os.sched_getaffinity(0)
    cpu = max(cpus)
    os.sched_setaffinity(0, {cpu})
    try:
        real16, real8 = _pydicom_data(REAL_16[1]), _pydicom_data(REAL_8[1])
        out: dict = {"cpu": cpu, "recipient": recipient, "allocator_tuned": tuned, "scratch": "tmpfs" if _on_tmpfs(folder) else "disk",
                     "goal_ms": GOAL_SLICE_MS, "per_slice": {}}
        sources = [("generated CT (the corpus)", ct_paths)] + ([(REAL_16[0], [real16])] if real16 else [])
        for label, paths in sources:
            log(f"encryption per slice: {label}")
            out["per_slice"][label] = per_slice(paths, store, recipient, folder / "slices", samples)
        log("AES-256-GCM throughput (cryptography, openssl speed)")
        out["aes_gcm"] = aes_gcm(seconds)
        out["wrap"] = wraps(store, samples)
        images = [(REAL_16[0], REAL_16[2], real16) if real16 else
                  ("generated CT", "generated CT 512x512 int16 (no pydicom-data)", ct_paths[0])]
        if real8:
            images.append((REAL_8[0], REAL_8[2], real8))
        log("cipher-image statistics")
        out["cipher_stats"] = [cipher_stats(label, what, path, store, recipient, folder / "stats")
                               for label, what, path in images]
        return out
    finally:
        os.sched_setaffinity(0, cpus)
        shutil.rmtree(folder, ignore_errors=True)


def _scratch(folder: Path) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = shm / f"pacsguard-bench-crypto-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _on_tmpfs(folder: Path) -> bool:
    return str(folder).startswith("/dev/shm/")


def _pydicom_data(name: str) -> Path | None:
    """A file of the pydicom-data package, if installed (never downloaded)."""
    try:
        from pydicom.data.data_manager import DataTypes, external_data_sources

        for source in external_data_sources().values():
            found = source.get_paths(name, DataTypes.DATASET)
            if found:
                return Path(found[0])
    except Exception:
        pass
    return None


def _stages(recipient: str):
    from pacsguard.plugins.encryption.stages import Decrypt, Encrypt

    return (Encrypt(Encrypt.Options(scope="pixels", recipients=[recipient])),
            Decrypt(Decrypt.Options(scope="pixels", key=recipient)))


def _item(path: Path, store: dict):
    from pacsguard.daemon.item import Item, TransportFacts

    return Item(1, path, TransportFacts(source="bench", source_type="folder"), keys=store)


def _timed(stage, src: Path, dst: Path, store: dict) -> tuple[float, float, float]:
    """(parse, stage, write) seconds of one object, file in -> file out."""
    t0 = time.perf_counter()
    item = _item(src, store)
    _ = item.dataset
    t1 = time.perf_counter()
    stage.process(item)
    t2 = time.perf_counter()
    item.write(dst)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def per_slice(paths: list[Path], store: dict, recipient: str, folder: Path, samples: int) -> dict:
    import pydicom

    enc, dec = _stages(recipient)
    folder.mkdir(parents=True, exist_ok=True)
    times: dict[str, list] = {"encrypt": [], "decrypt": []}
    for i in range(samples + 5):  # the first five warm up
        src = paths[i % len(paths)]
        mid, back = folder / f"enc-{i % len(paths)}.dcm", folder / "dec.dcm"
        e, d = _timed(enc, src, mid, store), _timed(dec, mid, back, store)
        if i >= 5:
            times["encrypt"].append(e)
            times["decrypt"].append(d)
        if i == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                same = pydicom.dcmread(back).PixelData == pydicom.dcmread(src).PixelData
                changed = pydicom.dcmread(mid).PixelData != pydicom.dcmread(src).PixelData
            if not (same and changed):
                raise RuntimeError(f"round trip of {src.name} did not restore the pixel data")
    out = {"slices": len(paths), "samples": samples, "round_trip": "ok"}
    for op, ts in times.items():
        totals = [sum(t) for t in ts]
        out[op] = {"total_ms_p50": _ms(percentile(totals, 50)), "total_ms_p90": _ms(percentile(totals, 90)),
                   "total_ms_mean": _ms(sum(totals) / len(totals)),
                   **{f"{part}_ms_p50": _ms(median([t[k] for t in ts])) for k, part in
                      enumerate(("parse", "stage", "write"))}}
    return out


def _ms(seconds):
    return None if seconds is None else round(1000 * seconds, 3)


# --- AES-GCM --------------------------------------------------------------------------------

def _rate(fn, seconds: float) -> float:
    """MB/s of ``fn()`` on a 512 KiB buffer, run for about ``seconds``."""
    for _ in range(20):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            fn()
        n += 50
    return round(n * SLICE_BYTES / (time.perf_counter() - t0) / 1e6, 1)


def aes_gcm(seconds: float) -> dict:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from pacsguard.plugins.encryption import aead

    key, base, aad = os.urandom(32), os.urandom(12), b"x" * 200
    buf = os.urandom(SLICE_BYTES)
    aes = AESGCM(key)
    sealed = aes.encrypt(base, buf, aad)
    cipher, tags = aead.seal(key, base, buf, aad)
    py = {
        "encrypt_mb_s": _rate(lambda: aes.encrypt(base, buf, aad), seconds / 2),
        "decrypt_mb_s": _rate(lambda: aes.decrypt(base, sealed, aad), seconds / 2),
        "plugin_seal_mb_s": _rate(lambda: aead.seal(key, base, buf, aad), seconds / 2),
        "plugin_open_mb_s": _rate(lambda: aead.open_(key, base, cipher, tags, aad, aead.DEFAULT_CHUNK), seconds / 2),
    }
    from cryptography import __version__
    from cryptography.hazmat.backends.openssl.backend import backend

    py["version"] = f"cryptography {__version__}, {backend.openssl_version_text()}"
    out = {"buffer_bytes": SLICE_BYTES, "cryptography": py, "openssl": openssl_speed(seconds)}
    ossl = out["openssl"].get("encrypt_mb_s")
    out["cryptography_vs_openssl"] = round(py["encrypt_mb_s"] / ossl, 3) if ossl else None
    return out


def openssl_speed(seconds: float) -> dict:
    """``openssl speed -bytes 524288 -evp aes-256-gcm -seconds N``: MB/s (its 'k' is 1000 bytes/s)."""
    cmd = [peers.require("openssl"), "speed", "-bytes", str(SLICE_BYTES), "-evp", "aes-256-gcm",
           "-seconds", str(max(1, round(seconds)))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"command": " ".join(cmd[1:]), "error": type(exc).__name__}
    m = re.search(r"^aes-256-gcm\s+([\d.]+)k\s*$", out.stdout, re.IGNORECASE | re.MULTILINE)
    version = subprocess.run([cmd[0], "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    res = {"command": "openssl " + " ".join(cmd[1:]), "version": version}
    if m is None:
        res["error"] = f"no AES-256-GCM line in its output ({out.returncode}): {out.stdout.strip()[-200:]}"
    else:
        res["encrypt_mb_s"] = round(float(m.group(1)) / 1000, 1)
    return res


# --- data-key wrapping -----------------------------------------------------------------------

def wraps(store: dict, samples: int) -> dict:
    from pacsguard.plugins.encryption import envelope, pixels

    out = {}
    for kind in RECIPIENT_TYPES:
        key = store[NAMES[kind]]
        data_key = envelope.new_data_key()
        w_t, u_t, wrapped = [], [], None
        for i in range(max(10, samples // 3) + 3):
            t0 = time.perf_counter()
            wrapped = envelope.wrap(data_key, key, pixels.WRAP_CONTEXT)
            t1 = time.perf_counter()
            if envelope.unwrap([wrapped], [key], pixels.WRAP_CONTEXT) != data_key:
                raise RuntimeError(f"{kind}: the unwrapped data key differs")
            if i >= 3:
                w_t.append(t1 - t0)
                u_t.append(time.perf_counter() - t1)
        out[kind] = {"method": wrapped.method, "wrapped_bytes": len(wrapped.data),
                     "wrap_ms_p50": _ms(median(w_t)), "unwrap_ms_p50": _ms(median(u_t)), "samples": len(w_t)}
    return out


# --- cipher-image statistics ------------------------------------------------------------------

def _words(ds, data: bytes):
    import numpy as np

    bits = int(ds.BitsAllocated)
    rows, cols = int(ds.Rows), int(ds.Columns)
    return np.frombuffer(data, dtype=f"<u{bits // 8}", count=rows * cols).reshape(rows, cols)


def cipher_stats(label: str, what: str, path: Path, store: dict, recipient: str, folder: Path) -> dict:
    """Two encryptions of one image (each with its own fresh data key and nonce, as every
    object gets): the statistics of the first, NPCR/UACI between the two."""
    import pydicom

    enc, _ = _stages(recipient)
    folder.mkdir(parents=True, exist_ok=True)
    ciphers = []
    for i in range(2):
        item = _item(path, store)
        enc.process(item)
        item.write(folder / f"{i}.dcm")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(folder / f"{i}.dcm")
        ciphers.append(_words(ds, ds.PixelData))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain_ds = pydicom.dcmread(path)
        plain = plain_ds.pixel_array
    bits = int(plain_ds.BitsAllocated)
    rows, cols = ciphers[0].shape
    return {"image": label, "what": what, "rows": rows, "columns": cols, "bits_allocated": bits,
            "bits_stored": int(plain_ds.get("BitsStored") or bits),
            "plain": cipherstats.image_stats(plain), "cipher": cipherstats.image_stats(ciphers[0]),
            "two_encryptions": cipherstats.compare(ciphers[0], ciphers[1], bits),
            "ideal": cipherstats.ideal(bits, rows * cols)}
