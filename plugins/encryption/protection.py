"""What ``pacsguard inspect`` and ``pacsguard decrypt`` do with a file: say what
protection it carries (no key needed), and undo what the given keys open.

A file may carry several layers: a ``.pgenc`` seal around a DICOM object whose pixels
and attributes are encrypted too. Decryption opens the seal, then the pixels, then the
attributes, and writes the result only when every layer it opened authenticated.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pydicom

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.keys import Key, hybrid_key_id, public_key_id

from . import attributes, block, pixels, sealed

CMS_METHOD = "CMS RSA key transport, AES-256-CBC"


def describe(path: Path) -> dict:
    """The protections of ``path`` (scopes, schemes, key IDs and wrapping methods)."""
    path = Path(path)
    if sealed.is_sealed(path):
        with open(path, "rb") as fh:
            header, _ = sealed.read_header(fh)
        return {"file": str(path), "kind": ".pgenc", "protections": [{
            "scope": "file", "scheme": header["scheme"], "chunk_size": header["chunk_size"],
            "recipients": [{"key_id": w.key_id, "method": w.method} for w in header["recipients"]]}]}
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        raise QuarantineError("neither a DICOM file nor a .pgenc file") from None
    out = []
    b = block.find(ds)
    if b is not None:
        entry = {"scope": "pixels", "scheme": str(block.value(b, block.SCHEME, "scheme"))}
        if block.ORIGINAL_TS in b:
            entry["original_transfer_syntax"] = str(b[block.ORIGINAL_TS].value)
        if block.CHUNK_SIZE in b:
            entry["chunk_size"] = int(b[block.CHUNK_SIZE].value)
        entry["recipients"] = [{"key_id": w.key_id, "method": w.method} for w in block.read_recipients(b)]
        out.append(entry)
    for item in ds.get("EncryptedAttributesSequence") or []:
        ids = attributes.item_key_ids(item)
        out.append({"scope": "attributes", "scheme": attributes.SCHEME if ids else "CMS (not made by pacsguard)",
                    "encrypted_content_bytes": len(item.get("EncryptedContent") or b""),
                    "recipients": [{"key_id": k, "method": CMS_METHOD} for k in ids]})
    return {"file": str(path), "kind": "DICOM", "protections": out}


def decrypt_path(src: Path, dst: Path, keys: list[Key], transfer_syntax: str = "native") -> list[str]:
    """Write ``src`` decrypted with ``keys`` to ``dst`` (never overwritten, never partly
    written); return the scopes undone. QuarantineError when nothing could be undone or a
    layer failed to authenticate. ``transfer_syntax`` is the pixel scope's (``native`` or
    ``original``: a lossless original re-encoded in its own syntax, see ``pixels.decrypt``)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise QuarantineError(f"{dst} exists: not overwritten")
    done: list[str] = []
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".pacsguard-decrypt-") as tmp:
        current = src
        if sealed.is_sealed(src):
            current = Path(tmp) / "unsealed.dcm"
            sealed.unseal_file(src, current, keys)
            done.append("file")
        try:
            ds = pydicom.dcmread(current)
        except Exception:
            raise QuarantineError("the content is not a readable DICOM file") from None
        skipped = []
        if block.find(ds) is not None:
            _try(lambda d, k: pixels.decrypt(d, k, transfer_syntax), ds, keys, "pixels", done, skipped)
        while ds.get("EncryptedAttributesSequence"):
            if not _try(attributes.decrypt, ds, keys, "attributes", done, skipped):
                break
        if not done:
            raise QuarantineError(skipped[0] if skipped else
                                  "object is not encrypted by pacsguard (no .pgenc seal, no PACSGUARD private "
                                  "block, no Encrypted Attributes Sequence)")
        out = Path(tmp) / "out.dcm"
        if done == ["file"]:
            out = current  # the sealed bytes exactly
        else:
            ds.save_as(out, enforce_file_format=True)
        with open(out, "rb") as fh:
            os.fsync(fh.fileno())
        os.link(out, dst)  # fails if dst appeared meanwhile: never overwrites
    return done


def _try(step, ds, keys, scope: str, done: list, skipped: list) -> bool:
    try:
        step(ds, keys)
    except QuarantineError as exc:
        if not exc.reason.startswith("not encrypted for key ID"):
            raise  # a layer that is ours but fails: the whole file fails
        skipped.append(f"{scope}: {exc.reason}")
        return False
    done.append(scope)
    return True


# -- keys from PEM files (until the key store is loaded by the command line) ---------------
def keys_from_files(key_files: list[Path], cert_files: list[Path] = ()) -> list[Key]:
    """Private keys from PKCS#8 PEM files: RSA (paired with the certificate among
    ``cert_files`` whose public key matches), X25519, and an ML-KEM-768 key followed by
    an X25519 key, which together are a pq-hybrid key: in two files, or as the two PEM
    blocks of one file (what ``pacsguard keys generate`` writes and the key store reads)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hpke, serialization
    from cryptography.hazmat.primitives.asymmetric import mlkem, rsa, x25519

    from pacsguard.daemon.keystore import _pem_blocks

    certs = [x509.load_pem_x509_certificate(Path(c).read_bytes()) for c in cert_files]
    loaded = []
    for f in key_files:
        data = Path(f).read_bytes()
        blocks = [b for label, b in _pem_blocks(data) if label.endswith("PRIVATE KEY")] or [data]
        try:
            loaded.extend((Path(f), serialization.load_pem_private_key(b, password=None)) for b in blocks)
        except (ValueError, TypeError):
            raise ValueError(f"{f}: not an unencrypted PKCS#8 PEM private key") from None
    out = []
    for i, (path, private) in enumerate(loaded):
        public = private.public_key()
        if isinstance(private, rsa.RSAPrivateKey):
            cert = next((c for c in certs if c.public_key() == public), None)
            out.append(Key(path.stem, "rsa", public_key_id(public), str(path), public=public, private=private,
                           certificate=cert))
        elif isinstance(private, x25519.X25519PrivateKey):
            out.append(Key(path.stem, "x25519", public_key_id(public), str(path), public=public, private=private))
        elif isinstance(private, mlkem.MLKEM768PrivateKey):
            nxt = loaded[i + 1][1] if i + 1 < len(loaded) else None
            if not isinstance(nxt, x25519.X25519PrivateKey):
                raise ValueError(f"{path}: an ML-KEM-768 key must be followed by its X25519 key (pq-hybrid)")
            parts = (public, nxt.public_key())
            out.append(Key(path.stem, "pq-hybrid", hybrid_key_id(*parts), str(path),
                           public=hpke.MLKEM768X25519PublicKey(*parts), parts=parts,
                           private=hpke.MLKEM768X25519PrivateKey(private, nxt)))
        else:
            raise ValueError(f"{path}: {type(private).__name__} is not an RSA, X25519 or ML-KEM-768 key")
    return out
