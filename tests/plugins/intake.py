"""The service's Intake contract over a real spool, for sources tested without a service."""

from __future__ import annotations

import time
from pathlib import Path

from pacsguard.daemon.spool import Spool, SpoolFull


class SpoolIntake:
    def __init__(self, spool: Spool):
        self.spool = spool
        self.accepting = True
        self.received: list[int] = []  # job ids, in the order they were committed

    def has_room(self) -> bool:
        return self.spool.has_room()

    def new_partial(self, facts) -> Path:
        if not self.spool.has_room():
            raise SpoolFull()
        return self.spool.new_partial(facts)

    def commit_partial(self, partial, facts) -> int:
        return self.record(self.secure(partial, facts), facts)

    def secure(self, partial, facts) -> Path:
        return self.spool.secure_partial(Path(partial))

    def record(self, path, facts) -> int:
        job = self.spool.record(Path(path), facts)
        self.received.append(job)
        return job

    def wait_received(self, n: int, timeout: float = 10.0) -> list[int]:
        """The job ids once ``n`` objects are recorded (a DICOM source records each one
        right after its answer, so the caller may have its answer a moment before)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.received)
