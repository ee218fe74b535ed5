"""The sink every contender delivers to: dcmtk ``storescp`` (TCP_NODELAY=1), one file per
object, named ``<modality>.<SOP Instance UID>`` (``-uf``), written as it arrives (``+B``).

Completion is detected by counting the files in the sink folder every ~10 ms; each
object's delivery time is its file's mtime (the moment storescp wrote its last byte).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .common import peers

SINK_AET = "SINK"


class Sink:
    def __init__(self, folder: Path, *, max_pdu: int):
        self.folder = Path(folder)
        self.max_pdu = max_pdu
        self.scp = peers.Storescp(self.folder, aet=SINK_AET, args=("+xa", "--max-pdu", str(max_pdu)))

    @property
    def port(self) -> int:
        return self.scp.port

    @property
    def pid(self) -> int | None:
        return self.scp.proc.pid if self.scp.proc else None

    def start(self) -> "Sink":
        self.scp.start()
        return self

    def stop(self) -> None:
        self.scp.stop()

    def __enter__(self) -> "Sink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.scp.proc is not None and self.scp.proc.poll() is None

    # -- observing -------------------------------------------------------------------------
    def names(self) -> list[str]:
        try:
            with os.scandir(self.folder) as it:
                return [e.name for e in it if e.is_file() and not e.name.startswith(".")]
        except FileNotFoundError:
            return []

    def count(self) -> int:
        return len(self.names())

    def arrivals(self) -> dict[str, tuple[float, int]]:
        """SOP Instance UID -> (mtime, size) of every stored file."""
        out = {}
        for name in self.names():
            try:
                st = os.stat(self.folder / name)
            except FileNotFoundError:
                continue
            uid = name.split(".", 1)[1] if "." in name else name
            out[uid] = (st.st_mtime_ns / 1e9, st.st_size)
        return out

    def clear(self) -> None:
        for name in self.names():
            try:
                os.unlink(self.folder / name)
            except FileNotFoundError:
                pass

    def wait_for(self, n: int, *, timeout: float, poll: float = 0.01, abort=None) -> tuple[bool, int]:
        """Poll until ``n`` files are stored and their sizes stop changing (storescp ``+B``
        writes into the final name while receiving). Returns (complete, count)."""
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            count = self.count()
            if count >= n:
                break
            if abort is not None and abort():
                return False, count
            time.sleep(poll)
        else:
            return False, count
        previous = None
        while time.monotonic() < deadline:
            snap = self.arrivals()
            if snap == previous:
                return True, len(snap)
            previous = snap
            time.sleep(max(poll, 0.03))
        return False, count
