"""Every extension point of pacsguard, grouped by the flow of an object:
sources -> spool -> route -> stages -> delivery -> audit.

Hooks are called with keyword arguments only. Contribution hooks receive a ``register``
callback (the host decides on ordering and duplicates). Observation hooks carry job ids,
names and counts only: never patient data.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("pacsguard")
hookimpl = pluggy.HookimplMarker("pacsguard")


# --- sources ------------------------------------------------------------------------


@hookspec
def pacsguard_register_sources(register):
    """Contribute source types: call ``register(SourceClass)`` for each
    (a :class:`~pacsguard.daemon.extension.Source` subclass; its ``name`` is the type)."""


# --- spool --------------------------------------------------------------------------


@hookspec
def pacsguard_object_received(job_id: int, source: str, size: int):
    """Observe: an object from ``source`` was made durable in the spool as job ``job_id``
    (``size`` bytes). Called after the object is acknowledged to the sender."""


# --- route --------------------------------------------------------------------------


@hookspec
def pacsguard_object_routed(job_id: int, routes: list):
    """Observe: job ``job_id`` matched the routes named in ``routes`` (in order)."""


# --- stages -------------------------------------------------------------------------


@hookspec
def pacsguard_register_stages(register):
    """Contribute pipeline stages: call ``register(StageClass)`` for each
    (a :class:`~pacsguard.daemon.extension.Stage` subclass; its ``name`` is the YAML key)."""


@hookspec(firstresult=True)
def pacsguard_decode_pixels(item):
    """Decide how to decode ``item``'s pixel data; return a numpy-compatible array, or
    None to let the next implementation try. The built-in default (trylast) decodes with
    pydicom and raises QuarantineError when it cannot."""


@hookspec(firstresult=True)
def pacsguard_decode_pixels_batch(items: list):
    """Decode the pixel data of several items at once (a batching stage's group, see
    :meth:`~pacsguard.daemon.item.Item.pixels_of`); return one array per item, in order, or None
    to let the next implementation try. The built-in default (trylast) decodes each item
    through ``pacsguard_decode_pixels``; a GPU decoder decodes the group in one call."""


@hookspec
def pacsguard_stage_finished(job_id: int, route: str, stage: str, seconds: float, outcome: str):
    """Observe: ``stage`` of ``route`` finished job ``job_id`` in ``seconds``;
    ``outcome`` is ``"ok"``, ``"quarantined"`` or ``"error"`` (a bug in the stage)."""


@hookspec
def pacsguard_stage_result(job_id: int, route: str, stage: str, result: dict):
    """Observe: ``stage`` of ``route`` processed job ``job_id`` and measured ``result``
    (name -> number: the stage's declared :attr:`~pacsguard.daemon.extension.Stage.measures`,
    e.g. embed's ``psnr_db``). Called after ``pacsguard_stage_finished`` with outcome ok,
    only when the stage measured something."""


# --- delivery -----------------------------------------------------------------------


@hookspec
def pacsguard_register_destinations(register):
    """Contribute destination types: call ``register(DestinationClass)`` for each
    (a :class:`~pacsguard.daemon.extension.Destination` subclass; ``name`` is the type)."""


@hookspec
def pacsguard_delivery_failed(job_id: int, route: str, destination: str, attempt: int, retry_in: float):
    """Observe: attempt number ``attempt`` to deliver job ``job_id`` to ``destination``
    failed; it is retried in ``retry_in`` seconds."""


@hookspec
def pacsguard_object_delivered(job_id: int, route: str, destination: str, attempts: int, seconds: float):
    """Observe: job ``job_id`` reached ``destination`` after ``attempts`` attempts,
    ``seconds`` after it was received."""


# --- audit --------------------------------------------------------------------------


@hookspec
def pacsguard_object_quarantined(job_id: int, quarantine_id: int, reason: str, where: str):
    """Observe: job ``job_id`` was quarantined as entry ``quarantine_id`` with ``reason``;
    ``where`` names the place (``"parse"``, ``"route"``, ``"stage:NAME"``,
    ``"destination:NAME"``)."""
