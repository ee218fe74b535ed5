"""Helpers for the encryption end-to-end tests: keys made by the real ``pacsguard keys
generate``, DICOM node configs with an encrypting or decrypting route, the test corpus,
and what "the same object" means after encryption and decryption.

Imported as ``import crypto_util`` (pytest puts ``tests/e2e`` on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import yaml
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from e2e_util import write_ct_series
from peers import PACSGUARD, storescu

#: bundled images with pixel data of different kinds, and the storescu flag that proposes
#: each one's own transfer syntax (empty: uncompressed, sent together)
BUNDLED = {
    "MR_small.dcm": "",                 # 16-bit signed MONOCHROME2, Explicit VR LE
    "SC_rgb.dcm": "",                   # 8-bit RGB, native
    "JPEG2000.dcm": "-xw",              # 16-bit JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm": "-xy",     # 8-bit YBR_FULL JPEG baseline
}
#: what decryption of a compressed original documents as changed: the pixels come back
#: native (Explicit VR LE), YBR decoded to RGB, interleaved
NATIVE_CHANGES = {"PixelData", "PhotometricInterpretation", "PlanarConfiguration",
                  "ExtendedOffsetTable", "ExtendedOffsetTableLengths"}
PRIVATE_CREATOR = "PACSGUARD 1"
MARK = "PACSGUARD ENCRYPTED"


@dataclass
class KeyFiles:
    name: str
    kind: str
    key_id: str
    private: Path
    public: Path           # what an encrypting host gets: the certificate for rsa
    certificate: Path | None

    def private_entry(self) -> dict:
        entry = {"private": str(self.private)}
        if self.certificate:
            entry["certificate"] = str(self.certificate)
        return entry

    def cli_args(self) -> list[str]:
        """``pacsguard decrypt`` arguments naming the key files."""
        args = ["--key-file", str(self.private)]
        return args + (["--cert", str(self.certificate)] if self.certificate else [])


def generate_key(name: str, kind: str, out: Path) -> KeyFiles:
    """``pacsguard keys generate NAME --type KIND --out OUT``, as an administrator runs it."""
    res = subprocess.run(PACSGUARD + ["keys", "generate", name, "--type", kind, "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    key_id = re.search(r"key ID ([0-9a-f]+)", res.stdout).group(1)
    crt = out / f"{name}.crt"
    return KeyFiles(name, kind, key_id, out / f"{name}.key", crt if kind == "rsa" else out / f"{name}.pub",
                    crt if kind == "rsa" else None)


def dicom_destination(aet: str, port: int) -> dict:
    return {"type": "dicom", "ae_title": aet, "host": "127.0.0.1", "port": port,
            "retry": {"initial": 0.2, "max_delay": "1s", "max_attempts": 30}}


def node_config(tmp: Path, *, aet: str, port: int, keys: dict, destinations: dict, pipeline: list) -> str:
    """A DICOM node ``aet`` with one route: every object through ``pipeline`` to every destination."""
    return yaml.safe_dump({
        "node": {"ae_title": aet, "port": port},
        "spool": {"path": str(tmp / "spool")},
        "processing": {"workers": 2, "batch_size": 8},
        "keys": keys,
        "destinations": destinations,
        "routes": [{"name": "crypt", "pipeline": pipeline, "to": list(destinations)}],
        "logging": {"level": "info", "format": "json"},
        "metrics": {"enabled": False},
        "shutdown_timeout": "10s",
    }, sort_keys=False)


def corpus(folder: Path, ct: int = 10) -> dict[Path, str]:
    """A small CT series (every other slice with an ImageComments that encryption must
    restore) and the bundled images of :data:`BUNDLED`: {path: storescu flag}."""
    series = write_ct_series(folder, ct, size=256)
    for i, path in enumerate(series[::2]):
        ds = pydicom.dcmread(path)
        ds.ImageComments = f"slice note {i}"
        ds.save_as(path, enforce_file_format=True)
    out = {p: "" for p in series}
    out.update({Path(get_testdata_file(name)): flag for name, flag in BUNDLED.items()})
    return out


def send(port: int, files: dict[Path, str], called: str) -> None:
    """storescu: the uncompressed files on one association, each compressed one on its own."""
    plain = [p for p, flag in files.items() if not flag]
    batches = [(plain, ())] + [([p], (flag,)) for p, flag in files.items() if flag]
    for batch, args in batches:
        res = storescu(port, batch, called=called, args=args)
        assert res.returncode == 0, res.stderr


def by_uid(paths) -> dict[str, pydicom.Dataset]:
    out = {}
    for p in paths:
        ds = pydicom.dcmread(p)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def native_pixels(ds: pydicom.Dataset) -> bytes:
    """The decoded pixels of ``ds`` as native little endian bytes (padded to even length),
    which is what decryption documents for a compressed original."""
    arr = ds.pixel_array
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return data + b"\0" if len(data) % 2 else data


#: Data Set Trailing Padding: storescu itself leaves it out of what it sends
_NOT_SENT = {0xFFFCFFFC}


def _public_tags(ds: pydicom.Dataset) -> set:
    return {t for t in ds.keys() if not t.is_private and t.element != 0} - _NOT_SENT


def assert_restored(original: pydicom.Dataset, got: pydicom.Dataset) -> None:
    """``got`` (decrypted) equals ``original``: every non-private attribute (group lengths
    aside) and the Pixel Data bytes; for a compressed original, the native decoded pixels
    in Explicit VR LE, and only the Image Pixel attributes decryption documents as changed."""
    uid = original.SOPInstanceUID
    assert not _has_block(got), f"{uid}: the PACSGUARD private block is still there"
    assert MARK not in str(got.get("ImageComments", "")) + str(got.get("DerivationDescription", "")), uid
    compressed = original.file_meta.TransferSyntaxUID.is_compressed
    changed = {pydicom.datadict.tag_for_keyword(k) for k in NATIVE_CHANGES} if compressed else {0x7FE00010}
    sent, kept = _public_tags(original) - changed, _public_tags(got) - changed
    missing, extra = sent - kept, kept - sent
    assert not missing and not extra, f"{uid}: missing {sorted(missing)}, added {sorted(extra)}"
    for tag in sorted(sent):
        assert original[tag].value == got[tag].value, f"{uid}: {tag} differs"
    if compressed:
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, uid
        assert sha(got.PixelData) == sha(native_pixels(original)), f"{uid}: pixels differ"
        assert np.array_equal(got.pixel_array, original.pixel_array), uid
        photometric = str(original.PhotometricInterpretation)
        assert got.PhotometricInterpretation == ("RGB" if photometric.startswith("YBR") else photometric), uid
        if int(original.get("SamplesPerPixel", 1)) > 1:
            assert got.PlanarConfiguration == 0, uid
        else:
            assert got.get("PlanarConfiguration") == original.get("PlanarConfiguration"), uid
        assert "ExtendedOffsetTable" not in got, uid
    else:
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, uid
        assert sha(got.PixelData) == sha(original.PixelData), f"{uid}: Pixel Data differs"


def _has_block(ds: pydicom.Dataset) -> bool:
    try:
        ds.private_block(0x0011, PRIVATE_CREATOR)
        return True
    except KeyError:
        return False


def assert_encrypted(original: pydicom.Dataset, enc: pydicom.Dataset, key_id: str) -> None:
    """``enc`` is ``original`` with its pixels encrypted for ``key_id``, marked as such."""
    uid = original.SOPInstanceUID
    assert _has_block(enc), f"{uid}: no PACSGUARD private block"
    block = enc.private_block(0x0011, PRIVATE_CREATOR)
    assert block[0x01].value == "PACSGUARD PIXELS 1"
    assert key_id in str(block[0x10].value), uid
    assert str(enc.ImageComments).startswith(MARK) and MARK in str(enc.DerivationDescription), uid
    plain = native_pixels(original) if original.file_meta.TransferSyntaxUID.is_compressed else original.PixelData
    assert len(enc.PixelData) == len(plain) and enc.PixelData != plain, uid
