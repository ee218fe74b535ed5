"""The ``infer`` stage: classify images, scrambled ones without unscrambling them.

::

    - scramble: {key: vit-key, block_size: 4}
    - infer: {key: vit-key, device: auto, batch_size: 32, max_wait_ms: 10}

A scrambled object (it carries the ``PACSGUARD SCRAMBLE 1`` block) is classified by the
model converted with the key named in ``key`` (its key ID must be the one recorded); a
plain object by the plain model. Models are built once per process and per key
(:data:`.runtime.MODELS`) and run in batches of objects of the same geometry.

The shipped model (``vit-digits-1``, see :mod:`.train_vit`) takes 32 x 32 single-sample
images of 8 or 16 bits in 4-pixel blocks. Other objects are skipped (recorded in
``item.results["infer"]``, logged, delivered unchanged) or, with ``other_images:
quarantine``, quarantined. The result is written into the object (the ``PACSGUARD INFER
1`` block, and a summary appended to ImageComments), left in ``item.results["infer"]``,
and logged (job, model, label, probability: nothing about the patient).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Literal, Optional

import numpy as np
import structlog
from pydantic import Field

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.extension import BatchOptions, Stage
from pacsguard.daemon.item import Item
from pacsguard.daemon.keys import KeyUse

from . import blocks, marking, pixeldata, runtime
from .scramble import scrambled_with

log = structlog.get_logger("pacsguard.infer")

PACKAGE = "pacsguard.plugins.decoders"
MODELS = {"vit-digits": "weights/vit_digits"}


class InferOptions(BatchOptions):
    model: Literal["vit-digits"] = Field("vit-digits", description="the shipped model to run (package data)")
    key: Optional[str] = Field(None, description="secret key the scramble stage used: scrambled objects are "
                                                 "classified by the model converted with it")
    device: str = Field("auto", pattern=runtime.DEVICE_PATTERN,
                        description="auto (the first CUDA device, else the CPU), cuda, cuda:N or cpu")
    other_images: Literal["skip", "quarantine"] = Field(
        "skip", description="objects the model does not take (another geometry): skip (recorded, delivered "
                            "unchanged) or quarantine")


@functools.lru_cache(maxsize=None)
def model_info(name: str) -> dict:
    """The shipped model's config, labels and evaluation (its JSON beside the weights)."""
    return json.loads(resources.files(PACKAGE).joinpath(MODELS[name] + ".json").read_text())


class Infer(Stage):
    """Classify images with a small vision transformer; scrambled ones with the model converted by the key."""

    name = "infer"
    Options = InferOptions
    batching = True
    dependencies = runtime.DEPENDENCIES

    @classmethod
    def key_uses(cls, options: InferOptions) -> list[KeyUse]:
        return [KeyUse("key", options.key, frozenset({"secret"}))] if options.key else []

    @classmethod
    def device_summary(cls, options: InferOptions | None = None) -> str:
        return runtime.describe_device((options or InferOptions()).device)

    def __init__(self, options: InferOptions):
        super().__init__(options)
        runtime.select_device(options.device)  # a device that cannot be had fails the config here

    # -- models ------------------------------------------------------------------------
    def _model(self, key=None, flip: bool = False):
        """The plain model, or the one converted with ``key`` (a secret), built once per process."""
        from . import vit

        info = model_info(self.options.model)
        cfg = vit.Config(**info["config"])
        device = runtime.select_device(self.options.device)

        def plain():
            weights = runtime.read_weights(PACKAGE, MODELS[self.options.model] + ".safetensors")
            return runtime.prepare(vit.ViT(cfg), weights, device)

        base = runtime.MODELS.get((self.options.model, str(device), None), plain)
        if key is None:
            return base
        block_key = blocks.derive(key.secret, rows=cfg.image, columns=cfg.image, samples=cfg.channels,
                                  block=cfg.patch, flip=flip)
        return runtime.MODELS.get((self.options.model, str(device), key.key_id, flip),
                                  lambda: vit.convert(base, block_key))

    # -- objects -----------------------------------------------------------------------
    def _plan(self, item):
        """(conversion, reason): ``(key, flip)`` or ``(None, False)`` for the plain model, or
        why the model does not take this object."""
        cfg = model_info(self.options.model)["config"]
        h = item.header
        found = scrambled_with(h)
        frames, rows, columns, samples = pixeldata.geometry(h)
        if (frames, rows, columns, samples) != (1, cfg["image"], cfg["image"], cfg["channels"]) \
                or int(h.get("BitsAllocated") or 0) not in pixeldata.BITS:
            return None, (f"the model takes single-frame {cfg['image']} x {cfg['image']} images with "
                          f"{cfg['channels']} sample(s) of 8 or 16 bits; this one is {frames} frame(s) of "
                          f"{rows} x {columns} x {samples}")
        if found is None:
            return (None, False), None
        if found["block_size"] != cfg["patch"]:
            return None, f"scrambled in {found['block_size']}-pixel blocks; the model needs {cfg['patch']}"
        if not self.options.key:
            raise QuarantineError("the object is scrambled and infer has no key to convert the model with")
        try:
            key = item.keys[self.options.key]
        except KeyError:
            raise QuarantineError(f"key {self.options.key!r} is not loaded in the key store") from None
        if found["key_id"] != key.key_id:
            raise QuarantineError(f"the object was scrambled with key ID {found['key_id']}; key "
                                  f"{self.options.key!r} has key ID {key.key_id}")
        return (key, found["flip"]), None

    def process(self, item):
        return self.process_batch([item])[0]

    def process_batch(self, items):
        groups: dict = {}
        for item in items:
            plan, reason = self._plan(item)
            if plan is None:
                self._other(item, reason)
                continue
            key, flip = plan
            groups.setdefault((key.key_id if key else None, flip), (key, flip, []))[2].append(item)
        for key, flip, group in groups.values():
            self._classify(group, self._model(key, flip), key)
        return items

    def _other(self, item, reason: str) -> None:
        if self.options.other_images == "quarantine":
            raise QuarantineError(f"infer: {reason}")
        item.results["infer"] = {"skipped": reason}
        log.info("inference skipped", job=item.job_id, model=self.options.model, reason=reason)

    def _classify(self, group, model, key) -> None:
        import torch

        from . import vit

        pixels = Item.pixels_of(group)  # one batched decode where the decoder batches (gpu-decode)
        frames = np.concatenate([pixeldata.as_frames(p, i.header) for i, p in zip(group, pixels)])
        stored = {pixeldata.stored_range(i.header) for i in group}
        if len(stored) != 1:  # a batch shares one geometry, not always one Bits Stored
            for i in group:
                self._classify([i], model, key)
            return
        x = vit.normalize(frames, stored.pop()).to(model.embed.weight.device)
        probs = torch.softmax(runtime.run(model, x).float(), dim=1).cpu().numpy()
        info = model_info(self.options.model)
        for item, p in zip(group, probs):
            self._record(item, info, p, key.key_id if key else "")

    def _record(self, item, info: dict, p: np.ndarray, key_id: str) -> None:
        labels = info["labels"]
        best = int(np.argmax(p))
        label, prob = labels[best], float(p[best])
        ds = item.dataset
        b = marking.create(ds, marking.INFER_CREATOR)
        b.add_new(marking.MODEL, "LO", info["name"])
        b.add_new(marking.LABEL, "LO", label)
        b.add_new(marking.PROBABILITIES, "FD", [float(v) for v in p])
        b.add_new(marking.LABELS, "LO", list(labels))
        b.add_new(marking.MODEL_KEY_ID, "LO", key_id)
        summary = f"PACSGUARD INFER {info['name']}: {label} (p {prob:.2f})"
        comments = str(ds.get("ImageComments", "") or "")
        ds.ImageComments = f"{comments}; {summary}" if comments else summary
        item.results["infer"] = {"model": info["name"], "label": label, "probability": prob,
                                 "probabilities": dict(zip(labels, map(float, p))), "key_id": key_id}
        log.info("inference", job=item.job_id, model=info["name"], label=label, probability=round(prob, 4),
                 scrambled=bool(key_id))
