"""De-identification: the ``deidentify`` stage (a built-in plugin).

Every row of DICOM PS3.15 Table E.1-1 (shipped as data: PROVENANCE.md) with its Basic
Profile action and the options of its columns, recursively into sequences; keyed and
consistent UIDs, pseudonyms and date offsets under a secret key of the key store; the
method recorded in the object (CID 7050); burned-in identity quarantined or cleaned
(Clean Pixel Data rectangles); and the record of original values in
``item.results["deidentify"]`` (a pydicom Dataset), which :func:`restore` puts back::

    keys:
      pseudo: {secret: /etc/pacsguard/keys/pseudo.key}
    ...
    pipeline:
      - deidentify: {key: pseudo, retain_longitudinal_modified_dates: true}
      - encrypt: {scope: attributes, recipients: [registry-rsa]}   # protects the record

Modules: :mod:`.table` (the data), :mod:`.choice` (the rule among alternatives),
:mod:`.profile` (table + options -> tag -> action), :mod:`.walker` (one pass over the data
set), :mod:`.values`, :mod:`.keyed`, :mod:`.method`, :mod:`.burned`, :mod:`.record`,
:mod:`.stage`.
"""

from __future__ import annotations

from pacsguard.daemon.hookspecs import hookimpl

from .record import restore
from .stage import Deidentify

__all__ = ["Deidentify", "restore"]


@hookimpl
def pacsguard_register_stages(register):
    register(Deidentify)
