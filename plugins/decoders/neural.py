"""EXPERIMENTAL: the ``neural-encrypt`` and ``neural-restore`` stages (the learned cipher).

::

    - neural-encrypt: {key: neural-key}              # exact: false drops the AES-GCM copy
    - neural-restore: {key: neural-key}              # mode: auto | exact | network

``neural-encrypt`` runs the shipped encoder network (``neural-digits-1``, see
:mod:`.train_neural`) on the image, rounds its output to 8 bits and mixes it with the key
and a random per-object salt (:mod:`.chaos`: keyed pixel orders inside 4 x 4 blocks, the
low 6 bits XORed with a keyed logistic-map sequence). The cipher image replaces the Pixel
Data: same geometry, 8-bit unsigned MONOCHROME2, so the object stays valid DICOM. With
``exact: true`` (the default) the original Pixel Data is carried AES-256-GCM-encrypted in
the ``PACSGUARD NEURAL 1`` block under a key derived from the secret, so the key holder
restores it bit-exactly; the reconstruction network only approximates it.

``neural-restore`` with the key: ``exact`` puts the carried original back (bit-exact;
refused when the object carries none), ``network`` unmixes and runs the reconstruction
network (a lossy approximation: see the evaluation in ``weights/neural.json``), ``auto``
is ``exact`` where the copy is carried, else ``network``.

Takes single-frame 32 x 32 8-bit unsigned single-sample images only (what the networks
were trained on); refuses the rest with the reason. No cryptographic claim for the cipher
image: see the README.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
from importlib import resources
from typing import Literal

import numpy as np
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.extension import BatchOptions, Stage
from pacsguard.daemon.item import Item
from pacsguard.daemon.keys import KeyUse

from . import chaos, marking, pixeldata, runtime
from .scramble import check as check_overlays

log = structlog.get_logger("pacsguard.neural")

PACKAGE = "pacsguard.plugins.decoders"
WEIGHTS = "weights/neural_digits.safetensors"
MODEL = "neural-digits"
IMAGE = 32
MARK = "PACSGUARD NEURAL"
SALT_BYTES, NONCE_BYTES = 16, 12
_SECRET = frozenset({"secret"})
_NETWORKS = {"encoder": "Encoder", "decoder": "Decoder", "roi_cipher": "RoiNet", "roi_plain": "RoiNet"}


@functools.lru_cache(maxsize=None)
def model_info() -> dict:
    """The shipped networks' metadata and evaluation (``weights/neural.json``)."""
    return json.loads(resources.files(PACKAGE).joinpath("weights/neural.json").read_text())


def network(prefix: str, device_spec: str):
    """One shipped network (``encoder``, ``decoder``, ``roi_cipher``, ``roi_plain``), built
    once per process and device."""
    from . import neural_nets

    device = runtime.select_device(device_spec)

    def build():
        weights = runtime.read_weights(PACKAGE, WEIGHTS)
        part = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        return runtime.prepare(getattr(neural_nets, _NETWORKS[prefix])(), part, device)

    return runtime.MODELS.get((MODEL, str(device), prefix), build)


def geometry_problem(ds) -> str | None:
    """Why the networks do not take this object, or None."""
    if "PixelData" not in ds:
        return "no integer Pixel Data"
    frames, rows, columns, samples = pixeldata.geometry(ds)
    bits = (int(ds.get("BitsAllocated") or 0), int(ds.get("BitsStored") or 0),
            int(ds.get("PixelRepresentation", 0) or 0))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if (frames, rows, columns, samples) != (1, IMAGE, IMAGE, 1) or bits != (8, 8, 0) \
            or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return (f"the networks take single-frame {IMAGE} x {IMAGE} 8-bit unsigned greyscale images (1 sample); "
                f"this one is {frames} frame(s) of {rows} x {columns} x {samples}, Bits Allocated/Stored "
                f"{bits[0]}/{bits[1]}, Pixel Representation {bits[2]}, {photometric or 'no photometric'}")
    return None


def to_unit(frames: np.ndarray, device):
    """uint8 (N, 32, 32) -> (N, 1, 32, 32) float32 on [0, 1]."""
    import torch

    return torch.as_tensor(np.ascontiguousarray(frames), dtype=torch.float32, device=device)[:, None] / 255.0


def to_bytes(t) -> np.ndarray:
    """(N, 1, 32, 32) on [0, 1] -> uint8 (N, 32, 32)."""
    import torch

    return torch.round(t.float() * 255).clamp(0, 255).to(torch.uint8)[:, 0].cpu().numpy()


def encode(frames: np.ndarray, device_spec: str = "cpu") -> np.ndarray:
    """The 8-bit encoder images of uint8 ``frames`` (N, 32, 32)."""
    enc = network("encoder", device_spec)
    return to_bytes(runtime.run(enc, to_unit(frames, next(enc.parameters()).device)))


def reconstruct(q: np.ndarray, device_spec: str = "cpu") -> np.ndarray:
    """The reconstruction network on unmixed encoder images uint8 (N, 32, 32)."""
    dec = network("decoder", device_spec)
    return to_bytes(runtime.run(dec, to_unit(q, next(dec.parameters()).device)))


def encrypt(frames: np.ndarray, secret: bytes, salts: list[bytes], device_spec: str = "cpu") -> np.ndarray:
    """Cipher images of uint8 ``frames`` (N, 32, 32), one salt per image."""
    q = encode(frames, device_spec)
    return np.stack([chaos.mix(qi, chaos.derive(secret, s, IMAGE, IMAGE)) for qi, s in zip(q, salts)])


def restore(cipher: np.ndarray, secret: bytes, salts: list[bytes], device_spec: str = "cpu") -> np.ndarray:
    """The reconstruction network's approximation of the originals of ``cipher`` (N, 32, 32)."""
    q = np.stack([chaos.unmix(c, chaos.derive(secret, s, IMAGE, IMAGE)) for c, s in zip(cipher, salts)])
    return reconstruct(q, device_spec)


def _exact_key(secret: bytes) -> bytes:
    return hmac.new(secret, f"{chaos.SCHEME}\0exact original".encode(), hashlib.sha256).digest()


def seal_original(secret: bytes, salt: bytes, pixels: bytes) -> bytes:
    """nonce || AES-256-GCM(original Pixel Data values), associated data scheme || salt."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(_exact_key(secret)).encrypt(nonce, pixels, chaos.SCHEME.encode() + salt)


def open_original(secret: bytes, salt: bytes, sealed: bytes) -> bytes:
    sealed = bytes(sealed)
    try:
        return AESGCM(_exact_key(secret)).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:],
                                                  chaos.SCHEME.encode() + salt)
    except (InvalidTag, ValueError):
        raise QuarantineError("the exact original in the PACSGUARD NEURAL 1 block does not authenticate "
                              "with this key (wrong key, or the block or its salt changed)") from None


class _ModelOptions(BatchOptions):
    device: str = Field("auto", pattern=runtime.DEVICE_PATTERN,
                        description="auto (the first CUDA device, else the CPU), cuda, cuda:N or cpu")


class NeuralEncryptOptions(_ModelOptions):
    key: str = Field(description="name of a secret key in the key store; the mixing and the AES-GCM key of the "
                                 "exact copy are derived from it")
    exact: bool = Field(True, description="carry the original pixels AES-256-GCM-encrypted in the private block, "
                                          "so neural-restore can restore them bit-exactly")


class NeuralRestoreOptions(_ModelOptions):
    key: str = Field(description="name of the secret key the object was encrypted with")
    mode: Literal["auto", "exact", "network"] = Field(
        "auto", description="exact: the carried original (bit-exact; refused without one); network: the "
                            "reconstruction network's lossy approximation; auto: exact where carried")


def _key(item, name: str):
    try:
        return item.keys[name]
    except KeyError:
        raise QuarantineError(f"key {name!r} is not loaded in the key store") from None


def encrypted_with(ds) -> dict | None:
    """What ``neural-encrypt`` recorded in ``ds``, or None."""
    b = marking.find(ds, marking.NEURAL_CREATOR)
    if b is None:
        return None
    scheme = marking.value(b, marking.N_SCHEME, "scheme")
    if scheme != chaos.SCHEME:
        raise QuarantineError(f"the PACSGUARD NEURAL 1 block holds {str(scheme)[:40]!r}, not {chaos.SCHEME!r}")
    salt = bytes(marking.value(b, marking.N_SALT, "salt"))
    if len(salt) != SALT_BYTES:
        raise QuarantineError("the PACSGUARD NEURAL 1 block is damaged: its salt is not 16 bytes")
    exact = bytes(b[marking.N_EXACT].value) if marking.N_EXACT in b else None
    return {"key_id": str(marking.value(b, marking.N_KEY_ID, "key ID")), "salt": salt, "exact": exact,
            "model": str(marking.value(b, marking.N_MODEL, "model")), "block": b}


class NeuralEncrypt(Stage):
    """EXPERIMENTAL learned cipher: encoder network + keyed chaotic mixing (no cryptographic claim)."""

    name = "neural-encrypt"
    inverse = "neural-restore"
    Options = NeuralEncryptOptions
    batching = True
    dependencies = runtime.DEPENDENCIES

    @classmethod
    def key_uses(cls, options) -> list[KeyUse]:
        return [KeyUse("key", options.key, _SECRET)]

    @classmethod
    def device_summary(cls, options=None) -> str:
        return runtime.describe_device((options or cls.Options(key="-")).device)

    def __init__(self, options):
        super().__init__(options)
        runtime.select_device(options.device)

    def _check(self, item):
        h = item.header
        if marking.find(h, marking.NEURAL_CREATOR) is not None:
            raise QuarantineError("the object is already neural-encrypted (it carries a PACSGUARD NEURAL 1 block)")
        problem = geometry_problem(h)
        if problem:
            raise QuarantineError(f"neural-encrypt: {problem}")
        check_overlays(h, None)

    def process(self, item):
        return self.process_batch([item])[0]

    def process_batch(self, items):
        key = _key(items[0], self.options.key)
        for item in items:
            self._check(item)
        plain = np.stack([pixeldata.as_frames(a, i.header)[0, :, :, 0].astype(np.uint8)
                          for i, a in zip(items, Item.pixels_of(items))])  # one batched decode (gpu-decode)
        salts = [os.urandom(SALT_BYTES) for _ in items]
        cipher = encrypt(plain, key.secret, salts, self.options.device)
        name = model_info()["name"]
        for item, p, c, salt in zip(items, plain, cipher, salts):
            ds = item.dataset
            received_ts = pixeldata.transfer_syntax(ds)
            sealed = seal_original(key.secret, salt, p.tobytes()) if self.options.exact else None
            kept = marking.originals(ds)
            pixeldata.store(ds, c[None, :, :, None])
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.DerivationDescription = f"{MARK} {name} (experimental learned cipher) for key ID {key.key_id}"
            ds.ImageComments = f"{MARK}: the pixels are a learned cipher image; pacsguard neural-restore restores them"
            b = marking.create(ds, marking.NEURAL_CREATOR)
            b.add_new(marking.N_SCHEME, "LO", chaos.SCHEME)
            b.add_new(marking.N_MODEL, "LO", name)
            b.add_new(marking.N_KEY_ID, "LO", key.key_id)
            b.add_new(marking.N_SALT, "OB", salt)
            b.add_new(marking.N_ORIGINAL_TS, "UI", str(received_ts))
            b.add_new(marking.N_ORIGINALS, "OB", kept)
            b.add_new(marking.N_PHOTOMETRIC, "CS", str(item.header.get("PhotometricInterpretation", "MONOCHROME2")))
            if sealed is not None:
                b.add_new(marking.N_EXACT, "OB", sealed)
            item.results["neural-encrypt"] = {"model": name, "key_id": key.key_id, "exact": sealed is not None}
        log.info("neural-encrypted", objects=len(items), model=name)
        return items


class NeuralRestore(Stage):
    """EXPERIMENTAL: restore a neural-encrypted object (exact AES-GCM copy, or the reconstruction network)."""

    name = "neural-restore"
    Options = NeuralRestoreOptions
    batching = True
    dependencies = runtime.DEPENDENCIES

    @classmethod
    def key_uses(cls, options) -> list[KeyUse]:
        return [KeyUse("key", options.key, _SECRET, private=True)]

    @classmethod
    def device_summary(cls, options=None) -> str:
        return runtime.describe_device((options or cls.Options(key="-")).device)

    def __init__(self, options):
        super().__init__(options)
        runtime.select_device(options.device)

    def _plan(self, item, key) -> dict:
        found = encrypted_with(item.header)
        if found is None:
            raise QuarantineError("the object is not neural-encrypted by pacsguard (no PACSGUARD NEURAL 1 block)")
        if found["key_id"] != key.key_id:
            raise QuarantineError(f"the object was neural-encrypted with key ID {found['key_id']}; key "
                                  f"{self.options.key!r} has key ID {key.key_id}")
        problem = geometry_problem(item.header)
        if problem:
            raise QuarantineError(f"neural-restore: {problem}")
        mode = self.options.mode
        if mode == "auto":
            mode = "exact" if found["exact"] is not None else "network"
        if mode == "exact" and found["exact"] is None:
            raise QuarantineError("mode exact: the object carries no exact original (it was encrypted with "
                                  "exact: false); use mode network for the lossy approximation")
        return {**found, "mode": mode}

    def process(self, item):
        return self.process_batch([item])[0]

    def process_batch(self, items):
        key = _key(items[0], self.options.key)
        plans = [self._plan(i, key) for i in items]
        out: dict[int, np.ndarray] = {}
        for n, (item, plan) in enumerate(zip(items, plans)):
            if plan["mode"] == "exact":
                raw = open_original(key.secret, plan["salt"], plan["exact"])
                if len(raw) != IMAGE * IMAGE:
                    raise QuarantineError("the exact original in the PACSGUARD NEURAL 1 block has the wrong size")
                out[n] = np.frombuffer(raw, np.uint8).reshape(IMAGE, IMAGE)
        net = [n for n, p in enumerate(plans) if p["mode"] == "network"]
        if net:
            decoded = Item.pixels_of([items[n] for n in net])  # one batched decode (gpu-decode)
            cipher = np.stack([pixeldata.as_frames(a, items[n].header)[0, :, :, 0].astype(np.uint8)
                               for n, a in zip(net, decoded)])
            restored = restore(cipher, key.secret, [plans[n]["salt"] for n in net], self.options.device)
            out.update(zip(net, restored))
        for n, (item, plan) in enumerate(zip(items, plans)):
            ds = item.dataset
            b = plan["block"]
            kept = marking.value(b, marking.N_ORIGINALS, "original values")
            photometric = str(b[marking.N_PHOTOMETRIC].value) if marking.N_PHOTOMETRIC in b else "MONOCHROME2"
            pixeldata.store(ds, out[n][None, :, :, None])
            ds.PhotometricInterpretation = photometric
            marking.restore(ds, kept)
            marking.remove(ds, marking.NEURAL_CREATOR)
            if plan["mode"] == "network":
                ds.DerivationDescription = (f"{MARK} {plan['model']}: pixels restored by the reconstruction "
                                            "network, a lossy approximation of the original")
            item.results["neural-restore"] = {"mode": plan["mode"], "model": plan["model"], "key_id": key.key_id}
        return items
