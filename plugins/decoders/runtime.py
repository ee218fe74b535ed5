"""The torch runtime shared by the decoder plugins that run models (``infer``).

It follows pydicom's pixel-backend contract: :data:`DEPENDENCIES` says what to install,
:func:`is_available` / :func:`missing` say whether it is, and torch is imported only inside
the functions here, so the daemon (and the numpy-only ``scramble``) run without it.

- The device is chosen once per process and spec (``auto``: the first CUDA device when
  torch sees one, else the CPU; ``cuda`` / ``cuda:N`` / ``cpu`` explicitly).
- Models are built once per worker process (:data:`MODELS`, keyed by what they depend
  on), put in eval mode, and run under ``torch.inference_mode()``.
- Weights ship as package data in safetensors files read through ``importlib.resources``:
  never downloaded, never unpickled (a safetensors file holds tensors and a JSON header,
  nothing that executes).
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import os
import threading
from typing import Any, Callable, Hashable

#: import name -> pip requirement
DEPENDENCIES = {"torch": "torch==2.13.0", "safetensors": "safetensors>=0.4"}
#: what ``device:`` accepts
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:[0-9]+)$"


def missing() -> list[str]:
    """The pip requirements still to install (``pip install pacsguard[gpu]`` brings all)."""
    return [req for mod, req in DEPENDENCIES.items() if importlib.util.find_spec(mod) is None]


def is_available() -> bool:
    return not missing()


class DeviceError(RuntimeError):
    """The configured device cannot be used in this process."""


@functools.lru_cache(maxsize=None)
def select_device(spec: str = "auto"):
    """The torch device for ``spec``, chosen once per process. Raises :class:`DeviceError`
    when a CUDA device is asked for and torch cannot use it."""
    import torch

    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
        raise DeviceError(f"device {spec!r} asked for, but torch {torch.__version__} has {build}")
    device = torch.device(spec)
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def describe_device(spec: str = "auto") -> str:
    """In words, for ``pacsguard plugins``: the device ``spec`` resolves to here, or why
    there is none."""
    gone = missing()
    if gone:
        return f"unavailable: needs {', '.join(gone)} (pip install pacsguard[gpu])"
    try:
        device = select_device(spec)
    except DeviceError as exc:
        return f"unavailable: {exc}"
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu (no CUDA device)" if spec == "auto" else "cpu"


class ModelCache:
    """Models built once per process, shared by the stages of every config generation.

    Keyed by what a model depends on (weights, device, key ID...); a process forked after a
    model was loaded builds its own (CUDA state does not survive a fork)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict[Hashable, Any] = {}
        self._pid = os.getpid()

    def get(self, key: Hashable, build: Callable[[], Any]):
        with self._lock:
            if self._pid != os.getpid():
                self._models, self._pid = {}, os.getpid()
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = build()
            return model

    def __len__(self) -> int:
        return len(self._models)


#: the process's models
MODELS = ModelCache()


def read_weights(package: str, resource: str) -> dict:
    """The tensors of a safetensors file shipped as package data (name -> CPU tensor)."""
    from safetensors.torch import load

    data = importlib.resources.files(package).joinpath(resource).read_bytes()
    return load(data)


def prepare(model, weights: dict, device):
    """Load ``weights`` into ``model`` (every tensor, nothing extra), move it to ``device``
    and put it in eval mode."""
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval()


def run(model, batch):
    """``model(batch)`` without autograd (``torch.inference_mode``)."""
    import torch

    with torch.inference_mode():
        return model(batch)
