"""Exceptions that cross module boundaries.

A stage or destination tells the host what went wrong with these, so the host can tell
"quarantine this object, with this reason" apart from "a bug happened". Reasons end up in
logs, metrics labels and the quarantine record: they must never contain patient data.
"""

from __future__ import annotations

import traceback
from typing import Literal


def bug_summary(exc: BaseException) -> str:
    """Type and innermost location of an unexpected exception (no message: it may hold PHI)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}{where}"


class PacsguardError(Exception):
    """Base class for pacsguard's own errors."""


class QuarantineError(PacsguardError):
    """Raised by a stage: this object cannot be processed; quarantine it with ``reason``.

    Use it for expected, object-specific problems (unsupported pixel format, attribute
    missing, payload too large for the image). Any other exception from a stage is
    treated as a bug: the object is quarantined too, and the traceback is logged.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DeliveryError(PacsguardError):
    """Raised by a destination when an object could not be delivered.

    ``permanent=True`` means retrying cannot help (the peer refuses this object for good):
    the delivery is quarantined at once. Otherwise it is retried with backoff.

    ``scope`` says whose fault it is. ``"destination"`` (the default for a retryable
    error): the peer or the way to it (connection refused, timeout, association
    rejected); the whole destination backs off, and its objects wait in order.
    ``"object"`` (always so when permanent): this object alone; it is retried on its own
    schedule while the destination's other objects keep flowing.
    """

    def __init__(self, reason: str, *, permanent: bool = False,
                 scope: Literal["object", "destination"] | None = None):
        if scope not in (None, "object", "destination"):
            raise ValueError(f"scope is 'object' or 'destination', not {scope!r}")
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.scope = "object" if permanent else scope or "destination"


class ConfigError(PacsguardError):
    """The configuration is invalid. ``errors`` holds every problem, each with its place."""

    def __init__(self, errors: list[str], source: str = "config"):
        self.errors = list(errors)
        self.source = source
        super().__init__(f"{source}: {len(self.errors)} error(s)\n" + "\n".join(self.errors))


class PluginError(PacsguardError):
    """A plugin is broken: duplicate names, bad contributions, misspelt hooks."""
