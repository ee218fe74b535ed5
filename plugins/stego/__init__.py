"""Steganography: the ``embed`` and ``reveal`` stages (a built-in plugin).

The patient data (what a deidentify stage recorded, or listed attributes) is hidden in
the pixel values, encrypted for the re-identification key holders, so the link survives
systems that strip or rewrite headers::

    - embed: {recipients: [reid-x25519]}                      # reversible (default)
    - embed: {method: lsb, reversible: false, recipients: [reid]}
    - reveal: {key: reid-x25519}                             # original pixels and header back

Modules: :mod:`.pee` (prediction-error expansion) with :mod:`.sideinfo` (what its
extraction reads first), :mod:`.lsb` (keyed LSB), :mod:`.carrier` (the hidden bytes:
clear header, encrypted payload), :mod:`.image` (pixel kinds, planes, native output),
:mod:`.reading` (finding a carrier), :mod:`.embedding` (one data set in, one out: what
the stages and ``pacsguard reveal`` call), :mod:`.stages`.
"""

from __future__ import annotations

from pacsguard.daemon.hookspecs import hookimpl

from .stages import Embed, Reveal

__all__ = ["Embed", "Reveal"]


@hookimpl
def pacsguard_register_stages(register):
    register(Embed)
    register(Reveal)
