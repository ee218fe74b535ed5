"""infer: the shipped ViT converted with the key predicts on scrambled images exactly what
the plain model predicts on plain images, on the whole held-out split; without the key
(plain model, or a wrong key) accuracy collapses. No training here: the shipped weights."""

from __future__ import annotations

import copy
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
from pacsguard.plugins.decoders import blocks, marking, runtime, train_vit, vit  # noqa: E402
from pacsguard.plugins.decoders.infer import PACKAGE, Infer, model_info  # noqa: E402
from pacsguard.plugins.decoders.scramble import Scramble  # noqa: E402
from tests.plugins.digits import write_digits  # noqa: E402
from tests.plugins.test_decoders_scramble import OTHER, secret_key  # noqa: E402

FACTS = TransportFacts(source="test", source_type="folder")
DECODE = get_plugin_manager(entry_points=False).hook.pacsguard_decode_pixels
KEY = secret_key("vit", bytes(range(100, 132)))
KEYS = {"vit": KEY, "other": OTHER}


@pytest.fixture(scope="module")
def held_out():
    _, _, xte, yte = train_vit.split()
    return xte, yte


@pytest.fixture(scope="module")
def plain_model():
    cfg = vit.Config(**model_info("vit-digits")["config"])
    weights = runtime.read_weights(PACKAGE, "weights/vit_digits.safetensors")
    return runtime.prepare(vit.ViT(cfg), weights, torch.device("cpu"))


def logits(model, frames, dtype=torch.float32):
    return runtime.run(model.to(dtype), vit.normalize(frames, (0, 255), dtype))


def test_shipped_weights_are_small_and_described():
    data = (Path(vit.__file__).parent / "weights" / "vit_digits.safetensors").read_bytes()
    assert len(data) < 2 * 2**20
    info = model_info("vit-digits")
    assert info["labels"] == [str(d) for d in range(10)] and info["config"]["patch"] == 4


@pytest.mark.parametrize("flip", [False, True], ids=["blocks", "blocks+negative-positive"])
def test_converted_model_on_scrambled_images_predicts_exactly_what_the_plain_one_does(plain_model, held_out, flip):
    xte, yte = held_out
    cfg = plain_model.cfg
    key = blocks.derive(KEY.secret, rows=cfg.image, columns=cfg.image, samples=1, block=cfg.patch, flip=flip)
    scrambled = blocks.scramble(xte, key)
    assert not np.array_equal(scrambled, xte)
    converted = vit.convert(plain_model, key)
    plain32, conv32 = logits(plain_model, xte), logits(converted, scrambled)
    assert torch.equal(plain32.argmax(1), conv32.argmax(1))  # the whole test split
    assert torch.allclose(plain32, conv32, atol=1e-4)
    double = copy.deepcopy(plain_model).double()  # float64: the models compared, not float32 rounding
    conv64 = logits(vit.convert(double, key), scrambled, torch.float64)
    assert float((conv64 - logits(double, xte, torch.float64)).abs().max()) < 1e-9
    accuracy = float((plain32.argmax(1).numpy() == yte).mean())
    assert accuracy > 0.9, accuracy


def test_without_the_key_accuracy_collapses(plain_model, held_out, record_property):
    xte, yte = held_out
    cfg = plain_model.cfg
    key = blocks.derive(KEY.secret, rows=cfg.image, columns=cfg.image, samples=1, block=cfg.patch, flip=True)
    wrong = blocks.derive(OTHER.secret, rows=cfg.image, columns=cfg.image, samples=1, block=cfg.patch, flip=True)
    scrambled = blocks.scramble(xte, key)

    def acc(model, frames):
        return float((logits(model, frames).argmax(1).numpy() == yte).mean())

    figures = {"plain model, plain images": acc(plain_model, xte),
               "converted model, scrambled images": acc(vit.convert(plain_model, key), scrambled),
               "plain model, scrambled images": acc(plain_model, scrambled),
               "wrong key, scrambled images": acc(vit.convert(plain_model, wrong), scrambled)}
    for name, value in figures.items():
        record_property(name, value)
        print(f"{name}: {value:.3f}")
    keyed = figures["converted model, scrambled images"]
    assert figures["plain model, scrambled images"] < 0.3 < keyed
    assert figures["wrong key, scrambled images"] < 0.3


# -- the stage on DICOM objects ----------------------------------------------------------


def items(paths, keys=KEYS):
    return [Item(i, p, FACTS, keys=keys, decode_pixels=DECODE) for i, p in enumerate(paths)]


def infer_stage(**options) -> Infer:
    return Infer(Infer.Options(**{"key": "vit", "device": "cpu", **options}))


def test_scramble_then_infer_in_a_batch_gives_the_plain_models_labels(tmp_path, plain_model, held_out):
    xte, yte = held_out
    paths = write_digits(tmp_path, xte[:24], yte[:24])
    expected = [str(int(v)) for v in logits(plain_model, xte[:24]).argmax(1)]
    scramble = Scramble(Scramble.Options(key="vit", block_size=4, flip=True))
    batch = [scramble.process(i) for i in items(paths)]
    out = infer_stage().process_batch(batch)
    assert [i.results["infer"]["label"] for i in out] == expected
    assert all(i.results["infer"]["key_id"] == KEY.key_id for i in out)
    out[0].write(tmp_path / "out.dcm")
    ds = pydicom.dcmread(tmp_path / "out.dcm")
    b = ds.private_block(marking.GROUP, marking.INFER_CREATOR)
    assert (b[marking.MODEL].value, b[marking.LABEL].value, b[marking.MODEL_KEY_ID].value) == \
           ("vit-digits-1", expected[0], KEY.key_id)
    assert len(b[marking.PROBABILITIES].value) == 10 and list(b[marking.LABELS].value) == list("0123456789")
    assert abs(sum(b[marking.PROBABILITIES].value) - 1) < 1e-6
    assert ds.ImageComments.startswith("PACSGUARD SCRAMBLED")
    assert f"PACSGUARD INFER vit-digits-1: {expected[0]} (p " in ds.ImageComments
    ds.private_block(marking.GROUP, marking.SCRAMBLE_CREATOR)  # still scrambled


def test_plain_objects_get_the_plain_model(tmp_path, plain_model, held_out):
    xte, yte = held_out
    paths = write_digits(tmp_path, xte[:8], yte[:8])
    expected = [str(int(v)) for v in logits(plain_model, xte[:8]).argmax(1)]
    out = infer_stage(key=None).process_batch(items(paths))
    assert [i.results["infer"]["label"] for i in out] == expected
    assert all(i.results["infer"]["key_id"] == "" for i in out)


def test_other_images_are_skipped_or_quarantined_with_the_reason(tmp_path):
    [ct] = items([Path(get_testdata_file("CT_small.dcm"))])
    infer_stage().process(ct)
    assert "the model takes single-frame 32 x 32 images" in ct.results["infer"]["skipped"]
    assert not ct.modified
    [ct] = items([Path(get_testdata_file("CT_small.dcm"))])
    with pytest.raises(QuarantineError, match="infer: the model takes single-frame 32 x 32"):
        infer_stage(other_images="quarantine").process(ct)


def test_a_scrambled_object_and_another_key_is_refused(tmp_path, held_out):
    xte, yte = held_out
    [path] = write_digits(tmp_path, xte[:1], yte[:1])
    [item] = items([path])
    Scramble(Scramble.Options(key="other", block_size=4)).process(item)
    with pytest.raises(QuarantineError, match=f"scrambled with key ID {OTHER.key_id}; key 'vit'"):
        infer_stage().process(item)
    with pytest.raises(QuarantineError, match="no key to convert the model with"):
        infer_stage(key=None).process(item)


def test_a_block_size_other_than_the_patch_size_is_skipped(tmp_path, held_out):
    xte, yte = held_out
    [path] = write_digits(tmp_path, xte[:1], yte[:1])
    [item] = items([path])
    Scramble(Scramble.Options(key="vit", block_size=8)).process(item)
    infer_stage().process(item)
    assert item.results["infer"] == {"skipped": "scrambled in 8-pixel blocks; the model needs 4"}


def test_models_are_built_once_per_process_and_key(tmp_path, held_out):
    stage = infer_stage()
    assert stage._model(KEY, True) is infer_stage()._model(KEY, True)
    assert stage._model(KEY, True) is not stage._model(KEY, False)
    assert stage._model() is infer_stage(key=None)._model()
    assert not stage._model().training
