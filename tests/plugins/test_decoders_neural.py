"""EXPERIMENTAL neural cipher: neural-encrypt -> neural-restore with the key reaches the
PSNR documented in weights/neural.json on the held-out phantoms, a wrong key collapses,
the carried AES-GCM original restores bit-exactly, refusals say why, and roi writes its
block. No training here: the shipped weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from pydicom.data import get_testdata_file  # noqa: E402

from pacsguard.daemon.errors import QuarantineError  # noqa: E402
from pacsguard.daemon.item import Item, TransportFacts  # noqa: E402
from pacsguard.daemon.plugins import get_plugin_manager  # noqa: E402
from pacsguard.plugins.decoders import chaos, marking, neural, train_neural  # noqa: E402
from pacsguard.plugins.decoders.neural import NeuralEncrypt, NeuralRestore  # noqa: E402
from pacsguard.plugins.decoders.roi import Roi  # noqa: E402
from tests.plugins.digits import write_digits  # noqa: E402
from tests.plugins.test_decoders_scramble import OTHER, secret_key  # noqa: E402

FACTS = TransportFacts(source="test", source_type="folder")
DECODE = get_plugin_manager(entry_points=False).hook.pacsguard_decode_pixels
KEY = secret_key("neural", bytes(range(7, 39)))
KEYS = {"neural": KEY, "other": OTHER}


@pytest.fixture(scope="module")
def held_out():
    return train_neural.test_split()


def documented() -> dict:
    return neural.model_info()["evaluation"]


def items(paths, keys=KEYS):
    return [Item(i, p, FACTS, keys=keys, decode_pixels=DECODE) for i, p in enumerate(paths)]


def encrypt_stage(**options) -> NeuralEncrypt:
    return NeuralEncrypt(NeuralEncrypt.Options(**{"key": "neural", "device": "cpu", **options}))


def restore_stage(**options) -> NeuralRestore:
    return NeuralRestore(NeuralRestore.Options(**{"key": "neural", "device": "cpu", **options}))


def phantoms(tmp_path, held_out, n=8):
    x, boxes = held_out
    return write_digits(tmp_path / "in", x[:n, :, :, None], np.zeros(n, int)), x[:n], boxes[:n]


def test_shipped_weights_are_small_and_marked_experimental():
    data = (Path(neural.__file__).parent / "weights" / "neural_digits.safetensors").read_bytes()
    assert len(data) < 2**20
    info = neural.model_info()
    assert info["experimental"] is True and info["image"] == 32 and info["low_bits"] == chaos.LOW_BITS


def test_mixing_is_exactly_invertible_and_depends_on_key_and_salt():
    q = np.arange(1024, dtype=np.uint32).reshape(32, 32).astype(np.uint8)
    key = chaos.derive(KEY.secret, b"s" * 16, 32, 32)
    c = chaos.mix(q, key)
    assert np.array_equal(chaos.unmix(c, key), q)
    assert not np.array_equal(c, q)
    assert not np.array_equal(c, chaos.mix(q, chaos.derive(KEY.secret, b"t" * 16, 32, 32)))
    assert not np.array_equal(c, chaos.mix(q, chaos.derive(OTHER.secret, b"s" * 16, 32, 32)))
    assert np.array_equal(c, chaos.mix(q, chaos.derive(KEY.secret, b"s" * 16, 32, 32)))  # deterministic

    def top_bits_per_block(a):  # what the design leaves in clear: the top bits, moved only inside a block
        return np.sort((a >> chaos.LOW_BITS).reshape(8, 4, 8, 4).transpose(0, 2, 1, 3).reshape(64, 16), axis=1)

    assert np.array_equal(top_bits_per_block(c), top_bits_per_block(q))
    assert "orders" not in repr(key) and str(KEY.secret) not in repr(key)


def test_restore_with_the_key_reaches_the_documented_psnr_and_a_wrong_key_collapses(held_out, record_property):
    x, _ = held_out
    salts = train_neural.salts(len(x), b"evaluation")
    cipher = neural.encrypt(x, train_neural.EVALUATION_KEY, salts)
    right = train_neural.psnr(neural.restore(cipher, train_neural.EVALUATION_KEY, salts), x)
    wrong = train_neural.psnr(neural.restore(cipher, train_neural.WRONG_KEY, salts), x)
    ssim = train_neural.ssim(neural.restore(cipher, train_neural.EVALUATION_KEY, salts), x)
    doc = documented()
    record_property("psnr right key", float(right.mean()))
    record_property("psnr wrong key", float(wrong.mean()))
    print(f"held-out PSNR right key {right.mean():.2f} dB (SSIM {ssim.mean():.3f}), wrong key {wrong.mean():.2f} dB")
    assert right.mean() >= doc["restore_right_key"]["psnr_db"]["mean"] - 0.05
    assert ssim.mean() >= doc["restore_right_key"]["ssim"]["mean"] - 0.005
    assert right.mean() > 28
    assert wrong.mean() < right.mean() - 10
    assert abs(wrong.mean() - doc["restore_wrong_key"]["psnr_db"]["mean"]) < 0.5


def test_stages_round_trip_exactly_through_dicom_and_approximately_through_the_network(tmp_path, held_out):
    paths, x, _ = phantoms(tmp_path, held_out)
    enc = encrypt_stage().process_batch(items(paths))
    for n, item in enumerate(enc):
        item.write(tmp_path / f"enc{n}.dcm")
    ds = pydicom.dcmread(tmp_path / "enc0.dcm")
    cipher = ds.pixel_array
    assert cipher.shape == (32, 32) and cipher.dtype == np.uint8 and not np.array_equal(cipher, x[0])
    assert ds.ImageComments.startswith("PACSGUARD NEURAL") and KEY.key_id in ds.DerivationDescription
    b = ds.private_block(marking.GROUP, marking.NEURAL_CREATOR)
    assert b[marking.N_KEY_ID].value == KEY.key_id and len(b[marking.N_SALT].value) == 16
    assert len(b[marking.N_EXACT].value) == 12 + 1024 + 16
    assert x[0].tobytes() not in bytes(b[marking.N_EXACT].value)

    enc_paths = [tmp_path / f"enc{n}.dcm" for n in range(len(paths))]
    exact = restore_stage().process_batch(items(enc_paths))
    for item, orig, path in zip(exact, x, paths):
        item.write(tmp_path / "exact.dcm")
        out, src = pydicom.dcmread(tmp_path / "exact.dcm"), pydicom.dcmread(path)
        assert np.array_equal(out.pixel_array, orig)  # bit-exact
        assert "ImageComments" not in out and "DerivationDescription" not in out
        assert out.PixelData == src.PixelData
        with pytest.raises(KeyError):
            out.private_block(marking.GROUP, marking.NEURAL_CREATOR)
    assert exact[0].results["neural-restore"]["mode"] == "exact"

    approx = restore_stage(mode="network").process_batch(items(enc_paths))
    restored = np.stack([pixeldata_of(i) for i in approx])
    assert train_neural.psnr(restored, x).mean() > 25
    assert "lossy approximation" in approx[0].dataset.DerivationDescription


def pixeldata_of(item) -> np.ndarray:
    return np.asarray(item.dataset.pixel_array)


def test_without_the_exact_copy_auto_uses_the_network_and_exact_is_refused(tmp_path, held_out):
    paths, x, _ = phantoms(tmp_path, held_out, 2)
    [item] = encrypt_stage(exact=False).process_batch(items(paths[:1]))
    item.write(tmp_path / "enc.dcm")
    assert marking.N_EXACT not in pydicom.dcmread(tmp_path / "enc.dcm").private_block(marking.GROUP,
                                                                                      marking.NEURAL_CREATOR)
    with pytest.raises(QuarantineError, match="carries no exact original"):
        restore_stage(mode="exact").process(items([tmp_path / "enc.dcm"])[0])
    [out] = items([tmp_path / "enc.dcm"])
    restore_stage().process(out)
    assert out.results["neural-restore"]["mode"] == "network"


def test_refusals_say_why(tmp_path, held_out):
    paths, x, _ = phantoms(tmp_path, held_out, 1)
    [ct] = items([Path(get_testdata_file("CT_small.dcm"))])
    with pytest.raises(QuarantineError, match=r"neural-encrypt: the networks take single-frame 32 x 32 8-bit unsigned "
                                              r"greyscale images \(1 sample\); this one is 1 frame\(s\) of 128 x 128"):
        encrypt_stage().process(ct)
    [item] = items(paths)
    encrypt_stage().process(item)
    with pytest.raises(QuarantineError, match="already neural-encrypted"):
        encrypt_stage().process(item)
    item.write(tmp_path / "enc.dcm")
    with pytest.raises(QuarantineError, match=f"encrypted with key ID {KEY.key_id}; key 'other'"):
        restore_stage(key="other").process(items([tmp_path / "enc.dcm"])[0])
    with pytest.raises(QuarantineError, match="key 'neural' is not loaded"):
        restore_stage().process(items([tmp_path / "enc.dcm"], keys={"other": OTHER})[0])
    with pytest.raises(QuarantineError, match="not neural-encrypted by pacsguard"):
        restore_stage().process(items(paths)[0])
    ds = pydicom.dcmread(tmp_path / "enc.dcm")  # tamper with the salt: AES-GCM refuses
    b = ds.private_block(marking.GROUP, marking.NEURAL_CREATOR)
    b[marking.N_SALT].value = bytes(16)
    ds.save_as(tmp_path / "tampered.dcm")
    with pytest.raises(QuarantineError, match="does not authenticate"):
        restore_stage().process(items([tmp_path / "tampered.dcm"])[0])


def test_roi_writes_its_block_on_encrypted_and_plain_objects(tmp_path, held_out):
    paths, x, boxes = phantoms(tmp_path, held_out, 16)
    enc = encrypt_stage().process_batch(items(paths))
    out = Roi(Roi.Options(device="cpu")).process_batch(enc)
    found = np.array([i.results["roi"]["box"] for i in out])
    assert all(i.results["roi"]["input"] == "encrypted" for i in out)
    assert train_neural.iou(found, boxes).mean() > 0.4
    out[0].write(tmp_path / "roi.dcm")
    ds = pydicom.dcmread(tmp_path / "roi.dcm")
    b = ds.private_block(marking.GROUP, marking.ROI_CREATOR)
    assert list(b[marking.ROI_BOX].value) == list(found[0]) and b[marking.ROI_INPUT].value == "ENCRYPTED"
    assert b[marking.ROI_MODEL].value == "neural-digits-1"
    top, left, bottom, right = found[0]
    assert f"PACSGUARD ROI neural-digits-1: rows {top}-{bottom - 1}, columns {left}-{right - 1} " \
           "(on the encrypted image)" in ds.ImageComments
    ds.private_block(marking.GROUP, marking.NEURAL_CREATOR)  # still encrypted
    plain = Roi(Roi.Options(device="cpu")).process_batch(items(paths))
    assert all(i.results["roi"]["input"] == "plain" for i in plain)
    assert train_neural.iou(np.array([i.results["roi"]["box"] for i in plain]), boxes).mean() > 0.5
    [ct] = items([Path(get_testdata_file("CT_small.dcm"))])
    Roi(Roi.Options(device="cpu")).process(ct)
    assert "the networks take single-frame 32 x 32" in ct.results["roi"]["skipped"] and not ct.modified
    with pytest.raises(QuarantineError, match="roi: the networks take"):
        Roi(Roi.Options(device="cpu", other_images="quarantine")).process(items([get_testdata_file("CT_small.dcm")])[0])


def test_keys_declare_a_secret_and_restore_is_the_inverse():
    [use] = NeuralEncrypt.key_uses(NeuralEncrypt.Options(key="neural"))
    assert (use.name, use.types, use.private) == ("neural", frozenset({"secret"}), False)
    [use] = NeuralRestore.key_uses(NeuralRestore.Options(key="neural"))
    assert use.private and NeuralEncrypt.inverse == "neural-restore"
    assert NeuralEncrypt.batching and NeuralRestore.batching and Roi.batching


def test_check_config_without_torch_names_what_the_neural_stages_need(tmp_path):
    secret = tmp_path / "n.key"
    secret.write_text("cd" * 32)
    secret.chmod(0o600)
    config = tmp_path / "neural.yaml"
    config.write_text(f"""
keys: {{n: {{secret: {secret}}}}}
destinations:
  out: {{type: folder, path: {tmp_path / "out"}}}
routes:
  - name: research
    pipeline: [{{neural-encrypt: {{key: n}}}}, {{roi: {{}}}}]
    to: [out]
""")
    prelude = "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None\n"
    code = "from pacsguard.daemon.cli import main; sys.exit(main(['check-config', sys.argv[1]]))"
    r = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), str(config)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "routes[0].pipeline[0].neural-encrypt: stage 'neural-encrypt' needs torch==2.13.0, safetensors>=0.4" \
        in r.stderr
    assert "routes[0].pipeline[1].roi: stage 'roi' needs torch==2.13.0" in r.stderr
    assert "pip install torch==2.13.0 safetensors>=0.4" in r.stderr
