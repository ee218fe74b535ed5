"""The service's Intake contract over a real spool, for sources tested without a service."""

from __future__ import annotations

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
        job = self.spool.commit_partial(Path(partial), facts)
        self.received.append(job)
        return job
