"""``pacsguard decrypt`` and ``pacsguard inspect`` on files and folders of protected
objects: every layer undone with PEM key files, failures reported per file with their
reason and no output, and what protection a file carries told without a key."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pydicom
import pytest

from pacsguard.daemon.cli import main
from pacsguard.daemon.item import Item, TransportFacts, header_path
from pacsguard.plugins.encryption.stages import Encrypt
from tests.plugins.encryption_corpus import differing, image
from tests.plugins.encryption_keys import make_key, pem_files, public_only

FACTS = TransportFacts(source="test", source_type="folder")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def protect(src: Path, dst: Path, *steps: tuple[str, list[str]]) -> Path:
    keys = {k: public_only(make_key(k)) for k in ("rsa", "x25519", "pq-hybrid")}
    item = Item(1, src, FACTS, keys=keys)
    for scope, recipients in steps:
        opts = {"scope": scope, "recipients": recipients}
        if scope == "attributes":
            opts["attributes"] = ["PatientName", "PatientID"]
        item = Encrypt(Encrypt.Options.model_validate(opts)).process(item)
    dst.parent.mkdir(parents=True, exist_ok=True)
    item.write(dst)
    header_path(dst).unlink(missing_ok=True)  # the spool's, not a destination's
    return dst


def key_args(tmp_path: Path, *kinds: str) -> list[str]:
    args = []
    for kind in kinds:
        for f in pem_files(make_key(kind), tmp_path / "keys"):
            args += ["--cert" if f.name.endswith(".cert.pem") else "--key-file", str(f)]
    return args


@pytest.fixture
def protected(tmp_path) -> dict[str, Path]:
    src = image("MR_small.dcm")
    inbox = tmp_path / "inbox"
    return {
        "pixels": protect(src, inbox / "pixels.dcm", ("pixels", ["x25519", "rsa"])),
        "attributes": protect(src, inbox / "attributes.dcm", ("attributes", ["rsa"])),
        "file": protect(src, inbox / "deep" / "file.pgenc", ("file", ["pq-hybrid"])),
        "layered": protect(src, inbox / "layered.pgenc", ("attributes", ["rsa"]), ("pixels", ["pq-hybrid"]),
                           ("file", ["x25519"])),
    }


def test_a_folder_is_decrypted_layer_by_layer(protected, tmp_path, capsys):
    rc = main(["decrypt", str(tmp_path / "inbox"), "-o", str(tmp_path / "out"),
               *key_args(tmp_path, "rsa", "x25519", "pq-hybrid")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "decrypted 4, failed 0" in out
    assert "layered.pgenc -> " in out and "(file, pixels, attributes)" in out
    original = pydicom.dcmread(image("MR_small.dcm"))
    for name in ("pixels.dcm", "attributes.dcm", "deep/file.dcm", "layered.dcm"):
        dec = pydicom.dcmread(tmp_path / "out" / name)
        assert differing(dec, original) == [], name
    assert (tmp_path / "out" / "deep" / "file.dcm").read_bytes() == image("MR_small.dcm").read_bytes()


def test_one_file_beside_itself_or_to_a_named_file(protected, tmp_path, capsys):
    assert main(["decrypt", str(protected["pixels"]), *key_args(tmp_path, "x25519")]) == 0
    assert (protected["pixels"].parent / "pixels.decrypted.dcm").is_file()
    assert main(["decrypt", str(protected["file"]), "-o", str(tmp_path / "mine.dcm"),
                 *key_args(tmp_path, "pq-hybrid")]) == 0
    assert hashlib.sha256((tmp_path / "mine.dcm").read_bytes()).digest() == \
        hashlib.sha256(image("MR_small.dcm").read_bytes()).digest()
    # never overwrites
    assert main(["decrypt", str(protected["file"]), "-o", str(tmp_path / "mine.dcm"),
                 *key_args(tmp_path, "pq-hybrid")]) == 1
    assert "exists: not overwritten" in capsys.readouterr().err


def test_failures_are_reported_per_file_and_write_nothing(protected, tmp_path, capsys):
    data = protected["file"].read_bytes()
    protected["file"].write_bytes(data[:len(data) // 2])
    plain = tmp_path / "inbox" / "plain.dcm"
    shutil.copyfile(image("CT_small.dcm"), plain)
    rc = main(["decrypt", str(tmp_path / "inbox"), "-o", str(tmp_path / "out"),
               *key_args(tmp_path, "x25519", "pq-hybrid")])
    captured = capsys.readouterr()
    assert rc == 1
    err = captured.err
    assert "FAILED " + str(protected["file"]) + ": authentication failed" in err
    assert f"FAILED {plain}: object is not encrypted by pacsguard" in err
    assert f"FAILED {protected['attributes']}: attributes: not encrypted for key ID" in err
    assert "decrypted 2, failed 3" in captured.out  # pixels, and layered without its attributes (RSA)
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["layered.dcm", "pixels.dcm"]
    assert not list((tmp_path / "out").rglob(".pacsguard-decrypt-*"))


def test_key_by_name_comes_from_the_config_key_store(protected, tmp_path, capsys):
    """``--key NAME`` takes the private key from the config's ``keys:``; an unknown name fails."""
    keys = {}
    for kind in ("x25519", "pq-hybrid"):
        parts = [f for f in pem_files(make_key(kind), tmp_path / "store") if not f.name.endswith(".cert.pem")]
        path = tmp_path / "store" / f"{kind}.key"
        path.write_bytes(b"".join(f.read_bytes() for f in parts))  # a hybrid: ML-KEM block, then X25519
        path.chmod(0o600)
        keys[kind] = path
    config = tmp_path / "pacsguard.yaml"
    config.write_text("keys:\n" + "".join(f"  {k}: {{private: {p}}}\n" for k, p in keys.items()))
    out = tmp_path / "by-name"
    assert main(["decrypt", str(protected["pixels"]), "--key", "x25519", "--config", str(config),
                 "-o", str(out / "pixels.dcm")]) == 0
    assert pydicom.dcmread(out / "pixels.dcm").PixelData == pydicom.dcmread(image("MR_small.dcm")).PixelData
    assert main(["decrypt", str(protected["file"]), "--key", "pq-hybrid", "--config", str(config),
                 "-o", str(out / "file.dcm")]) == 0
    capsys.readouterr()
    assert main(["decrypt", str(protected["pixels"]), "--key", "partner", "--config", str(config)]) == 1
    assert "no key 'partner' in the key store" in capsys.readouterr().err


def test_inspect_tells_the_protection_without_a_key(protected, capsys):
    assert main(["inspect", *map(str, protected.values()), str(image("CT_small.dcm"))]) == 0
    out = capsys.readouterr().out
    x, rsa, pq = (make_key(k).key_id for k in ("x25519", "rsa", "pq-hybrid"))
    assert (f"pixels.dcm: DICOM, scope pixels (PACSGUARD PIXELS 1, original transfer syntax 1.2.840.10008.1.2.1);"
            f" recipients: {x} (HPKE-X25519-SHA256-AES256GCM), {rsa} (RSA-OAEP-SHA256)") in out
    assert f"attributes.dcm: DICOM, scope attributes (PACSGUARD ATTRIBUTES 1); recipients: {rsa} (CMS" in out
    assert f"file.pgenc: .pgenc, scope file (PACSGUARD FILE 1); recipients: {pq} (HPKE-MLKEM768X25519" in out
    assert "CT_small.dcm: DICOM, not encrypted by pacsguard" in out
    assert main(["inspect", "--json", str(protected["layered"])]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert [p["scope"] for p in report["protections"]] == ["file"]  # the inner layers are sealed


def test_a_generated_pq_hybrid_key_file_decrypts_with_key_file(protected, tmp_path, capsys):
    """``pacsguard keys generate --type pq-hybrid`` writes one file with both PEM blocks
    (the key store's form); ``--key-file`` takes that file as it is (the tests above give
    the two parts as separate files)."""
    parts = [f for f in pem_files(make_key("pq-hybrid"), tmp_path / "keys") if not f.name.endswith(".cert.pem")]
    both = tmp_path / "keys" / "partner.key"
    both.write_bytes(b"".join(f.read_bytes() for f in parts))  # ML-KEM-768 block, then X25519 block
    assert main(["decrypt", str(protected["file"]), "-o", str(tmp_path / "file.dcm"), "--key-file", str(both)]) == 0
    assert (tmp_path / "file.dcm").read_bytes() == image("MR_small.dcm").read_bytes()
    assert "(file)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_transfer_syntax_original_re_encodes_a_lossless_original(name, tmp_path, capsys):
    src = image(name)
    original = pydicom.dcmread(src)
    enc = protect(src, tmp_path / "in" / "p.dcm", ("pixels", ["x25519"]))
    assert main(["decrypt", str(enc), "-o", str(tmp_path / "native.dcm"), *key_args(tmp_path, "x25519")]) == 0
    assert main(["decrypt", str(enc), "-o", str(tmp_path / "orig.dcm"), "--transfer-syntax", "original",
                 *key_args(tmp_path, "x25519")]) == 0
    native, again = pydicom.dcmread(tmp_path / "native.dcm"), pydicom.dcmread(tmp_path / "orig.dcm")
    assert not native.file_meta.TransferSyntaxUID.is_compressed
    assert again.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert (again.pixel_array == original.pixel_array).all() and (native.pixel_array == original.pixel_array).all()
    assert again.PatientName == original.PatientName


def test_transfer_syntax_original_keeps_a_lossy_original_native(tmp_path, capsys):
    enc = protect(image("JPEG2000.dcm"), tmp_path / "in" / "p.dcm", ("pixels", ["x25519"]))
    assert main(["decrypt", str(enc), "-o", str(tmp_path / "orig.dcm"), "--transfer-syntax", "original",
                 *key_args(tmp_path, "x25519")]) == 0
    again = pydicom.dcmread(tmp_path / "orig.dcm")
    assert not again.file_meta.TransferSyntaxUID.is_compressed
    assert (again.pixel_array == pydicom.dcmread(image("JPEG2000.dcm")).pixel_array).all()
