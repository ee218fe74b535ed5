"""Encryption: the ``encrypt`` and ``decrypt`` stages (a built-in plugin).

Three scopes, one hybrid scheme (a fresh AES-256 data key per object, wrapped for each
recipient: RSA-OAEP-SHA256, HPKE X25519, HPKE ML-KEM-768 + X25519)::

    - encrypt: {scope: attributes, recipients: [registry-rsa]}   # Encrypted Attributes Sequence (CMS)
    - encrypt: {scope: pixels, recipients: [partner, archive-pq]} # Pixel Data -> ciphertext, same size
    - encrypt: {scope: file, recipients: [archive-pq]}            # the whole object -> .pgenc

and the inverse ``decrypt: {scope: pixels, key: partner}``. Modules: :mod:`.envelope`
(data keys), :mod:`.aead` (chunked AES-GCM), :mod:`.block` (the private block),
:mod:`.pixels`, :mod:`.attributes`, :mod:`.sealed` (.pgenc), :mod:`.stages`,
:mod:`.protection` (what ``pacsguard decrypt`` and ``pacsguard inspect`` use).
"""

from __future__ import annotations

from pacsguard.daemon.hookspecs import hookimpl

from . import block
from .stages import Decrypt, Encrypt

block.register_dictionary()

__all__ = ["Decrypt", "Encrypt"]


@hookimpl
def pacsguard_register_stages(register):
    register(Encrypt)
    register(Decrypt)
