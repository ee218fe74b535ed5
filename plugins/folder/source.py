"""The watched inbound folder: files are taken once complete and moved into the spool.

A file is complete when it is closed after writing, or renamed (moved) into the folder.
Names that look temporary (``.*``, ``*.tmp``, ``*.part``, ...) are ignored until renamed.
At start-up and every ``rescan_interval`` the folder is scanned, so nothing dropped while
the service was down (or missed by the kernel's event queue) is left behind; a scan takes
only files unchanged for ``settle`` seconds, in case a writer is still busy.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import os
import threading
import time
from pathlib import Path

import structlog
from pydantic import Field
from watchdog.events import FileSystemEventHandler

from pacsguard.daemon.extension import Options, Source
from pacsguard.daemon.spool import SpoolFull
from pacsguard.daemon.units import AbsPath, Duration

log = structlog.get_logger("pacsguard.folder")

DEFAULT_IGNORE = [".*", "*.tmp", "*.temp", "*.part", "*.partial", "*.filepart", "*.crdownload",
                  "*.swp", "*~", "DICOMDIR"]


class FolderSourceOptions(Options):
    path: AbsPath = Field(description="folder to watch (created if missing)")
    recursive: bool = Field(True, description="watch sub-folders too")
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE),
                              description="glob patterns of file names to leave alone")
    settle: Duration = Field(2.0, description="a scan takes files unchanged for this long")
    rescan_interval: Duration = Field(30.0, description="safety-net rescan period")


def being_written(path: Path) -> bool:
    """Does some process on this machine still have ``path`` open for writing?

    A Linux read lease cannot be taken on a file that is open for writing (EAGAIN). A
    writer that pauses longer than ``settle`` is then not taken half-way by a scan. Where
    leases are not available (not the file's owner without CAP_LEASE, network file
    systems), the answer is False and ``settle`` alone decides.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


class _Handler(FileSystemEventHandler):
    def __init__(self, source: "FolderSource"):
        self.source = source

    def on_closed(self, event):  # IN_CLOSE_WRITE: a writer finished
        if not event.is_directory:
            self.source.offer(Path(os.fsdecode(event.src_path)))

    def on_moved(self, event):  # renamed inside the folder, or moved in from elsewhere
        dest = os.fsdecode(event.dest_path)
        if not dest:
            return
        if event.is_directory:
            self.source.scan(Path(dest), settle=0)
        else:
            self.source.offer(Path(dest))


class FolderSource(Source):
    """Watch a folder; move each complete file into the spool."""

    name = "folder"
    Options = FolderSourceOptions
    moves_files = True

    @classmethod
    def default_name(cls, options: FolderSourceOptions) -> str:
        return options.path.name or "folder"

    def __init__(self, name, options, intake):
        super().__init__(name, options, intake)
        self._observer = None
        self._stop = threading.Event()
        self._scanner = None
        self._paused = False
        self._fresh = 0

    def start(self) -> None:
        root = self.options.path
        root.mkdir(parents=True, exist_ok=True)
        self._observer = _make_observer()
        self._observer.schedule(_Handler(self), str(root), recursive=self.options.recursive)
        self._observer.start()  # watch first, then scan: nothing falls in between
        self._scanner = threading.Thread(target=self._scan_loop, name=f"scan-{self.source_name}", daemon=True)
        self._scanner.start()
        log.info("watching folder", source=self.source_name, path=str(root))

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._scanner is not None:
            self._scanner.join(timeout=5)

    def ignored(self, path: Path) -> bool:
        rel = path.relative_to(self.options.path) if path.is_relative_to(self.options.path) else path
        return any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in self.options.ignore)

    def offer(self, path: Path) -> bool:
        """Take one complete file. Returns True if it went into the spool."""
        if self._stop.is_set() or not self.intake.accepting:
            return False
        if not path.is_relative_to(self.options.path) or self.ignored(path):
            return False
        if not self.options.recursive and path.parent != self.options.path:
            return False
        try:
            if not path.is_file() or path.is_symlink():
                return False
            if being_written(path):
                return False  # a writer still has it open: its close event brings it back
            self.intake.ingest_file(path, self.facts())
            self._paused = False
            return True
        except FileNotFoundError:
            return False  # taken by a concurrent event or scan
        except SpoolFull:
            if not self._paused:
                log.warning("spool full: leaving files in the inbound folder until space frees",
                            source=self.source_name)
            self._paused = True
            return False
        except OSError as exc:
            log.error("cannot take file from inbound folder", source=self.source_name,
                      error=exc.strerror or type(exc).__name__)
            return False

    def scan(self, folder: Path | None = None, settle: float | None = None) -> int:
        """Take every stable file below ``folder`` (default: the whole watched folder)."""
        folder = folder or self.options.path
        settle = self.options.settle if settle is None else settle
        taken = 0
        self._fresh = 0
        now = time.time()
        walker = os.walk(folder) if self.options.recursive else [(str(folder), [], os.listdir(folder))]
        for dirpath, dirnames, filenames in walker:
            dirnames[:] = sorted(d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in self.options.ignore))
            for fn in sorted(filenames):
                if self._stop.is_set():
                    return taken
                p = Path(dirpath) / fn
                try:
                    if now - p.lstat().st_mtime < settle:
                        self._fresh += 1  # still being written? the close event or a rescan takes it
                        continue
                except OSError:
                    continue
                taken += self.offer(p)
        return taken

    def _scan_loop(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                n = self.scan()
                if n and first:
                    log.info("start-up scan took files left in the inbound folder", source=self.source_name,
                             files=n)
            except OSError as exc:
                log.error("inbound folder scan failed", source=self.source_name,
                          error=exc.strerror or type(exc).__name__)
            first = False
            interval = self.options.rescan_interval
            if self._paused:
                interval = min(interval, 2.0)
            else:
                # files skipped as too fresh: look again once they have settled
                interval = min(interval, max(self.options.settle, 0.5)) if self._fresh else interval
            self._stop.wait(interval)


#: How long watchdog holds a rename's IN_MOVED_FROM to pair it with its IN_MOVED_TO. Its
#: default (0.5 s) is spent in full on every rename, even when the pair arrives at once
#: (its queue sleeps instead of waiting), so a file renamed into the folder was taken ~0.5 s
#: late. A rename inside one folder reports both halves in the same read; a half that comes
#: unpaired still ends in ``on_moved`` with its destination.
MOVE_PAIRING_DELAY = 0.02


def _make_observer():
    try:
        from watchdog.observers.inotify import InotifyObserver

        try:
            from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

            InotifyMoveEventGrouper.delay = MOVE_PAIRING_DELAY
        except ImportError:  # an older watchdog (InotifyBuffer): its default stays
            pass
        return InotifyObserver(generate_full_events=True)
    except Exception:  # not Linux: the platform observer; rescans cover the rest
        from watchdog.observers import Observer

        return Observer()
