"""The ``embed`` and ``reveal`` stages: patient data hidden in the pixels, encrypted for
the re-identification key holders, and taken out again (pixels restored bit-exactly)."""

from __future__ import annotations

import copy
from typing import Literal, Optional

import structlog
from pydantic import Field, field_validator, model_validator
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.extension import Measure, Options, Stage
from pacsguard.daemon.keys import KeyUse, loaded
from pacsguard.plugins.encryption import attributes as encrypted_attributes
from pacsguard.plugins.encryption.envelope import WRAP_TYPES
from pacsguard.plugins.encryption.stages import _keyword, deidentify_originals

from . import embedding, image, lsb

log = structlog.get_logger("pacsguard.stego")
_CMS_TYPES = frozenset({"rsa"})


class EmbedOptions(Options):
    method: Literal["reversible", "lsb"] = Field(
        "reversible", description="reversible: prediction-error expansion, reveal restores the original pixels "
                                  "bit-exactly; lsb: keyed least significant bits, irreversible")
    reversible: bool = Field(True, description="must be set to false for method lsb (it destroys the replaced bits)")
    recipients: list[str] = Field(min_length=1, description="key names: any one recipient's private key reveals "
                                                            "(RSA-3072+, X25519, pq-hybrid)")
    attributes: list[str] = Field(default_factory=list,
                                  description="keywords whose current values are the payload when no deidentify "
                                              "stage recorded original values")
    on_no_capacity: Literal["quarantine", "attributes"] = Field(
        "quarantine", description="when the payload does not fit: quarantine the object, or put it into an "
                                  "Encrypted Attributes Sequence instead (recipients: RSA keys with certificates)")
    max_threshold: int = Field(32, ge=1, le=1 << 15,
                               description="reversible: the largest threshold tried, which is the largest change of "
                                           "any pixel value (stored units)")
    lsb_bits: int = Field(1, ge=1, le=lsb.MAX_BITS, description="lsb: low bits replaced per pixel")

    @field_validator("attributes")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        return [_keyword(k) for k in v]

    @model_validator(mode="after")
    def _consistent(self):
        if self.method == "lsb" and self.reversible:
            raise ValueError("method lsb destroys the bits it replaces: the route must allow it explicitly "
                             "with reversible: false")
        if self.method == "reversible" and not self.reversible:
            raise ValueError("reversible: false is for method lsb only")
        if len(set(self.recipients)) != len(self.recipients):
            raise ValueError("a recipient is named twice")
        return self


class RevealOptions(Options):
    key: Optional[str] = Field(None, description="the key name whose private key reveals")
    keys: list[str] = Field(default_factory=list, description="several key names: the first that is a recipient reveals")

    @model_validator(mode="after")
    def _one_way(self):
        if bool(self.key) == bool(self.keys):
            raise ValueError("give key or keys (one of them)")
        return self

    @property
    def names(self) -> list[str]:
        return [self.key] if self.key else list(self.keys)


_CHANGE = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
#: the distortion record's figures, in the metrics (``pacsguard_embed_<name>``)
MEASURES = {
    "psnr_db": Measure("PSNR of the marked pixels against the image's own dynamic range (dB)",
                       (30, 35, 40, 45, 50, 55, 60, 65, 70, 80, 90)),
    "bits_per_pixel": Measure("carrier bits per pixel of the planes that hold it",
                              (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2)),
    "max_abs_change": Measure("largest change of any pixel value (stored units)", _CHANGE),
    "threshold": Measure("reversible: the prediction-error threshold chosen", _CHANGE),
    "carrier_bytes": Measure("bytes hidden in the pixels (header, encrypted payload)",
                             (256, 512, 1024, 2048, 4096, 8192, 16384, 65536)),
}


class Embed(Stage):
    """Hide the patient data in the pixels, encrypted for re-identification key holders."""

    name = "embed"
    inverse = "reveal"
    Options = EmbedOptions
    dependencies = {"numpy": "numpy"}
    measures = MEASURES

    def measured(self, item) -> dict[str, float]:
        """The distortion record's numbers (none when nothing was embedded; the PSNR only
        when a pixel changed, the threshold only for method reversible)."""
        record = item.results.get("embed") or {}
        if not record.get("embedded"):
            return {}
        return {k: record[k] for k in MEASURES if record.get(k) is not None}

    @classmethod
    def key_uses(cls, options: EmbedOptions) -> list[KeyUse]:
        cms = options.on_no_capacity == "attributes"
        return [KeyUse(f"recipients[{i}]", n, _CMS_TYPES if cms else WRAP_TYPES, certificate=cms)
                for i, n in enumerate(options.recipients)]

    @classmethod
    def check_pipeline(cls, options, following: list) -> list[str]:
        lossy = [name for name, stage_cls, _ in following if getattr(stage_cls, "lossy", False)]
        return [f"stage {name!r} compresses pixel data lossily after embed, which destroys the embedded payload"
                for name in lossy]

    def process(self, item):
        recipients = loaded(item.keys, self.options.recipients)
        if item.sealed:
            raise QuarantineError("the object is already sealed whole: no stage can change it")
        image.check_supported(item.header)
        payload = self._payload(item)
        if payload is None:
            item.results["embed"] = {"embedded": False, "reason": "none of the listed attributes is present"}
            log.info("embed: nothing to embed", job_id=item.job_id)
            return item
        opts = self.options
        try:
            record = embedding.embed(item.dataset, item.pixels(), payload, recipients, method=opts.method,
                                     max_threshold=opts.max_threshold, lsb_bits=opts.lsb_bits)
        except embedding.NoRoom as exc:
            if opts.on_no_capacity == "attributes":
                return self._fallback(item, recipients, payload, exc.reason)
            raise
        item.results["embed"] = record
        log.info("embedded", job_id=item.job_id, method=opts.method, threshold=record["threshold"],
                 carrier_bytes=record["carrier_bytes"], max_abs_change=record["max_abs_change"],
                 psnr_db=record["psnr_db"])
        return item

    def _payload(self, item) -> Dataset | None:
        recorded = deidentify_originals(item.results.get("deidentify"))
        if recorded is not None:
            return recorded
        if not self.options.attributes:
            raise QuarantineError("nothing to embed: no deidentify stage recorded original values, "
                                  "and no attributes are listed")
        header, out = item.header, Dataset()
        for keyword in self.options.attributes:
            tag = Tag(keyword)
            if tag in header:
                out[tag] = copy.deepcopy(header[tag])
        return out if len(out) else None

    def _fallback(self, item, recipients, payload: Dataset, reason: str):
        ids = encrypted_attributes.encrypt(item.dataset, recipients, payload, [])
        item.results["embed"] = {"embedded": False, "fallback": "attributes", "reason": reason, "key_ids": ids}
        log.info("embed: no capacity, the payload went into the Encrypted Attributes Sequence", job_id=item.job_id)
        return item


class Reveal(Stage):
    """Take the embedded patient data out: the original pixels and header come back."""

    name = "reveal"
    Options = RevealOptions
    dependencies = {"numpy": "numpy"}

    @classmethod
    def key_uses(cls, options: RevealOptions) -> list[KeyUse]:
        if options.key:
            return [KeyUse("key", options.key, WRAP_TYPES, private=True)]
        return [KeyUse(f"keys[{i}]", n, WRAP_TYPES, private=True) for i, n in enumerate(options.keys)]

    def process(self, item):
        keys = loaded(item.keys, self.options.names)
        item.results["reveal"] = embedding.reveal(item.dataset, item.pixels(), keys)
        return item
