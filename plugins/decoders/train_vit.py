"""Train the ``infer`` stage's vision transformer and write its weights and evaluation.

    python -m pacsguard.plugins.decoders.train_vit             # ~5-8 minutes on 2 busy CPU cores
    python -m pacsguard.plugins.decoders.train_vit --evaluate  # the shipped weights, evaluated again

Data recipe (no download: the images ship inside scikit-learn): the 1797 handwritten
digits of ``sklearn.datasets.load_digits`` (8 x 8, values 0..16), scaled to 0..255,
upsampled 4x bilinearly to 32 x 32 and rounded to 8-bit integers — the pixels an 8-bit
MONOCHROME2 DICOM image of that digit holds. Split 80/20, stratified, ``random_state=0``
(:func:`split`); the test split is never trained on. Augmentation: random shifts of up to
3 pixels. Why digits and not slices from pydicom-data: that package holds about five
distinct images per modality, so a held-out split by image would measure nothing and
crops of the same images would leak between the splits.

The model is trained on plain images only. The evaluation converts it with a key
(:func:`.vit.convert`) and compares, on the whole test split: plain model + plain images,
converted model + scrambled images (prediction by prediction), plain model + scrambled
images and a model converted with the wrong key. It writes ``weights/vit_digits.safetensors``
(tensors only) and ``weights/vit_digits.json`` (config, labels, recipe, evaluation).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from . import blocks

WEIGHTS = Path(__file__).parent / "weights"
NAME = "vit-digits-1"
LABELS = [str(d) for d in range(10)]
SEED = 0
EPOCHS = 30
EVALUATION_KEY = hashlib.sha256(b"pacsguard vit evaluation key").digest()
WRONG_KEY = hashlib.sha256(b"pacsguard vit wrong key").digest()


def images() -> tuple[np.ndarray, np.ndarray]:
    """The digits as (N, 32, 32, 1) uint8 images and their labels (see the recipe)."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.as_tensor(digits.images * (255.0 / 16.0), dtype=torch.float64)[:, None]
    big = torch.nn.functional.interpolate(small, scale_factor=4, mode="bilinear", align_corners=False)
    return np.clip(np.rint(big.numpy()), 0, 255).astype(np.uint8)[:, 0, :, :, None], digits.target.astype(np.int64)


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels): the fixed 80/20 split."""
    from sklearn.model_selection import train_test_split

    x, y = images()
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SEED)
    return xtr, ytr, xte, yte


def key_for(secret: bytes, cfg, flip: bool) -> blocks.BlockKey:
    return blocks.derive(secret, rows=cfg.image, columns=cfg.image, samples=cfg.channels, block=cfg.patch, flip=flip)


def logits(model, frames: np.ndarray, dtype=None):
    import torch

    from . import vit

    x = vit.normalize(frames, (0, 255), dtype or torch.float32)
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    with torch.inference_mode():
        return model(x)


def evaluate(model, xte: np.ndarray, yte: np.ndarray, flip: bool = True) -> dict:
    """The four accuracies on the test split (float64: the comparison is of the models, not
    of float32 rounding), and how many predictions differ between plain and converted."""
    import torch

    from . import vit

    cfg = model.cfg
    key, wrong = key_for(EVALUATION_KEY, cfg, flip), key_for(WRONG_KEY, cfg, flip)
    scrambled = blocks.scramble(xte, key)
    double = copy.deepcopy(model).double()
    plain_logits = logits(double, xte, torch.float64)
    conv_logits = logits(vit.convert(double, key), scrambled, torch.float64)

    def acc(lg) -> float:
        return round(float((lg.argmax(1).numpy() == yte).mean()), 4)

    return {
        "test_images": int(len(yte)), "flip": flip,
        "plain_model_plain_images": acc(plain_logits),
        "converted_model_scrambled_images": acc(conv_logits),
        "predictions_that_differ": int((plain_logits.argmax(1) != conv_logits.argmax(1)).sum()),
        "max_logit_difference": float((plain_logits - conv_logits).abs().max()),
        "plain_model_scrambled_images": acc(logits(double, scrambled, torch.float64)),
        "wrong_key_model_scrambled_images": acc(logits(vit.convert(double, wrong), scrambled, torch.float64)),
        "chance": 0.1,
    }


def train(epochs: int = EPOCHS):
    import torch

    from . import vit

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    xtr, ytr, xte, yte = split()
    cfg = vit.Config()
    model = vit.ViT(cfg, dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * -(-len(xtr) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    x_all = vit.normalize(xtr, (0, 255))
    y_all = torch.as_tensor(ytr)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(xtr))
        for at in range(0, len(order), 64):
            idx = order[at:at + 64]
            x = torch.nn.functional.pad(x_all[idx], (0, 0, 3, 3, 3, 3))  # shifts of up to 3 pixels
            dy, dx = rng.integers(0, 7, 2)
            x = x[:, dy:dy + cfg.image, dx:dx + cfg.image]
            loss = torch.nn.functional.cross_entropy(model(x), y_all[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}", flush=True)
    trained = vit.ViT(cfg)
    trained.load_state_dict(model.state_dict())
    return trained.eval(), (xte, yte)


def shipped():
    """The shipped model (plain), and the metadata written with it."""
    import torch

    from . import runtime, vit

    meta = json.loads((WEIGHTS / "vit_digits.json").read_text())
    model = vit.ViT(vit.Config(**meta["config"]))
    weights = runtime.read_weights(__package__, "weights/vit_digits.safetensors")
    return runtime.prepare(model, weights, torch.device("cpu")), meta


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate", action="store_true",
                        help="evaluate the shipped weights again (no training) and rewrite the evaluation")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.evaluate:
        model, meta = shipped()
        _, _, xte, yte = split()
        meta["evaluation"] = {"flip": evaluate(model, xte, yte, flip=True),
                              "no_flip": evaluate(model, xte, yte, flip=False)}
        (WEIGHTS / "vit_digits.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(meta["evaluation"], indent=2))
        return
    t0 = time.time()
    model, (xte, yte) = train()
    seconds = round(time.time() - t0, 1)
    report = {"flip": evaluate(model, xte, yte, flip=True), "no_flip": evaluate(model, xte, yte, flip=False)}
    WEIGHTS.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS / "vit_digits.safetensors"))
    meta = {"name": NAME, "config": model.cfg.to_dict(), "labels": LABELS, "input": "8-bit, [0, 1] over the stored range",
            "recipe": "sklearn load_digits, x255/16, bilinear x4 to 32x32, rounded; 80/20 stratified split, "
                      f"random_state={SEED}; shifts <= 3 px; {EPOCHS} epochs AdamW, one-cycle lr 2e-3, seed {SEED}",
            "training_seconds": seconds, "torch": torch.__version__, "evaluation": report}
    (WEIGHTS / "vit_digits.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
