"""The plugin manager: built-ins and third-party plugins, registered the same way."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .extension import Destination, Source, Stage

#: Built-in plugins, registered exactly like third-party ones.
DEFAULT_PLUGINS = (
    "pacsguard.daemon.pixels",
    "pacsguard.plugins.folder",
    "pacsguard.plugins.dicom",
    "pacsguard.plugins.setattrs",
    "pacsguard.plugins.encryption",
    "pacsguard.plugins.decoders",
    "pacsguard.plugins.deidentify",
    "pacsguard.plugins.stego",
    "pacsguard.plugins.gpudecode",
)

ENTRY_POINT_GROUP = "pacsguard"


def get_plugin_manager(*, entry_points: bool = True, extra: tuple = ()) -> pluggy.PluginManager:
    """Build a plugin manager with the built-ins, entry-point plugins and ``extra``."""
    pm = pluggy.PluginManager("pacsguard")
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


@dataclass(frozen=True)
class Contribution:
    cls: type
    plugin: str

    @property
    def name(self) -> str:
        return self.cls.name


@dataclass
class Registry:
    """What the loaded plugins contribute, by kind and name."""

    stages: dict[str, Contribution] = field(default_factory=dict)
    destinations: dict[str, Contribution] = field(default_factory=dict)
    sources: dict[str, Contribution] = field(default_factory=dict)

    def kind(self, kind: str) -> dict[str, Contribution]:
        return getattr(self, kind)


_KINDS = (
    ("stages", "pacsguard_register_stages", Stage),
    ("destinations", "pacsguard_register_destinations", Destination),
    ("sources", "pacsguard_register_sources", Source),
)


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call the contribution hooks plugin by plugin, recording who registered what."""
    registry = Registry()
    plugins = pm.list_name_plugin()
    for kind, hook_name, base in _KINDS:
        table = registry.kind(kind)
        for plugin_name, plugin in plugins:
            others = [p for _, p in plugins if p is not plugin]
            caller = pm.subset_hook_caller(hook_name, remove_plugins=others)

            def register(cls: Any, *, _plugin=plugin_name, _table=table, _base=base, _kind=kind) -> None:
                if not (isinstance(cls, type) and issubclass(cls, _base)):
                    raise PluginError(f"plugin {_plugin!r} registered {cls!r}, not a {_base.__name__} subclass")
                name = getattr(cls, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_plugin!r}: {cls.__name__} has no name")
                if name in _table:
                    raise PluginError(
                        f"{_kind[:-1]} {name!r} registered twice: by {_table[name].plugin!r} and {_plugin!r}"
                    )
                _table[name] = Contribution(cls, _plugin)

            caller(register=register)
    return registry


def describe(pm: pluggy.PluginManager, registry: Registry) -> list[dict]:
    """One entry per loaded plugin: name, where it came from, what it contributes."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is hookspecs:
            continue
        dist = dists.get(id(plugin))
        if name in DEFAULT_PLUGINS:
            origin = "built-in"
        elif dist is not None:
            origin = f"entry point of {dist.project_name} {dist.version}"
        else:
            origin = "registered at start"
        module = getattr(plugin, "__file__", None) or getattr(type(plugin), "__module__", "")
        entry = {
            "name": name,
            "origin": origin,
            "module": str(module),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        }
        for kind, _, _ in _KINDS:
            entry[kind] = sorted(n for n, c in registry.kind(kind).items() if c.plugin == name)
        report = getattr(plugin, "report", None)  # a plugin's own lines (gpu-decode: its table)
        if callable(report):
            entry["report"] = list(report())
        out.append(entry)
    return out
