"""Train the experimental neural cipher (``neural-encrypt`` / ``neural-restore`` / ``roi``)
and write its weights and evaluation.

    python -m pacsguard.plugins.decoders.train_neural             # a few minutes on 2 CPU cores
    python -m pacsguard.plugins.decoders.train_neural --evaluate  # the shipped weights, evaluated again

From code: :func:`evaluate` ``(device="cpu") -> dict`` evaluates the shipped weights on the
held-out split (what ``weights/neural.json`` holds under ``"evaluation"``).

Data recipe (no download: the digits ship inside scikit-learn). A "lesion in a body"
phantom per digit of ``sklearn.datasets.load_digits``: a 32 x 32 8-bit image holding a
soft ellipse ("body", grey level 40..70, semi-axes 10..15 px, centre within 3 px of the
middle, Gaussian noise sigma 3) and, on it, the digit (x255/16, resized bilinearly to
12..24 px square, pasted at a random place inside the frame; the "lesion", kept where it
is brighter than the body). The region of interest is the bounding box of the digit's
pixels above 128. Every random choice comes from ``numpy.random.default_rng([SEED,
variant, digit index])`` (:func:`render`). Digits are split 80/20, stratified,
``random_state=0`` (the split of ``train_vit``): the held-out digits are never trained
on. Training uses :data:`VARIANTS` renderings of every training digit; the held-out set
is variant 0 of the test digits.

Training (seed 0, Adam):

1. encoder + reconstruction network together: loss = MSE(restored, plain) +
   ``DECORRELATE`` x corr(encoder image, plain)^2, through the 8-bit rounding of the
   encoder image (straight-through). The keyed mixing is exactly invertible with the key,
   so the reconstruction network is trained on the unmixed encoder image;
2. the ROI networks: one on cipher images (the encoder frozen, a fresh random key and
   salt per image every epoch, so it does not depend on a key), one on plain images, both
   L1 on the box;
3. the attacker of the evaluation (the reconstruction network's shape): trained on
   (cipher, plain) pairs of the training split made with the evaluation key (a
   known-plaintext attacker with many pairs under the key it attacks).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from . import chaos

WEIGHTS = Path(__file__).parent / "weights"
NAME = "neural-digits-1"
SEED = 0
VARIANTS = 4
IMAGE = 32
EPOCHS_CODEC, EPOCHS_ROI, EPOCHS_ATTACK = 30, 20, 20
DECORRELATE = 0.1
EVALUATION_KEY = hashlib.sha256(b"pacsguard neural evaluation key").digest()
WRONG_KEY = hashlib.sha256(b"pacsguard neural wrong key").digest()
#: the networks in the weights file (prefix -> class in :mod:`.neural_nets`)
NETWORKS = {"encoder": "Encoder", "decoder": "Decoder", "roi_cipher": "RoiNet", "roi_plain": "RoiNet",
            "attacker": "Decoder"}


# -- data --------------------------------------------------------------------------------


def render(digits: np.ndarray, index: np.ndarray, variant: int) -> tuple[np.ndarray, np.ndarray]:
    """Phantoms (N, 32, 32) uint8 and their boxes (N, 4) (top, left, bottom, right; see the recipe)."""
    import torch

    out = np.empty((len(index), IMAGE, IMAGE), np.uint8)
    box = np.empty((len(index), 4), np.int64)
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE].astype(np.float64)
    for n, i in enumerate(index):
        rng = np.random.default_rng([SEED, variant, int(i)])
        cy, cx = IMAGE / 2 + rng.uniform(-3, 3, 2)
        ay, ax = rng.uniform(10, 15, 2)
        body = rng.uniform(40, 70) / (1 + np.exp(((((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2) - 1) * 8))
        body = body + rng.normal(0, 3, body.shape)
        size = int(rng.integers(12, 25))
        top, left = (int(v) for v in rng.integers(0, IMAGE - size + 1, 2))
        small = torch.as_tensor(digits[i] * (255.0 / 16.0), dtype=torch.float64)[None, None]
        lesion = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear",
                                                 align_corners=False)[0, 0].numpy()
        layer = np.zeros((IMAGE, IMAGE))
        layer[top:top + size, left:left + size] = lesion
        out[n] = np.clip(np.rint(np.maximum(body, layer)), 0, 255).astype(np.uint8)
        rows, cols = np.nonzero(layer > 128)
        box[n] = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    return out, box


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    itr, ite = train_test_split(idx, test_size=0.2, stratify=digits.target, random_state=SEED)
    return digits.images, itr, ite


def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The held-out (images, boxes): variant 0 of the test digits."""
    images, _, ite = _digits()
    return render(images, ite, 0)


def split() -> dict:
    """The fixed data: ``train`` (VARIANTS renderings of the training digits) and ``test``
    (:func:`test_split`), each (images, boxes)."""
    images, itr, ite = _digits()
    parts = [render(images, itr, v) for v in range(VARIANTS)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return {"train": train, "test": render(images, ite, 0)}


def salts(n: int, purpose: bytes) -> list[bytes]:
    """Fixed per-image salts for the evaluation (the stage draws random ones)."""
    return [hashlib.sha256(purpose + i.to_bytes(4, "big")).digest()[:16] for i in range(n)]


# -- measures ----------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, 8-bit peak."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image SSIM (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, 8-bit range, mean over the valid window positions)."""
    import torch

    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    w = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    x = torch.as_tensor(a, dtype=torch.float64)[:, None]
    y = torch.as_tensor(b, dtype=torch.float64)[:, None]

    def f(t):
        return torch.nn.functional.conv2d(t, w)

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return m.mean((1, 2, 3)).numpy()


def iou(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per box, (top, left, bottom, right) exclusive."""
    h = np.clip(np.minimum(p[:, 2], t[:, 2]) - np.maximum(p[:, 0], t[:, 0]), 0, None)
    w = np.clip(np.minimum(p[:, 3], t[:, 3]) - np.maximum(p[:, 1], t[:, 1]), 0, None)
    inter = h * w
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    return inter / (area(p) + area(t) - inter)


def entropy(a: np.ndarray) -> float:
    p = np.bincount(a.ravel(), minlength=256) / a.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def correlation(a: np.ndarray) -> float:
    """Horizontally adjacent pixels, pooled over the images."""
    x, y = a[:, :, :-1].ravel().astype(np.float64), a[:, :, 1:].ravel().astype(np.float64)
    return float(np.corrcoef(x, y)[0, 1])


# -- training ----------------------------------------------------------------------------


def _t(a: np.ndarray, device="cpu"):
    import torch

    return torch.as_tensor(a, dtype=torch.float32, device=device)[:, None] / 255.0


def _quantize(e):
    """The 8-bit rounding of the encoder image, straight-through for the gradient."""
    import torch

    return e + (torch.round(e * 255) / 255 - e).detach()


def _corr2(a, b):
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    c = (a * b).sum(1) / ((a.square().sum(1) * b.square().sum(1)).sqrt() + 1e-8)
    return (c ** 2).mean()


def encipher(encoder, images: np.ndarray, secrets: list[bytes], salt_list: list[bytes]) -> np.ndarray:
    """Cipher images (the stage's path): 8-bit encoder image, mixed per image."""
    import torch

    with torch.inference_mode():
        q = torch.round(encoder(_t(images)) * 255).clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    return np.stack([chaos.mix(qi, chaos.derive(s, salt, IMAGE, IMAGE)) for qi, s, salt in zip(q, secrets, salt_list)])


def decipher(decoder, cipher: np.ndarray, secrets: list[bytes], salt_list: list[bytes]) -> np.ndarray:
    """Restored 8-bit images: unmix with the key, then the reconstruction network."""
    q = np.stack([chaos.unmix(c, chaos.derive(s, salt, IMAGE, IMAGE)) for c, s, salt in zip(cipher, secrets, salt_list)])
    return apply(decoder, q)


def apply(net, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.round(net(_t(images)) * 255).clamp(0, 255).to(torch.uint8)[:, 0].numpy()


def _fit(net, inputs: np.ndarray, targets, loss_fn, epochs: int, rng, lr=2e-3, fresh_inputs=None):
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * -(-len(inputs) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t_targets = torch.as_tensor(targets)
    for epoch in range(epochs):
        x_all = _t(fresh_inputs(epoch) if fresh_inputs else inputs)
        order = rng.permutation(len(inputs))
        net.train()
        for at in range(0, len(order), 64):
            idx = order[at:at + 64]
            loss = loss_fn(net(x_all[idx]), t_targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"  epoch {epoch + 1}/{epochs} loss {loss.item():.5f}", flush=True)
    return net.eval()


def train() -> dict:
    """All the networks (name -> module), trained as the module docstring says."""
    import torch

    from . import neural_nets as nets

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    data = split()
    xtr, btr = data["train"]
    n = len(xtr)

    print("encoder + reconstruction network", flush=True)
    encoder, decoder = nets.Encoder(), nets.Decoder()
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    steps = EPOCHS_CODEC * -(-n // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    x_all = _t(xtr)
    for epoch in range(EPOCHS_CODEC):
        encoder.train(), decoder.train()
        order = rng.permutation(n)
        for at in range(0, n, 64):
            x = x_all[order[at:at + 64]]
            e = encoder(x)
            loss = torch.nn.functional.mse_loss(decoder(_quantize(e)), x) + DECORRELATE * _corr2(e, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"  epoch {epoch + 1}/{EPOCHS_CODEC} loss {loss.item():.5f}", flush=True)
    encoder.eval(), decoder.eval()

    def box_loss(pred, target):
        return torch.nn.functional.l1_loss(pred, target.float() / IMAGE)

    def fresh_ciphers(epoch):
        secrets = [rng.bytes(32)] * n  # a fresh key per epoch: the ROI network needs none
        return encipher(encoder, xtr, secrets, [rng.bytes(16) for _ in range(n)])

    print("ROI network on cipher images", flush=True)
    roi_cipher = _fit(nets.RoiNet(), xtr, btr, box_loss, EPOCHS_ROI, rng, fresh_inputs=fresh_ciphers)
    print("ROI network on plain images", flush=True)
    roi_plain = _fit(nets.RoiNet(), xtr, btr, box_loss, EPOCHS_ROI, rng)

    print("attacker: known-plaintext pairs under the evaluation key", flush=True)
    pairs = encipher(encoder, xtr, [EVALUATION_KEY] * n, salts(n, b"attacker training"))
    attacker = _fit(nets.Decoder(), pairs, xtr.astype(np.float32) / 255.0,
                    lambda p, t: torch.nn.functional.mse_loss(p[:, 0], t), EPOCHS_ATTACK, rng)
    return {"encoder": encoder, "decoder": decoder, "roi_cipher": roi_cipher, "roi_plain": roi_plain,
            "attacker": attacker}


# -- the shipped weights and their evaluation ----------------------------------------------


def shipped(device="cpu") -> dict:
    """The shipped networks (prefix -> module in eval mode on ``device``)."""
    import torch

    from . import neural_nets as nets
    from . import runtime

    weights = runtime.read_weights(__package__, "weights/neural_digits.safetensors")
    out = {}
    for prefix, cls in NETWORKS.items():
        part = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        out[prefix] = runtime.prepare(getattr(nets, cls)(), part, torch.device(device))
    return out


def _figures(values: np.ndarray) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4)}


def evaluate_networks(networks: dict, data: dict | None = None) -> dict:
    """The evaluation of ``networks`` on the held-out split (see :func:`evaluate`)."""
    import torch

    from . import neural_nets as nets

    networks = {k: v.to("cpu").eval() for k, v in networks.items()}
    xte, bte = data["test"] if data else test_split()
    n = len(xte)
    key_salts = salts(n, b"evaluation")
    right, wrong = [EVALUATION_KEY] * n, [WRONG_KEY] * n
    cipher = encipher(networks["encoder"], xte, right, key_salts)
    with torch.inference_mode():
        q = torch.round(networks["encoder"](_t(xte)) * 255).clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    restored = decipher(networks["decoder"], cipher, right, key_salts)
    wrong_restored = decipher(networks["decoder"], cipher, wrong, key_salts)
    wrong_salt = decipher(networks["decoder"], cipher, right, salts(n, b"another salt"))
    no_key = apply(networks["decoder"], cipher)
    attacked = apply(networks["attacker"], cipher)

    def quality(a):
        return {"psnr_db": _figures(psnr(a, xte)), "ssim": _figures(ssim(a, xte))}

    def roi(net, images):
        with torch.inference_mode():
            pred = nets.boxes(net(_t(images))).numpy()
        v = iou(pred, bte)
        return {"iou_mean": round(float(v.mean()), 4), "iou_at_least_0.5": round(float((v >= 0.5).mean()), 4)}

    return {
        "test_images": n, "geometry": "32 x 32, 8-bit unsigned, 1 sample",
        "restore_right_key": quality(restored),
        "restore_wrong_key": quality(wrong_restored),
        "restore_right_key_wrong_salt": quality(wrong_salt),
        "no_key_decoder_on_cipher": quality(no_key),
        "attacker_known_plaintext": quality(attacked),
        "cipher_image_vs_plain": quality(cipher),
        "encoder_image_vs_plain": quality(q),
        "roi_on_cipher_images": roi(networks["roi_cipher"], cipher),
        "roi_on_plain_images": roi(networks["roi_plain"], xte),
        "roi_plain_network_on_cipher_images": roi(networks["roi_plain"], cipher),
        "box_always_whole_frame_iou": round(float(iou(np.tile([0, 0, IMAGE, IMAGE], (n, 1)), bte).mean()), 4),
        "statistics": {"entropy_bits_plain": round(entropy(xte), 4), "entropy_bits_cipher": round(entropy(cipher), 4),
                       "adjacent_correlation_plain": round(correlation(xte), 4),
                       "adjacent_correlation_cipher": round(correlation(cipher), 4)},
    }


def evaluate(device: str = "cpu") -> dict:
    """Evaluate the shipped weights on the held-out split (360 phantoms of held-out digits),
    with the stage's 8-bit rounding and :mod:`.chaos` mixing (the tests check the stage's
    own :func:`.neural.encrypt` / :func:`.neural.restore` against these figures):

    - ``restore_right_key`` / ``restore_wrong_key`` / ``restore_right_key_wrong_salt``:
      PSNR (dB) and SSIM of ``neural-restore``'s network output against the original;
    - ``no_key_decoder_on_cipher``: the shipped reconstruction network on the cipher image
      without unmixing; ``attacker_known_plaintext``: a network trained on cipher/plain
      pairs of the training split under the evaluation key, on the held-out ciphers;
    - ``cipher_image_vs_plain`` / ``encoder_image_vs_plain``: how much the stored cipher
      image and the encoder image resemble the original;
    - ROI IoU (mean, share >= 0.5) on cipher images vs on plain images, the plain ROI
      network on cipher images, and the whole-frame box as a baseline;
    - cipher-image statistics (entropy, adjacent-pixel correlation).

    ``device`` is where the networks are loaded; the figures are computed on the CPU
    (deterministic). Needs torch, safetensors and scikit-learn."""
    return evaluate_networks(shipped(device))


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate", action="store_true",
                        help="evaluate the shipped weights again (no training) and rewrite the evaluation")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    path = WEIGHTS / "neural.json"
    if args.evaluate:
        meta = json.loads(path.read_text())
        meta["evaluation"] = evaluate()
        path.write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(meta["evaluation"], indent=2))
        return
    t0 = time.time()
    networks = train()
    seconds = round(time.time() - t0, 1)
    tensors = {f"{prefix}.{k}": v.contiguous() for prefix, net in networks.items()
               for k, v in net.state_dict().items()}
    WEIGHTS.mkdir(exist_ok=True)
    save_file(tensors, str(WEIGHTS / "neural_digits.safetensors"))
    report = evaluate_networks(networks)
    meta = {"name": NAME, "experimental": True, "image": IMAGE, "block": chaos.BLOCK, "low_bits": chaos.LOW_BITS,
            "networks": NETWORKS, "input": "8-bit unsigned MONOCHROME2, [0, 1] = value / 255",
            "recipe": "sklearn load_digits as lesions (12..24 px, bilinear) on a soft-ellipse body (grey 40..70, "
                      "noise sigma 3), 32x32 8-bit; ROI = bbox of lesion pixels > 128; 80/20 stratified split "
                      f"random_state={SEED}, {VARIANTS} renderings per training digit; codec {EPOCHS_CODEC} epochs "
                      f"(MSE + {DECORRELATE} corr^2), ROI {EPOCHS_ROI} epochs (fresh random keys), attacker "
                      f"{EPOCHS_ATTACK} epochs; Adam one-cycle lr 2e-3, seed {SEED}",
            "parameters": int(sum(v.numel() for v in tensors.values())),
            "training_seconds": seconds, "torch": torch.__version__, "numpy": np.__version__, "evaluation": report}
    path.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
