"""EXPERIMENTAL: the ``roi`` stage: find the region of interest, on the cipher image.

::

    - neural-encrypt: {key: neural-key}
    - roi: {device: auto}                 # no key: it reads the cipher image as it is

A neural-encrypted object (it carries the ``PACSGUARD NEURAL 1`` block) goes to the ROI
network trained on cipher images (made with random keys: it needs none); a plain object to
the one trained on plain images. Both are the shipped ``neural-digits-1`` networks (see
:mod:`.train_neural`: the box of the "lesion" of the training phantoms). Single-frame
32 x 32 8-bit greyscale only; other objects are skipped (recorded, delivered unchanged)
or, with ``other_images: quarantine``, quarantined. The box goes into the ``PACSGUARD ROI
1`` block, a summary into ImageComments, and ``item.results["roi"]``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import structlog
from pydantic import Field

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.extension import BatchOptions, Stage
from pacsguard.daemon.item import Item

from . import marking, neural, pixeldata, runtime

log = structlog.get_logger("pacsguard.roi")


class RoiOptions(BatchOptions):
    device: str = Field("auto", pattern=runtime.DEVICE_PATTERN,
                        description="auto (the first CUDA device, else the CPU), cuda, cuda:N or cpu")
    other_images: Literal["skip", "quarantine"] = Field(
        "skip", description="objects the networks do not take (another geometry): skip (recorded, delivered "
                            "unchanged) or quarantine")


def find_boxes(frames: np.ndarray, encrypted: bool, device_spec: str = "cpu") -> np.ndarray:
    """Boxes (N, 4) (top, left, bottom, right; exclusive) of uint8 ``frames`` (N, 32, 32)."""
    from . import neural_nets

    net = neural.network("roi_cipher" if encrypted else "roi_plain", device_spec)
    x = neural.to_unit(frames, next(net.parameters()).device)
    return neural_nets.boxes(runtime.run(net, x)).cpu().numpy()


class Roi(Stage):
    """EXPERIMENTAL: region of interest found by a network, directly on neural-encrypted images."""

    name = "roi"
    Options = RoiOptions
    batching = True
    dependencies = runtime.DEPENDENCIES

    @classmethod
    def device_summary(cls, options=None) -> str:
        return runtime.describe_device((options or RoiOptions()).device)

    def __init__(self, options):
        super().__init__(options)
        runtime.select_device(options.device)

    def process(self, item):
        return self.process_batch([item])[0]

    def process_batch(self, items):
        groups: dict[bool, list] = {True: [], False: []}
        for item in items:
            problem = neural.geometry_problem(item.header)
            if problem:
                if self.options.other_images == "quarantine":
                    raise QuarantineError(f"roi: {problem}")
                item.results["roi"] = {"skipped": problem}
                log.info("roi skipped", job=item.job_id, reason=problem)
                continue
            groups[neural.encrypted_with(item.header) is not None].append(item)
        name = neural.model_info()["name"]
        for encrypted, group in groups.items():
            if not group:
                continue
            frames = np.stack([pixeldata.as_frames(a, i.header)[0, :, :, 0].astype(np.uint8)
                               for i, a in zip(group, Item.pixels_of(group))])  # one batched decode
            for item, box in zip(group, find_boxes(frames, encrypted, self.options.device)):
                self._record(item, name, [int(v) for v in box], encrypted)
        return items

    def _record(self, item, name: str, box: list[int], encrypted: bool) -> None:
        ds = item.dataset
        read = "ENCRYPTED" if encrypted else "PLAIN"
        b = marking.create(ds, marking.ROI_CREATOR)
        b.add_new(marking.ROI_MODEL, "LO", name)
        b.add_new(marking.ROI_BOX, "US", box)
        b.add_new(marking.ROI_INPUT, "CS", read)
        top, left, bottom, right = box
        summary = (f"PACSGUARD ROI {name}: rows {top}-{bottom - 1}, columns {left}-{right - 1} "
                   f"(on the {'encrypted' if encrypted else 'plain'} image)")
        comments = str(ds.get("ImageComments", "") or "")
        ds.ImageComments = f"{comments}; {summary}" if comments else summary
        item.results["roi"] = {"model": name, "box": box, "input": read.lower()}
        log.info("roi", job=item.job_id, model=name, encrypted=encrypted)
