"""Base classes for what plugins contribute: stages, destinations and sources.

Each contribution declares a ``name`` (its YAML key or ``type:``) and an ``Options``
pydantic model; unknown option keys are errors. Optional heavy dependencies are listed in
``dependencies`` (import name -> pip requirement) and imported lazily inside the class's
methods, so a missing package fails at config check, never at import of the daemon.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from .item import Item, TransportFacts


class Options(BaseModel):
    """Base for every contribution's options: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchOptions(Options):
    """Options of a stage that batches (``batching = True``): how the host fills its batches."""

    batch_size: int = Field(8, ge=1, le=1024,
                            description="most objects of one geometry the stage gets in one call")
    max_wait_ms: float = Field(10, ge=0, le=10000,
                               description="how long a worker with fewer objects waits for more before "
                                           "it starts; a lone object is held up no longer than this")


@dataclass(frozen=True)
class Measure:
    """A number a stage reports per object it processed (a quality or cost figure such as
    the PSNR of marked pixels), declared in :attr:`Stage.measures`; the metrics show it as
    the histogram ``pacsguard_<stage>_<name>`` (``-`` in the stage name as ``_``) with
    these ``buckets``, labelled by route. A figure about the processing, never patient data."""

    description: str
    buckets: tuple[float, ...]


class _Contribution:
    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    #: import name -> pip requirement, for optional heavy dependencies
    dependencies: ClassVar[dict[str, str]] = {}

    @classmethod
    def missing_dependencies(cls) -> list[str]:
        """The pip requirements to install before this contribution can run."""
        return [req for mod, req in cls.dependencies.items() if importlib.util.find_spec(mod) is None]

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class Stage(_Contribution):
    """A pipeline stage. Subclasses set ``name``, ``Options`` and implement ``process``.

    ``process`` runs in worker threads and may be called concurrently: keep per-object
    state on the item, not on the stage. Raise :class:`QuarantineError` for a problem with
    the object; any other exception is treated as a bug (the object is quarantined too).
    """

    #: the stage that undoes this one (encrypt -> decrypt), if any
    inverse: ClassVar[str | None] = None
    #: set True when ``process_batch`` is worth calling with several objects of the same
    #: geometry (GPU stages); the host then groups items by :meth:`Item.geometry`, at most
    #: ``batch_size`` at a time, and waits up to ``max_wait_ms`` to fill a batch (give the
    #: stage :class:`BatchOptions`; without them: the objects one worker took together).
    batching: ClassVar[bool] = False
    #: set True when the stage re-encodes pixel data lossily (a stage that hides data in
    #: the pixels refuses to be followed by one: :meth:`check_pipeline`)
    lossy: ClassVar[bool] = False
    #: the numbers the stage reports per object (name -> :class:`Measure`): the host asks
    #: :meth:`measured` after each object and passes what it gets to ``pacsguard_stage_result``
    measures: ClassVar[dict[str, Measure]] = {}

    def __init__(self, options: Options):
        self.options = options

    @classmethod
    def key_uses(cls, options: Options) -> list:
        """The keys these options name (a list of :class:`pacsguard.daemon.keys.KeyUse`):
        the config loader checks each against the key store, and the stage finds them,
        loaded, in ``item.keys``."""
        return []

    @property
    def batch_size(self) -> int | None:
        """Most objects per ``process_batch`` call (None: no limit of its own)."""
        return getattr(self.options, "batch_size", None) if self.batching else None

    @property
    def max_wait(self) -> float:
        """Seconds a worker may wait for more objects to fill this stage's batches."""
        return float(getattr(self.options, "max_wait_ms", 0) or 0) / 1000 if self.batching else 0.0
    @classmethod
    def check_pipeline(cls, options: Options, following: list) -> list[str]:
        """Config errors about the stages after this one in its route (``following``:
        (name, class, options) in order); e.g. a lossy stage after ``embed``."""
        return []

    def process(self, item: "Item") -> "Item":
        raise NotImplementedError

    def measured(self, item: "Item") -> dict[str, float]:
        """The figures of :attr:`measures` for one item this stage processed (any subset;
        none when there was nothing to measure). Names and numbers only."""
        return {}

    def process_batch(self, items: list["Item"]) -> list["Item"]:
        return [self.process(item) for item in items]

    def close(self) -> None:
        """Release resources (models, GPU memory) when the config is replaced."""


class Destination(_Contribution):
    """Where protected objects go. One instance per configured destination.

    ``send`` is called from the destination's own worker thread(s) and raises
    :class:`DeliveryError` on failure (``permanent=True`` when retrying cannot help).
    """

    def __init__(self, name: str, options: Options):
        self.destination_name = name
        self.options = options

    def start(self) -> None:
        """Called once in the process that sends, before the first send: clean up what an
        interrupted run left behind (a folder destination's temporary files)."""

    def send(self, path: Path, header: "Dataset") -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (called on reload and shutdown)."""


class Source(_Contribution):
    """Where objects come from. ``start`` begins intake, ``stop`` ends it.

    A source hands every object to ``intake`` (see :class:`pacsguard.daemon.spool.Intake`),
    which makes it durable before the source acknowledges it to the sender.
    """

    #: True when the source moves files into the spool (the original is gone once
    #: moved): an orphan file found in the spool after a crash is adopted, not dropped.
    moves_files: ClassVar[bool] = False

    @classmethod
    def orphan_facts(cls, path) -> dict | None:
        """At start-up, for a complete file of this source found in the spool without its
        record (a crash, or a power loss that took the last commits): the transport
        facts to adopt it with (``calling_ae``, ``called_ae``, ``calling_host``), or None
        to delete it (it was never acknowledged). Default: adopt when ``moves_files``."""
        return {} if cls.moves_files else None

    def __init__(self, name: str, options: Options, intake: Any):
        self.source_name = name
        self.options = options
        self.intake = intake

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def facts(self, **kw: Any) -> "TransportFacts":
        from .item import TransportFacts

        return TransportFacts(source=self.source_name, source_type=self.name, **kw)
