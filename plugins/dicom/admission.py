"""Which connections the DICOM node keeps when slow or half-open ones crowd in.

Connections that hold no association slot — accepted, but still in their TLS handshake or
sending their A-ASSOCIATE-RQ, and C-ECHO-only associations — are kept in a pool of their
own (:class:`PendingPool`), apart from ``max_associations``: half-open connections cannot
take the slots of real associations, and cannot grow without bound either.

When the pool is full, a new connection drops the *oldest* one in it rather than being
closed itself. That is what keeps C-ECHO (and any honest caller) answered under a
slow-loris attack: an honest caller sends its whole association request as soon as it has
connected and leaves the pool within milliseconds, so the oldest connections are the slow
ones; closing new connections instead would let a few slow sockets, reopened as they time
out, lock every caller out. (Against a flood of fast connections no choice helps; the
flood itself is what the node then logs.)

Each drop is logged once, with the peer's address only, through :class:`DropLog`, which
turns a flood into one summary a minute.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Callable, Optional

import structlog

log = structlog.get_logger("pacsguard.dicom")


class Pending:
    """One connection in the pool. It holds a duplicate of the connection's socket, so that
    dropping it (a shutdown) wakes the thread serving the connection, TLS-wrapped or not."""

    def __init__(self, key: int, sock: socket.socket, host: str):
        self.key = key
        self.host = host
        self.since = time.monotonic()
        self.dropped = False  # by the pool: already logged, the serving thread says nothing more
        self._dup: Optional[socket.socket] = sock.dup()

    def _close(self, *, shutdown: bool) -> None:
        dup, self._dup = self._dup, None
        if dup is None:
            return
        if shutdown:
            try:
                dup.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        dup.close()


class PendingPool:
    """At most ``limit`` connections that hold no association slot; see the module."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._entries: dict[int, Pending] = {}  # in the order they came
        self._keys = itertools.count()

    def admit(self, sock: socket.socket, host: str) -> tuple[Pending, Optional[Pending]]:
        """Take a new connection in: (its entry, the oldest one dropped to make room, or None)."""
        entry = Pending(next(self._keys), sock, host)
        evicted = None
        with self._lock:
            if len(self._entries) >= self.limit:
                evicted = self._entries.pop(next(iter(self._entries)))
                evicted.dropped = True
            self._entries[entry.key] = entry
        if evicted is not None:
            evicted._close(shutdown=True)
        return entry, evicted

    def release(self, entry: Pending) -> None:
        """The connection got its association slot, or ended (idempotent)."""
        with self._lock:
            mine = self._entries.pop(entry.key, None) is not None
        if mine:
            entry._close(shutdown=False)

    def drop_all(self) -> int:
        """Shut every connection in the pool down (the service is stopping)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.dropped = True
            entry._close(shutdown=True)
        return len(entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class DropLog:
    """A warning for each dropped slow connection (the peer's address and why, nothing
    else), up to ``burst`` in ``window`` seconds; past that they are counted and one summary
    per window says how many and from how many addresses: never silent, never a flood."""

    def __init__(self, source: str, *, burst: int = 10, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.burst, self.window, self._clock = burst, window, clock
        self._lock = threading.Lock()
        self._since = clock()
        self._logged = 0
        self._counted = 0
        self._hosts: set[str] = set()

    def note(self, host: str, reason: str) -> None:
        with self._lock:
            self._roll()
            if self._logged < self.burst:
                self._logged += 1
                log.warning("slow connection dropped", source=self.source, calling_host=host, reason=reason)
                return
            self._counted += 1
            if len(self._hosts) < 1000:
                self._hosts.add(host)

    def flush(self, *, final: bool = False) -> None:
        """Log the summary of a window that has ended (called now and then), or of the
        current one when ``final``."""
        with self._lock:
            self._roll(final)

    def _roll(self, final: bool = False) -> None:
        now = self._clock()
        if now - self._since < self.window and not final:
            return
        if self._counted:
            log.warning("slow connections dropped (too many to log one by one)", source=self.source,
                        count=self._counted, seconds=round(now - self._since), addresses=len(self._hosts),
                        some_addresses=sorted(self._hosts)[:5])
        self._since, self._logged, self._counted = now, 0, 0
        self._hosts = set()
