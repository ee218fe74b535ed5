"""Keyed, consistent replacements: UIDs, pseudonyms, AE titles, per-patient date offsets.

Each is HMAC-SHA256 under the route's secret key (``keys:``, type ``secret``) of a
labelled input, so the same original gives the same replacement in every image, after a
restart and on every pacsguard instance that holds the key, while a different key gives
unlinkable values. Nothing here is reversible without the record of original values.

- UID: ``2.25.<decimal>`` (PS3.5 B.2: a UUID as an integer), the UUID being the first 128
  bits of HMAC(key, "uid" 0x00 original) with the RFC 9562 version 8 (custom) and variant
  bits set;
- pseudonym hash: HMAC(key, "patient" 0x00 identity) in upper-case hex, where the
  identity is the Patient ID (``id:...``), or without one the Patient's Name
  (``name:...``);
- day offset: 1 to ``max_days`` days back (a multiple of 7 when the weekday is kept), from
  HMAC(key, "date-shift" 0x00 identity): one offset per patient, so intervals within a
  patient survive;
- AE title: ``AE`` and 14 hex digits of HMAC(key, "ae" 0x00 original).
"""

from __future__ import annotations

import hashlib
import hmac
import re

_VERSION_MASK = ~(0xF << 76) & ((1 << 128) - 1)
_VARIANT_MASK = ~(0x3 << 62) & ((1 << 128) - 1)
HASH_FIELD = re.compile(r"\{hash(?::(\d+))?\}")


class Keyed:
    def __init__(self, secret: bytes):
        self._base = hmac.new(secret, digestmod=hashlib.sha256)

    def mac(self, label: str, value: str) -> bytes:
        h = self._base.copy()
        h.update(label.encode() + b"\0" + value.encode("utf-8", "surrogateescape"))
        return h.digest()

    def uid(self, uid: str) -> str:
        n = int.from_bytes(self.mac("uid", uid.strip(" \0"))[:16], "big")
        n = (n & _VERSION_MASK) | (8 << 76)
        n = (n & _VARIANT_MASK) | (0x2 << 62)
        return f"2.25.{n}"

    def patient_hash(self, identity: str) -> str:
        return self.mac("patient", identity).hex().upper()

    def day_offset(self, identity: str, max_days: int, keep_weekday: bool) -> int:
        n = int.from_bytes(self.mac("date-shift", identity)[:8], "big")
        if keep_weekday:
            return -7 * (1 + n % max(1, max_days // 7))
        return -(1 + n % max_days)

    def ae_title(self, value: str) -> str:
        return "AE" + self.mac("ae", value.strip()).hex().upper()[:14]


def render(template: str, digest_hex: str) -> str:
    """A pseudonym from its template: each ``{hash}`` / ``{hash:N}`` gets N hex digits."""
    return HASH_FIELD.sub(lambda m: digest_hex[: int(m.group(1) or 16)], template)


def check_template(template: str) -> str:
    """Config-time check of a pseudonym template (an empty template: zero length)."""
    if template == "":
        return template
    fields = HASH_FIELD.findall(template)
    if not fields:
        raise ValueError("the pseudonym template needs {hash} or {hash:N}, or every patient would get one name")
    if any(n and not 6 <= int(n) <= 64 for n in fields):
        raise ValueError("{hash:N}: N is 6 to 64 hex digits")
    rest = HASH_FIELD.sub("", template)
    if "{" in rest or "}" in rest:
        raise ValueError("only {hash} and {hash:N} may stand in braces in the pseudonym template")
    if "\\" in rest or any(ord(c) < 32 or ord(c) > 126 for c in rest):
        raise ValueError("the pseudonym template holds printable ASCII without backslashes")
    if len(render(template, "0" * 64)) > 64:
        raise ValueError("the pseudonym is longer than 64 characters (Patient ID and Patient's Name hold 64)")
    return template
