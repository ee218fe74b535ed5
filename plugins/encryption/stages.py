"""The ``encrypt`` and ``decrypt`` stages: one scope each (``pixels``, ``attributes``,
``file``), keys named in the options and loaded from the key store (``item.keys``)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacsguard.daemon.errors import QuarantineError
from pacsguard.daemon.extension import Options, Stage
from pacsguard.daemon.keys import KeyUse, loaded

from . import attributes, pixels, sealed
from .envelope import WRAP_TYPES

Scope = Literal["pixels", "attributes", "file"]
_CMS_TYPES = frozenset({"rsa"})
_NOT_ENCRYPTABLE = {0x7FE0}  # pixel data: the pixels scope


def _keyword(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    if (tag >> 16) == 0x0002:
        raise ValueError(f"{keyword!r} is file meta information, which pacsguard manages")
    if (tag >> 16) in _NOT_ENCRYPTABLE:
        raise ValueError(f"{keyword!r} is pixel data: use scope pixels")
    if (tag >> 16) == 0x0400:
        raise ValueError(f"{keyword!r} belongs to the encryption itself")
    return keyword


class EncryptOptions(Options):
    scope: Scope = Field(description="pixels: the Pixel Data (AES-256-GCM, same length); attributes: "
                                     "Encrypted Attributes Sequence (CMS); file: the whole object as .pgenc")
    recipients: list[str] = Field(min_length=1, description="key names: any one recipient's private key decrypts "
                                                            "(RSA-3072+, X25519, pq-hybrid; attributes: RSA with certificate)")
    attributes: list[str] = Field(default_factory=list,
                                  description="scope attributes: keywords to encrypt and remove; empty: the original "
                                              "values a preceding deidentify stage recorded")

    @field_validator("attributes")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        return [_keyword(k) for k in v]

    @model_validator(mode="after")
    def _scoped(self):
        if self.attributes and self.scope != "attributes":
            raise ValueError("attributes is an option of scope attributes only")
        if len(set(self.recipients)) != len(self.recipients):
            raise ValueError("a recipient is named twice")
        return self


class DecryptOptions(Options):
    scope: Scope = Field(description="pixels or attributes (what an encrypt stage of that scope made)")
    key: Optional[str] = Field(None, description="the key name whose private key decrypts")
    keys: list[str] = Field(default_factory=list, description="several key names: the first that is a recipient decrypts")
    transfer_syntax: Literal["native", "original"] = Field(
        "native", description="pixels of a compressed original: native (Explicit VR Little Endian, the decoded pixels "
                              "bit-exactly) or original (re-encoded losslessly in the original transfer syntax where "
                              "that syntax is lossless and an encoder is installed, else native)")

    @model_validator(mode="after")
    def _one_way(self):
        if self.scope == "file":
            raise ValueError("scope file: a .pgenc is not DICOM, so it cannot enter a pipeline; "
                             "key holders open it with `pacsguard decrypt`")
        if bool(self.key) == bool(self.keys):
            raise ValueError("give key or keys (one of them)")
        return self

    @property
    def names(self) -> list[str]:
        return [self.key] if self.key else list(self.keys)


class Encrypt(Stage):
    """Encrypt pixel data, attributes or the whole file for named recipients."""

    name = "encrypt"
    inverse = "decrypt"
    Options = EncryptOptions

    @classmethod
    def key_uses(cls, options: EncryptOptions) -> list[KeyUse]:
        cms = options.scope == "attributes"
        return [KeyUse(f"recipients[{i}]", n, _CMS_TYPES if cms else WRAP_TYPES, certificate=cms)
                for i, n in enumerate(options.recipients)]

    def process(self, item):
        recipients = loaded(item.keys, self.options.recipients)
        scope = self.options.scope
        if item.sealed:
            raise QuarantineError("the object is already sealed whole: no stage can change it")
        if scope == "pixels":
            item.load_pixel_data()
            ids = pixels.encrypt(item.dataset, recipients, item.pixels)
        elif scope == "attributes":
            ds = item.dataset
            originals, remove = self._originals(item, ds)
            # none of the listed attributes present: nothing to protect, the object is unchanged
            ids = attributes.encrypt(ds, recipients, originals, remove) if len(originals) else []
        else:
            sealer = sealed.Sealer(recipients)
            item.seal(sealer)
            ids = sealer.key_ids
        item.results.setdefault("encrypt", {})[scope] = {"key_ids": ids}
        return item

    def _originals(self, item, ds: Dataset) -> tuple[Dataset, list]:
        """The values to encrypt, and the attributes to remove from the clear object."""
        if self.options.attributes:
            tags = [Tag(k) for k in self.options.attributes]
            originals = Dataset()
            for t in tags:
                if t in ds:
                    originals[t] = ds[t]
            return originals, tags
        recorded = deidentify_originals(item.results.get("deidentify"))
        if recorded is None:
            raise QuarantineError("nothing to encrypt: no deidentify stage recorded original values, "
                                  "and no attributes are listed")
        return recorded, []


def deidentify_originals(recorded) -> Dataset | None:
    """The original values a deidentify stage left in ``item.results["deidentify"]``: a
    Dataset, or a mapping (or object) whose ``original`` is one."""
    if recorded is None or isinstance(recorded, Dataset):
        return recorded
    original = recorded.get("original") if isinstance(recorded, dict) else getattr(recorded, "original", None)
    return original if isinstance(original, Dataset) else None


class Decrypt(Stage):
    """Decrypt what an encrypt stage of the same scope made (the key holders' side)."""

    name = "decrypt"
    Options = DecryptOptions

    @classmethod
    def key_uses(cls, options: DecryptOptions) -> list[KeyUse]:
        cms = options.scope == "attributes"
        types = _CMS_TYPES if cms else WRAP_TYPES
        if options.key:
            return [KeyUse("key", options.key, types, private=True, certificate=cms)]
        return [KeyUse(f"keys[{i}]", n, types, private=True, certificate=cms) for i, n in enumerate(options.keys)]

    def process(self, item):
        keys = loaded(item.keys, self.options.names)
        if self.options.scope == "pixels":
            item.load_pixel_data()
            syntax = pixels.decrypt(item.dataset, keys, self.options.transfer_syntax)
            item.results.setdefault("decrypt", {})["pixels"] = {"transfer_syntax": syntax}
        else:
            attributes.decrypt(item.dataset, keys)
        return item
