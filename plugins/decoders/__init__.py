"""Decoder plugins: keyed block scrambling and inference on scrambled images.

- ``scramble`` / ``unscramble`` (:mod:`.scramble`, numpy only): block-wise keyed image
  scrambling for vision transformers and its exact inverse;
- ``infer`` (:mod:`.infer`, needs ``pacsguard[gpu]``): a small vision transformer, converted
  with the key, classifies scrambled images without unscrambling them;
- EXPERIMENTAL ``neural-encrypt`` / ``neural-restore`` (:mod:`.neural`) and ``roi``
  (:mod:`.roi`), need ``pacsguard[gpu]``: a learned cipher (encoder network + keyed
  chaotic mixing), its reconstruction network, and a region-of-interest network that
  works on the cipher image. Never a default; no cryptographic claim.

:mod:`.runtime` is the torch runtime they share (device, model cache, safetensors weights).
"""

from __future__ import annotations

from pacsguard.daemon.hookspecs import hookimpl

from . import marking
from .infer import Infer
from .neural import NeuralEncrypt, NeuralRestore
from .roi import Roi
from .scramble import Scramble, Unscramble

marking.register_dictionary()

__all__ = ["Infer", "NeuralEncrypt", "NeuralRestore", "Roi", "Scramble", "Unscramble"]


@hookimpl
def pacsguard_register_stages(register):
    register(Scramble)
    register(Unscramble)
    register(Infer)
    register(NeuralEncrypt)
    register(NeuralRestore)
    register(Roi)
