"""Throw-away keys for the benchmark, made by the real ``pacsguard keys generate`` in the
run's work folder (private keys and secrets mode 0600; removed with the work folder).

One key per type, named :data:`NAMES`; the service contenders get them in their config's
``keys:`` section (:func:`config_section`), the stage micro-benchmarks from the key store
loader itself (:func:`key_store`). Placeholders in stage options (``--pipeline``): the key
names ``{rsa}``, ``{x25519}``, ``{pq-hybrid}``, ``{secret}`` and ``{recipient}`` (the one
the encryption route encrypts to); their files ``{rsa_private}``, ``{rsa_public}``,
``{rsa_cert}``, ``{x25519_private}``, ``{x25519_public}``, ``{pq_private}``,
``{pq_public}``, ``{secret_file}``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .common import peers

#: key type -> the key's name in the benchmark's key store
NAMES = {"rsa": "bench-rsa", "x25519": "bench-x25519", "pq-hybrid": "bench-pq", "secret": "bench-secret"}
RECIPIENT_TYPES = ("rsa", "x25519", "pq-hybrid")


def make_keys(folder: Path, recipient: str = "x25519") -> dict[str, str]:
    """Generate the keys into ``folder``; the placeholder map (names and file paths)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for kind, name in NAMES.items():
        out = subprocess.run(peers.PACSGUARD + ["keys", "generate", name, "--type", kind, "--out", str(folder)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"pacsguard keys generate {name} --type {kind} failed: {out.stderr.strip()[-300:]}")
    k = {kind: name for kind, name in NAMES.items()}
    k["recipient"] = NAMES[recipient]
    for prefix, kind in (("rsa", "rsa"), ("x25519", "x25519"), ("pq", "pq-hybrid")):
        k[f"{prefix}_private"] = str(folder / f"{NAMES[kind]}.key")
        k[f"{prefix}_public"] = str(folder / f"{NAMES[kind]}.pub")
    k["rsa_cert"] = str(folder / f"{NAMES['rsa']}.crt")
    k["secret_file"] = str(folder / f"{NAMES['secret']}.key")
    return k


def config_section(keys: dict) -> dict:
    """The ``keys:`` section naming the generated files (private halves: a ``--pipeline``
    may decrypt too)."""
    if "rsa_private" not in keys:
        return {}
    return {
        NAMES["rsa"]: {"private": keys["rsa_private"], "certificate": keys["rsa_cert"]},
        NAMES["x25519"]: {"private": keys["x25519_private"]},
        NAMES["pq-hybrid"]: {"private": keys["pq_private"]},
        NAMES["secret"]: {"secret": keys["secret_file"]},
    }


def key_store(keys: dict) -> dict:
    """The keys loaded as the service loads them (name -> Key)."""
    from pacsguard.daemon.keystore import load_keys

    loaded, problems = load_keys(config_section(keys))
    if problems:
        raise RuntimeError(f"benchmark keys do not load: {problems[:2]}")
    return loaded
