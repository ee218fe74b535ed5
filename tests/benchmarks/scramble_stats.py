"""Cipher-image statistics of ``scramble`` next to AES-GCM's on the same pixel bytes.

``.venv/bin/python -m tests.benchmarks.scramble_stats`` prints them as JSON; the report
generator (:mod:`.evaluate_decoders`) puts them in ``docs/decoders-evaluation.md``.

On the images of :mod:`.attacks` (and one 8-bit image: the real CT slice windowed to
8 bits, W 400 / L 40, as an 8-bit export of it would hold): entropy and adjacent-pixel
correlation (horizontal, vertical, diagonal) of the cipher image, and NPCR / UACI between
two cipher images

- of the same image under two independent keys (fresh key),
- under two keys one bit apart (key sensitivity),
- of two plain images one pixel apart (+1 at the centre), same key (plaintext
  sensitivity; for AES-GCM the same nonce too, for this measurement only: a nonce is never
  reused by the encrypt stage).

AES-GCM: cryptography's ``AESGCM`` (256-bit key, 96-bit nonce) on the pixel bytes as
stored (little-endian words of Bits Allocated); the ciphertext without its tag is read
back as pixels of the same type. UACI is over the Bits Allocated range for every scheme
(scramble's output stays in the Bits Stored range). The arithmetic is
:mod:`.cipherstats`' (checked by ``test_cipherstats.py``).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from . import attacks
from . import cipherstats as cs

AES_KEY = hashlib.sha256(b"pacsguard aes-gcm statistics key").digest()
NONCE = hashlib.sha256(b"pacsguard aes-gcm statistics nonce").digest()[:12]


def flip_bit(key: bytes, bit: int = 0) -> bytes:
    b = bytearray(key)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def aes_gcm(img: attacks.Image, pixels: np.ndarray, key: bytes, nonce: bytes = NONCE) -> np.ndarray:
    """``pixels`` (rows, columns) encrypted with AES-256-GCM as stored, read back as pixels."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    signed = img.stored[0] < 0
    dtype = np.dtype(f"<{'i' if signed else 'u'}{img.bits // 8}")
    data = np.ascontiguousarray(pixels, dtype=dtype).tobytes()
    sealed = AESGCM(key).encrypt(nonce, data, None)[:-16]  # the tag is not an image
    return np.frombuffer(sealed, dtype=dtype).reshape(pixels.shape).astype(np.int64)


def windowed_8bit(img: attacks.Image, level: int = 40, width: int = 400, intercept: int = -1024) -> attacks.Image:
    """The slice windowed to 8 bits (values in HU: stored + ``intercept``)."""
    hu = img.pixels + intercept
    lo = level - width / 2
    v = np.clip(np.rint((hu - lo) / width * 255), 0, 255).astype(np.int64)
    return attacks.Image(f"{img.name} W{width}/L{level} 8-bit", f"{img.what}, windowed to 8 bits", v, (0, 255), 8)


def _schemes(flip_options=(False, True)):
    """name -> encrypt(img, pixels, key bytes)."""
    out = {}
    for flip in flip_options:
        def enc(img, pixels, key, flip=flip):
            k = attacks.key_for(img, key, flip=flip)
            return attacks.scramble(attacks.Image(img.name, img.what, pixels, img.stored, img.bits), k)
        out[f"scramble (block {attacks.BLOCK}{', flip' if flip else ''})"] = enc
    out["AES-256-GCM"] = aes_gcm
    return out


def image_figures(img: attacks.Image) -> dict:
    bits, plain = img.bits, img.pixels
    key = attacks.KEY
    other_key = hashlib.sha256(b"pacsguard statistics other key").digest()
    changed = plain.copy()
    y, x = plain.shape[0] // 2, plain.shape[1] // 2
    changed[y, x] = changed[y, x] + 1 if changed[y, x] < img.stored[1] else changed[y, x] - 1
    res = {"image": img.name, "what": img.what, "shape": list(plain.shape), "bits_allocated": bits,
           "stored_range": list(img.stored), "ideal": cs.ideal(bits, plain.size),
           "plain": cs.image_stats(plain), "schemes": {}}
    for name, enc in _schemes().items():
        if name.startswith("AES"):
            k, k2, k1 = AES_KEY, flip_bit(AES_KEY), hashlib.sha256(b"pacsguard aes other key").digest()
        else:
            k, k2, k1 = key, flip_bit(key), other_key
        c = enc(img, plain, k)
        res["schemes"][name] = {
            **cs.image_stats(c),
            "fresh_key": cs.compare(c, enc(img, plain, k1), bits),
            "key_sensitivity": cs.compare(c, enc(img, plain, k2), bits),
            "plaintext_sensitivity": cs.compare(c, enc(img, changed, k), bits),
        }
    return res


def stack_figures(plain: np.ndarray, encrypt, bits: int = 8) -> dict:
    """The statistics of a stack of images (N, rows, columns) under ``encrypt(images, key)``:
    entropy of all cipher values, adjacent-pixel correlations averaged over the images,
    NPCR / UACI over the whole stack (fresh key, one key bit, one pixel per image)."""
    key, other = attacks.KEY, hashlib.sha256(b"pacsguard statistics other key").digest()
    changed = plain.astype(np.int64).copy()
    y, x = plain.shape[1] // 2, plain.shape[2] // 2
    changed[:, y, x] = np.where(changed[:, y, x] < 2 ** bits - 1, changed[:, y, x] + 1, changed[:, y, x] - 1)
    c = encrypt(plain, key)
    corr = {d: round(float(np.nanmean([cs.correlation(i, d) for i in c])), 5) for d in cs.DIRECTIONS}
    return {"entropy_bits": round(cs.entropy(c), 4), **{f"correlation_{d}": v for d, v in corr.items()},
            "fresh_key": cs.compare(c, encrypt(plain, other), bits),
            "key_sensitivity": cs.compare(c, encrypt(plain, flip_bit(key)), bits),
            "plaintext_sensitivity": cs.compare(c, encrypt(changed.astype(plain.dtype), key), bits)}


def neural_figures() -> dict:
    """``neural-encrypt`` next to ``scramble`` (block 4, flip) and AES-256-GCM on the neural
    cipher's own held-out phantoms (32 x 32, 8-bit), when the neural cipher is installed."""
    try:
        from pacsguard.plugins.decoders import train_neural as tn
    except ImportError:
        return {"present": False, "note": "not present (pacsguard.plugins.decoders.train_neural is not installed)"}
    plain, _ = tn.test_split()
    n = len(plain)
    encoder = tn.shipped("cpu")["encoder"]
    salts = tn.salts(n, b"evaluation")
    img = attacks.Image("phantoms", "phantoms", plain[0].astype(np.int64), (0, 255), 8)

    def neural(images, key):
        return tn.encipher(encoder, images, [key] * n, salts).astype(np.int64)

    def scrambled(images, key):
        k = blocks_key(key)
        return np.stack([attacks.scramble(attacks.Image("", "", i.astype(np.int64), (0, 255), 8), k) for i in images])

    def aes(images, key):  # one nonce per image, as the encrypt stage gives every object its own
        return np.stack([aes_gcm(img, i, key, hashlib.sha256(b"nonce %d" % j).digest()[:12])
                         for j, i in enumerate(images)])

    def blocks_key(key):
        from pacsguard.plugins.decoders import blocks

        return blocks.derive(key, rows=32, columns=32, samples=1, block=4, flip=True)

    return {"present": True, "images": n, "what": "the neural cipher's held-out phantoms (train_neural.test_split)",
            "plain": {"entropy_bits": round(cs.entropy(plain), 4),
                      **{f"correlation_{d}": round(float(np.nanmean([cs.correlation(i, d) for i in plain])), 5)
                         for d in cs.DIRECTIONS}},
            "ideal": cs.ideal(8, plain.size),
            "schemes": {"neural-encrypt": stack_figures(plain, neural), "scramble (block 4, flip)":
                        stack_figures(plain, scrambled), "AES-256-GCM": stack_figures(plain, aes)}}


def run(images: list[attacks.Image] | None = None) -> list[dict]:
    images = attacks.load_images() if images is None else images
    extra = [windowed_8bit(i) for i in images if i.name == "693_UNCI.dcm"]
    return [image_figures(img) for img in [*images, *extra]]


def main() -> int:
    print(json.dumps(run(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
