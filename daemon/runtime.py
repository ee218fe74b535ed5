"""What one configuration builds: the stages of every route, the destinations and the
keys, swapped as one object on reload (``Runtime``), and the functions that build it.

Both processes build it from the same validated config: the service process to check a
config before it swaps it in, the worker process to run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from . import config as configmod
from .errors import ConfigError
from .plugins import Registry
from .router import Route, compile_route


@dataclass
class Runtime:
    """Everything built from one config: swapped atomically on reload."""

    routes: list[Route]
    destinations: dict = field(default_factory=dict)  # name -> (Destination, DestinationSpec)
    generation: int = 0
    #: the config's loaded keys, read-only: every item of this generation gets this mapping
    keys: Mapping = field(default_factory=lambda: MappingProxyType({}))
    #: the config's ``pixels:`` section (a ``PixelsConfig``): every item of this generation
    #: carries it, for the decoding path (``Item.pixel_settings``)
    pixels: object = None

    def gather(self) -> tuple[int, float]:
        """(objects, seconds): how many objects a worker should take at once for the
        batching stages, and how long it may wait for them (0, 0.0 when none batches)."""
        stages = [s for r in self.routes for s in r.stages if getattr(s, "batching", False)]
        return (max((s.batch_size or 0 for s in stages), default=0),
                max((s.max_wait for s in stages), default=0.0))


def build_destinations(loaded: configmod.Loaded, registry: Registry) -> dict:
    """Instantiate the destinations of a validated config: {name: (Destination, spec)}."""
    errors = []
    destinations = {}
    for name, spec in loaded.config.destinations.items():
        cls = registry.destinations[spec.type].cls
        try:
            destinations[name] = (cls(name, loaded.destination_options[name]), spec)
        except Exception as exc:
            errors.append(f"destinations.{name}: cannot set up destination ({exc})")
    if errors:
        raise ConfigError(errors, str(loaded.path or "<embedded default>"))
    return destinations


def build_runtime(loaded: configmod.Loaded, registry: Registry, generation: int = 0) -> Runtime:
    """Instantiate stages and destinations for a validated config; its keys, loaded with
    it, are the runtime's (one read-only mapping for every item of this generation)."""
    errors = []
    routes = []
    for i, rc in enumerate(loaded.config.routes):
        stages = []
        for j, spec in enumerate(loaded.pipelines.get(rc.name, [])):
            try:
                stages.append(spec.cls(spec.options))
            except Exception as exc:
                errors.append(f"routes[{i}].pipeline[{j}].{spec.name}: cannot start stage ({exc})")
        routes.append(compile_route(rc, stages))
    try:
        destinations = build_destinations(loaded, registry)
    except ConfigError as exc:
        errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors, str(loaded.path or "<embedded default>"))
    return Runtime(routes=routes, destinations=destinations, generation=generation, keys=loaded.keys,
                   pixels=loaded.config.pixels)
