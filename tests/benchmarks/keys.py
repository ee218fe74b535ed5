"""Throw-away key material for the protection stages (made with the openssl CLI).

Placeholders in stage options ({rsa_public}, {rsa_private}, {rsa_cert}, {x25519_public},
{x25519_private}, {secret}) are replaced by these files' paths.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .common import peers


def make_keys(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    openssl = peers.require("openssl")
    k = {
        "rsa_private": folder / "rsa-private.pem",
        "rsa_public": folder / "rsa-public.pem",
        "rsa_cert": folder / "rsa-cert.pem",
        "x25519_private": folder / "x25519-private.pem",
        "x25519_public": folder / "x25519-public.pem",
        "secret": folder / "secret.key",
    }

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=120)

    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", str(k["rsa_private"]))
    run("pkey", "-in", str(k["rsa_private"]), "-pubout", "-out", str(k["rsa_public"]))
    run("req", "-x509", "-new", "-key", str(k["rsa_private"]), "-subj", "/CN=pacsguard-bench", "-days", "30",
        "-out", str(k["rsa_cert"]))
    run("genpkey", "-algorithm", "X25519", "-out", str(k["x25519_private"]))
    run("pkey", "-in", str(k["x25519_private"]), "-pubout", "-out", str(k["x25519_public"]))
    k["secret"].write_bytes(os.urandom(32))
    for p in k.values():
        os.chmod(p, 0o600)
    return k
