"""Decoder plugins: keyed block scrambling and inference on scrambled images.

- ``scramble`` / ``unscramble`` (:mod:`.scramble`, numpy only): block-wise keyed image
  scrambling for vision transformers and its exact inverse;
- ``infer`` (:mod:`.infer`, needs ``pacsguard[gpu]``): a small vision transformer, converted
  with the key, classifies scrambled images without unscrambling them.

:mod:`.runtime` is the torch runtime they share (device, model cache, safetensors weights).
"""

from __future__ import annotations

from pacsguard.daemon.hookspecs import hookimpl

from . import marking
from .infer import Infer
from .scramble import Scramble, Unscramble

marking.register_dictionary()

__all__ = ["Infer", "Scramble", "Unscramble"]


@hookimpl
def pacsguard_register_stages(register):
    register(Scramble)
    register(Unscramble)
    register(Infer)
