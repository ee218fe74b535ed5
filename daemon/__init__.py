"""pacsguard's service core. The public API for plugin authors is re-exported here."""

from .errors import ConfigError, DeliveryError, PacsguardError, PluginError, QuarantineError
from .extension import BatchOptions, Destination, Measure, Options, Source, Stage
from .hookspecs import hookimpl, hookspec
from .item import Item, TransportFacts

__all__ = [
    "BatchOptions", "ConfigError", "DeliveryError", "Destination", "Item", "Measure", "Options", "PacsguardError", "PluginError",
    "QuarantineError", "Source", "Stage", "TransportFacts", "hookimpl", "hookspec",
]
