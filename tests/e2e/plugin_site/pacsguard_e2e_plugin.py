"""A test-only third-party plugin, loaded through the ``pacsguard`` entry-point group.

The end-to-end tests put this folder on ``PYTHONPATH`` (the ``.dist-info`` beside this
module declares the entry point), so the real service loads it exactly as it would load
any installed third-party plugin. It contributes one destination, ``e2e-journal``:

* it copies each object to ``PATH/<SOPInstanceUID>.dcm`` (write to a temp name, rename);
* before each send it appends ``begin <SOP UID>`` to the journal file, after it
  ``end <SOP UID>`` (O_APPEND; the page cache outlives a killed process, so no fsync is
  needed for the kill -9 tests), so a test can count real sends, including
  re-sends after a crash, which a folder destination hides by overwriting;
* ``delay`` seconds of sleep per send make a slow destination (drain tests).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pydantic import Field

from pacsguard.daemon.extension import Destination, Options
from pacsguard.daemon.hookspecs import hookimpl


class JournalOptions(Options):
    path: str = Field(description="folder to write objects into")
    journal: str = Field(description="file that records every send (begin/end lines)")
    delay: float = Field(0.0, ge=0, description="seconds to sleep before each send")


def _append(journal: str, line: str) -> None:
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class JournalDestination(Destination):
    """Test destination: copy to PATH/<SOPInstanceUID>.dcm and journal every send."""

    name = "e2e-journal"
    Options = JournalOptions

    def send(self, path: Path, header) -> None:
        sop = str(header.SOPInstanceUID)
        _append(self.options.journal, f"begin {sop}")
        if self.options.delay:
            time.sleep(self.options.delay)
        root = Path(self.options.path)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{sop}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, root / f"{sop}.dcm")
        _append(self.options.journal, f"end {sop}")


@hookimpl
def pacsguard_register_destinations(register):
    register(JournalDestination)
