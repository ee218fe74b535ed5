"""The durable spool: object files plus an embedded SQLite database (WAL).

Layout under the spool folder::

    spool.db                      jobs, deliveries, quarantine
    incoming/<type>.<source>/     received objects (one file per job)
    out/<job id>.<route>.dcm      a route's processed output (only when stages changed it)
    out/<job id>.<route>.pgenc    ... sealed whole by a stage (not DICOM), with its clear
                                  header beside it in <job id>.<route>.pgenc.hdr
    quarantine/<id>.dcm|.json     quarantined objects (hard links) and their records

Durability rule: the files are the truth, the database is their index. An object is
written as ``*.part``, fsync'd, renamed to its final name and its folder fsync'd; from then
on the source may acknowledge it (the DICOM source does, and writes the job row after its
answer; the folder source writes the row first). That commit is not fsync'd by itself
(WAL, synchronous=NORMAL): a kill -9 keeps it (it is in the OS), a power loss may take the
last commits, but never a file. At start-up a complete file in ``incoming/`` without a row
is adopted with the facts its source recorded in it (see ``Source.orphan_facts``), or
deleted when its source says it cannot have been acknowledged; ``*.part`` files are
deleted. An adopted object that was in fact never acknowledged is sent again by its
sender: delivery is at-least-once.

Processed outputs (``out/``) are not fsync'd where the OS tells its boot (Linux's
``/proc/sys/kernel/random/boot_id``): they can always be made again from the received
file, which is durable and kept until every delivery is done. A kill -9 of the service
keeps them (they are in the OS's page cache); only a crash of the OS itself (power cut,
kernel panic: a new boot) can take them. So the boot that writes them is recorded
durably (``meta.outputs_boot``) before any is written, and a start in another boot
processes again every job whose processed outputs were not all delivered yet (its
delivered and quarantined deliveries are kept and not sent again). Where the boot is
unknown, outputs are fsync'd as received files are.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import structlog

from .fileio import fsync_dir, fsync_file
from .item import SEALED_SUFFIX, TransportFacts, header_path

SCHEMA_VERSION = 1

#: when the size limit is reached, delivered objects are evicted down to this fraction of it
EVICT_TO = 0.95

_log = structlog.get_logger("pacsguard.spool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    source TEXT NOT NULL,
    source_type TEXT NOT NULL,
    calling_ae TEXT, called_ae TEXT, calling_host TEXT,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,            -- received | routed | done | quarantined
    uid_hash TEXT,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    route TEXT NOT NULL,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | delivered | quarantined
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    delivered_at REAL
);
DROP INDEX IF EXISTS deliveries_queue;  -- (destination, state, id): deliveries_arrival serves its queries
CREATE INDEX IF NOT EXISTS deliveries_arrival ON deliveries (destination, state, job_id, id);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    delivery_id INTEGER,
    reason TEXT NOT NULL,
    place TEXT NOT NULL,
    created_at REAL NOT NULL,
    released_at REAL
);
CREATE INDEX IF NOT EXISTS quarantine_open ON quarantine (released_at, id);
"""


class SpoolFull(Exception):
    """The spool is over its size limit: refuse intake until deliveries free space."""


@dataclass(frozen=True)
class Job:
    id: int
    path: Path
    size: int
    facts: TransportFacts
    state: str


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    route: str
    destination: str
    path: Path
    attempts: int
    next_attempt_at: float
    received_at: float


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This boot of the OS (Linux), or None where the OS does not tell."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "_"


class Spool:
    """Files + SQLite. Thread-safe: each thread gets its own connection."""

    def __init__(self, root: Path, max_size: int = 0, *, readonly: bool = False,
                 on_grew: Callable[[int], None] | None = None):
        self.root = Path(root)
        self.max_size = max_size
        #: told how many bytes processing added (the worker process tells the receiving one)
        self.on_grew = on_grew
        self.db_path = self.root / "spool.db"
        self.incoming = self.root / "incoming"
        self.out = self.root / "out"
        self.quarantine_dir = self.root / "quarantine"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._evict_lock = threading.Lock()
        #: delivered jobs deleted before their retention ended, to make room
        self.evicted = 0
        #: (job id, facts) of the orphans the last :meth:`recover` adopted
        self.adopted: list[tuple[int, TransportFacts]] = []
        self.readonly = readonly
        self._sync_outputs: bool | None = None
        if readonly:
            if not self.db_path.exists():
                raise FileNotFoundError(f"no spool at {self.root} (has the service run yet?)")
        else:
            for d in (self.root, self.incoming, self.out, self.quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._conn().executescript(SCHEMA)
            self._conn().execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        self._used = self._conn().execute("SELECT COALESCE(SUM(size), 0) FROM jobs").fetchone()[0]

    # -- connections -----------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, isolation_level=None, timeout=30)
            else:
                conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL: in WAL mode a commit is atomic and consistent, and becomes
                # durable at the next fsync of the WAL. A power cut may take the last
                # commits: lost intake rows are rebuilt from the files (recover), lost
                # routing or delivery updates mean re-processing or re-sending
                # (at-least-once). A kill -9 loses nothing: the commits are in the OS.
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, *_):
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _tx(self):
        return self._Tx(self._conn())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- intake ------------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        return self._used

    def has_room(self) -> bool:
        """Is there room for one more object? Delivered objects kept for their retention
        do not take room from new ones: when the limit is reached, the oldest of them are
        deleted first (down to 95 % of the limit). Only undelivered work (received,
        awaiting delivery, quarantined) fills the spool."""
        if not self.max_size or self._used < self.max_size:
            return True
        with self._evict_lock:
            if self._used >= self.max_size:
                self.evict(self._used - int(self.max_size * EVICT_TO))
        return self._used < self.max_size

    def evict(self, nbytes: int) -> int:
        """Delete delivered jobs, oldest first, until ``nbytes`` are freed or none is left;
        returns how many jobs were deleted."""
        removed = 0
        while nbytes > 0:
            rows = self._conn().execute(
                "SELECT id, path, size FROM jobs WHERE state='done' ORDER BY finished_at, id LIMIT 200").fetchall()
            if not rows:
                break
            take = []
            for r in rows:
                take.append(r)
                nbytes -= r["size"]
                if nbytes <= 0:
                    break
            removed += self._remove_jobs(take)
        if removed:
            self.evicted += removed
            _log.warning("spool limit reached: delivered objects deleted before their retention ended",
                         removed_jobs=removed, spool_bytes=self._used, spool_limit_bytes=self.max_size)
        return removed

    def _incoming_dir(self, facts: TransportFacts) -> Path:
        d = self.incoming / f"{_safe(facts.source_type)}.{_safe(facts.source)}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def new_partial(self, facts: TransportFacts) -> Path:
        """A fresh path to stream an object into; pass it to :meth:`commit_partial`."""
        return self._incoming_dir(facts) / f"{uuid.uuid4().hex}.dcm.part"

    def commit_partial(self, partial: Path, facts: TransportFacts) -> int:
        """Make a fully written partial file durable and record it; return the job id."""
        return self.record(self.secure_partial(partial), facts)

    def secure_partial(self, partial: Path) -> Path:
        """Make a fully written partial file durable under its final name, and return that.

        From here the object is safe: a source may acknowledge it. Its job row follows
        (:meth:`record`); should the process die in between, :meth:`recover` adopts the
        file at the next start."""
        final = partial.with_name(partial.name[: -len(".part")])
        fsync_file(partial)
        os.rename(partial, final)
        fsync_dir(final.parent)
        return final


    def ingest_file(self, src: Path, facts: TransportFacts) -> int:
        """Move a complete file into the spool (atomically on one filesystem) and record it.

        Raises FileNotFoundError if the file is gone (taken already), SpoolFull when over
        the limit.
        """
        if not self.has_room():
            raise SpoolFull()
        dest_dir = self._incoming_dir(facts)
        name = f"{uuid.uuid4().hex}.dcm"
        final = dest_dir / name
        try:
            os.rename(src, final)
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: another filesystem: copy, then remove the original
                raise
            partial = dest_dir / (name + ".part")
            shutil.copyfile(src, partial)
            fsync_file(partial)
            os.rename(partial, final)
            fsync_dir(dest_dir)
            os.unlink(src)
        else:
            fsync_file(final)
            fsync_dir(dest_dir)
        try:
            fsync_dir(Path(src).parent)
        except OSError:
            pass
        return self.record(final, facts)

    def record(self, path: Path, facts: TransportFacts) -> int:
        """Record a secured file as a received job; return the job id."""
        size = path.stat().st_size
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO jobs (path, size, source, source_type, calling_ae, called_ae, calling_host,"
                " received_at, state, updated_at) VALUES (?,?,?,?,?,?,?,?, 'received', ?)",
                (str(path.relative_to(self.root)), size, facts.source, facts.source_type,
                 facts.calling_ae, facts.called_ae, facts.calling_host, facts.received_at or now, now),
            )
            job_id = cur.lastrowid
        with self._lock:
            self._used += size
        return job_id

    # -- recovery ------------------------------------------------------------------------
    def recover(self, adopt: Callable[[str, Path], dict | None]) -> dict:
        """After a start (or crash): drop partial files, adopt or drop orphans.

        ``adopt(source_type, path)`` gives the transport facts to adopt an orphan with
        (a dict, maybe empty), or None to drop it. Jobs in 'received' need processing
        again; the service re-queues them. The adopted jobs, (job id, facts), are left in
        :attr:`adopted` for the service to announce (logs, the object-received hook).
        """
        stats = {"partial_removed": 0, "orphans_adopted": 0, "orphans_removed": 0,
                 "reprocessed_after_reboot": self._outputs_of_this_boot()}
        known = {row[0] for row in self._conn().execute("SELECT path FROM jobs")}
        for sub in sorted(self.incoming.iterdir()) if self.incoming.exists() else []:
            if not sub.is_dir():
                continue
            source_type, _, source = sub.name.partition(".")
            for f in sorted(sub.iterdir()):
                rel = str(f.relative_to(self.root))
                if f.name.endswith(".part"):
                    f.unlink(missing_ok=True)
                    stats["partial_removed"] += 1
                elif rel not in known:
                    facts = adopt(source_type, f)
                    if facts is not None:
                        fsync_file(f)
                        job_facts = TransportFacts(source=source, source_type=source_type,
                                                   received_at=f.stat().st_mtime, **facts)
                        self.adopted.append((self.record(f, job_facts), job_facts))
                        stats["orphans_adopted"] += 1
                    else:
                        f.unlink(missing_ok=True)
                        stats["orphans_removed"] += 1
        for tmp in self.out.rglob("*.part") if self.out.exists() else []:
            tmp.unlink(missing_ok=True)
        return stats

    @property
    def sync_outputs(self) -> bool:
        """Whether processed outputs must be fsync'd: unless this boot is the one recorded
        (by :meth:`recover`) as writing them unsynced."""
        if self._sync_outputs is None:
            current = boot_id()
            row = self._conn().execute("SELECT value FROM meta WHERE key='outputs_boot'").fetchone()
            self._sync_outputs = current is None or row is None or row[0] != current
        return self._sync_outputs

    def _outputs_of_this_boot(self) -> int:
        """After another boot, put the jobs whose processed outputs were not all delivered
        back to 'received' (those outputs were not fsync'd); record this boot, durably, as
        the one writing outputs from now on. Returns the jobs put back."""
        current = boot_id()
        if current is None:
            return 0
        conn = self._conn()
        row = conn.execute("SELECT value FROM meta WHERE key='outputs_boot'").fetchone()
        if row is not None and row[0] == current:
            return 0
        stale: list[str] = []
        jobs: list = []
        conn.execute("PRAGMA synchronous=FULL")  # this commit reaches the disk before any unsynced output
        try:
            with self._tx() as db:
                if row is not None:
                    jobs = db.execute(
                        "SELECT DISTINCT j.id, j.path FROM jobs j JOIN deliveries d ON d.job_id = j.id"
                        " WHERE j.state='routed' AND d.state='pending' AND d.path LIKE 'out/%'").fetchall()
                now = time.time()
                for job in jobs:
                    stale += [r[0] for r in db.execute(
                        "SELECT DISTINCT path FROM deliveries WHERE job_id=? AND state='pending' AND path LIKE 'out/%'",
                        (job["id"],))]
                    db.execute("DELETE FROM deliveries WHERE job_id=? AND state='pending'", (job["id"],))
                    try:
                        size = (self.root / job["path"]).stat().st_size
                    except OSError:
                        size = 0
                    db.execute("UPDATE jobs SET state='received', size=?, updated_at=? WHERE id=?",
                               (size, now, job["id"]))
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('outputs_boot', ?)", (current,))
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")
        for rel in stale:
            (self.root / rel).unlink(missing_ok=True)
            header_path(self.root / rel).unlink(missing_ok=True)
        if jobs:
            self._used = conn.execute("SELECT COALESCE(SUM(size), 0) FROM jobs").fetchone()[0]
            _log.warning("the OS restarted since processed objects were written: they are processed again "
                         "from the received files", jobs=len(jobs))
        self._sync_outputs = False
        return len(jobs)

    # -- processing ----------------------------------------------------------------------
    def _job(self, row) -> Job:
        facts = TransportFacts(
            source=row["source"], source_type=row["source_type"], calling_ae=row["calling_ae"],
            called_ae=row["called_ae"], calling_host=row["calling_host"], received_at=row["received_at"],
        )
        return Job(row["id"], self.root / row["path"], row["size"], facts, row["state"])

    def get_job(self, job_id: int) -> Job | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def received_jobs(self, limit: int = 10000) -> list[int]:
        rows = self._conn().execute(
            "SELECT id FROM jobs WHERE state='received' ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [r[0] for r in rows]

    def out_path(self, job_id: int, route: str, suffix: str = ".dcm") -> Path:
        # One flat folder: writing a processed object adds one entry to a folder that
        # exists, so making it durable costs one folder fsync, not two plus a mkdir.
        return self.out / f"{job_id}.{_safe(route)}{suffix}"

    def route_job(self, job_id: int, deliveries: Iterable[tuple[str, str, Path]],
                  uid_hash: str | None, extra_bytes: int = 0) -> None:
        """Record the deliveries (route, destination, file) of a processed job, atomically."""
        now = time.time()
        with self._tx() as db:
            # a job processed again (after a reboot) keeps what was delivered or quarantined
            settled = {(r[0], r[1]) for r in db.execute(
                "SELECT route, destination FROM deliveries WHERE job_id=? AND state!='pending'", (job_id,))}
            for route, dest, path in deliveries:
                if (route, dest) in settled:
                    continue
                db.execute(
                    "INSERT INTO deliveries (job_id, route, destination, path, state, next_attempt_at,"
                    " created_at) VALUES (?,?,?,?, 'pending', ?, ?)",
                    (job_id, route, dest, str(Path(path).relative_to(self.root)), now, now),
                )
            db.execute(
                "UPDATE jobs SET state='routed', uid_hash=?, size=size+?, updated_at=? WHERE id=?",
                (uid_hash, extra_bytes, now, job_id),
            )
            if settled:
                self._settle(db, job_id, now)
        with self._lock:
            self._used += extra_bytes
        if extra_bytes and self.on_grew is not None:
            self.on_grew(extra_bytes)

    def add_used(self, nbytes: int) -> None:
        """Bytes another process added to the spool."""
        with self._lock:
            self._used += nbytes

    # -- delivery ----------------------------------------------------------------------
    def next_delivery(self, destination: str, exclude: set[int] = frozenset(),
                      due_by: float | None = None) -> Delivery | None:
        """The pending delivery for ``destination`` of the earliest received job, skipping
        ``exclude``: objects go out in order of arrival, even when parallel processing
        workers routed them in another order. With ``due_by``, only deliveries whose next
        attempt is due by then: one waiting for its own retry does not hold up the rest."""
        due = "" if due_by is None else " AND d.next_attempt_at <= ?"
        rows = self._conn().execute(
            "SELECT d.*, j.received_at FROM deliveries d JOIN jobs j ON j.id = d.job_id"
            f" WHERE d.destination=? AND d.state='pending'{due} ORDER BY d.job_id, d.id LIMIT ?",
            (destination, *(() if due_by is None else (due_by,)), len(exclude) + 1),
        ).fetchall()
        for row in rows:
            if row["id"] not in exclude:
                return Delivery(row["id"], row["job_id"], row["route"], row["destination"],
                                self.root / row["path"], row["attempts"], row["next_attempt_at"],
                                row["received_at"])
        return None

    def next_attempt_at(self, destination: str, exclude: set[int] = frozenset()) -> float | None:
        """When the soonest pending delivery for ``destination`` (not in ``exclude``) is due."""
        skip = f" AND id NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        row = self._conn().execute(
            f"SELECT MIN(next_attempt_at) FROM deliveries WHERE destination=? AND state='pending'{skip}",
            (destination, *exclude)).fetchone()
        return row[0]

    def delivered(self, delivery_id: int) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state='delivered', delivered_at=?, attempts=attempts+1,"
                       " last_error=NULL WHERE id=?", (now, delivery_id))
            self._settle_job(db, delivery_id, now)

    def delivery_failed(self, delivery_id: int, error: str, retry_at: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE deliveries SET attempts=attempts+1, last_error=?, next_attempt_at=?"
                       " WHERE id=?", (error, retry_at, delivery_id))

    def _settle_job(self, db, delivery_id: int, now: float) -> None:
        job_id = db.execute("SELECT job_id FROM deliveries WHERE id=?", (delivery_id,)).fetchone()[0]
        self._settle(db, job_id, now)

    def _settle(self, db, job_id: int, now: float) -> None:
        states = {r[0] for r in db.execute("SELECT state FROM deliveries WHERE job_id=?", (job_id,))}
        if "pending" in states:
            state = "routed"
        elif "quarantined" in states:
            state = "quarantined"
        else:
            state = "done"
        db.execute("UPDATE jobs SET state=?, updated_at=?, finished_at=? WHERE id=?",
                   (state, now, now if state == "done" else None, job_id))

    # -- quarantine --------------------------------------------------------------------
    def quarantine(self, job_id: int, reason: str, place: str, delivery_id: int | None = None) -> int:
        """Hold a job (or one of its deliveries) with a reason; return the quarantine id."""
        now = time.time()
        with self._tx() as db:
            if delivery_id is None:
                path = db.execute("SELECT path FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            else:
                path = db.execute("SELECT path FROM deliveries WHERE id=?", (delivery_id,)).fetchone()[0]
                if path.startswith("out/") and (self.root / path).exists():
                    fsync_file(self.root / path)  # kept for the admin: durable now (outputs are not, by default)
            qid = db.execute(
                "INSERT INTO quarantine (job_id, delivery_id, reason, place, created_at) VALUES (?,?,?,?,?)",
                (job_id, delivery_id, reason, place, now),
            ).lastrowid
            if delivery_id is None:
                db.execute("UPDATE jobs SET state='quarantined', updated_at=? WHERE id=?", (now, job_id))
            else:
                db.execute("UPDATE deliveries SET state='quarantined', attempts=attempts+1, last_error=?"
                           " WHERE id=?", (reason, delivery_id))
                self._settle_job(db, delivery_id, now)
        self._expose_quarantined(qid, self.root / path, {
            "id": qid, "job": job_id, "delivery": delivery_id, "reason": reason,
            "place": place, "quarantined_at": now,
        })
        return qid

    def _expose_quarantined(self, qid: int, path: Path, record: dict) -> None:
        """The quarantine folder: a link to the object and a JSON record beside it."""
        link = self.quarantine_dir / f"{qid}.dcm"
        try:
            if path.exists() and not link.exists():
                os.link(path, link)
        except OSError:
            pass  # the DB record is the truth; the folder is a convenience
        (self.quarantine_dir / f"{qid}.json").write_text(json.dumps(record, indent=2) + "\n")

    def quarantine_entries(self, include_released: bool = False) -> list[dict]:
        sql = ("SELECT q.*, d.route, d.destination, d.attempts, j.source, j.size FROM quarantine q"
               " LEFT JOIN deliveries d ON d.id = q.delivery_id LEFT JOIN jobs j ON j.id = q.job_id")
        if not include_released:
            sql += " WHERE q.released_at IS NULL"
        return [dict(r) for r in self._conn().execute(sql + " ORDER BY q.id")]

    def quarantine_entry(self, qid: int) -> dict | None:
        row = self._conn().execute(
            "SELECT q.*, d.route, d.destination, d.attempts, d.last_error, j.source, j.source_type,"
            " j.calling_ae, j.called_ae, j.calling_host, j.received_at, j.size, j.path AS job_path"
            " FROM quarantine q LEFT JOIN deliveries d ON d.id = q.delivery_id"
            " LEFT JOIN jobs j ON j.id = q.job_id WHERE q.id=?", (qid,)).fetchone()
        return dict(row) if row else None

    def release(self, qid: int) -> str:
        """Put a quarantined item back in flow. Returns what was released ('job'/'delivery')."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM quarantine WHERE id=?", (qid,)).fetchone()
            if row is None:
                raise KeyError(f"no quarantine entry {qid}")
            if row["released_at"] is not None:
                raise ValueError(f"quarantine entry {qid} was already released")
            db.execute("UPDATE quarantine SET released_at=? WHERE id=?", (now, qid))
            if row["delivery_id"] is None:
                db.execute("UPDATE jobs SET state='received', updated_at=? WHERE id=?", (now, row["job_id"]))
                what = "job"
            else:
                db.execute("UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=?,"
                           " last_error=NULL WHERE id=?", (now, row["delivery_id"]))
                db.execute("UPDATE jobs SET state='routed', updated_at=?, finished_at=NULL WHERE id=?",
                           (now, row["job_id"]))
                what = "delivery"
        for suffix in (".dcm", ".json"):
            (self.quarantine_dir / f"{qid}{suffix}").unlink(missing_ok=True)
        return what

    # -- housekeeping --------------------------------------------------------------------
    def cleanup(self, retention: float, now: float | None = None) -> int:
        """Delete the files and rows of jobs delivered more than ``retention`` seconds ago."""
        now = time.time() if now is None else now
        rows = self._conn().execute(
            "SELECT id, path, size FROM jobs WHERE state='done' AND finished_at < ? LIMIT 1000",
            (now - retention,),
        ).fetchall()
        if not rows:
            return 0
        return self._remove_jobs(rows)

    def _remove_jobs(self, rows) -> int:
        """Delete the files and rows of the given done jobs (rows with id, path, size)."""
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        outputs = [r[0] for r in self._conn().execute(
            f"SELECT DISTINCT path FROM deliveries WHERE job_id IN ({marks}) AND path LIKE 'out/%'", ids)]
        for rel in [r["path"] for r in rows] + outputs:
            (self.root / rel).unlink(missing_ok=True)
            if rel.endswith(SEALED_SUFFIX):
                header_path(self.root / rel).unlink(missing_ok=True)
        for job_id in ids:  # the earlier layout: out/<job>/<route>.dcm
            if (self.out / str(job_id)).is_dir():
                shutil.rmtree(self.out / str(job_id), ignore_errors=True)
        with self._tx() as db:
            db.execute(f"DELETE FROM deliveries WHERE job_id IN ({marks})", ids)
            db.execute(f"DELETE FROM quarantine WHERE job_id IN ({marks})", ids)
            db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
        with self._lock:
            self._used -= sum(r["size"] for r in rows)
        return len(rows)

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict:
        db = self._conn()
        now = time.time()
        jobs = {r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        dests: dict[str, dict] = {}
        for r in db.execute("SELECT destination, state, COUNT(*), MIN(created_at) FROM deliveries"
                            " GROUP BY destination, state"):
            d = dests.setdefault(r[0], {"pending": 0, "delivered": 0, "quarantined": 0})
            d[r[1]] = r[2]
            if r[1] == "pending":
                d["oldest_pending_age_s"] = round(now - r[3], 3)
        for r in db.execute("SELECT destination, MAX(attempts), MIN(next_attempt_at) FROM deliveries"
                            " WHERE state='pending' GROUP BY destination"):
            dests[r[0]]["max_attempts_pending"] = r[1]
        oldest = db.execute(
            "SELECT MIN(received_at) FROM jobs WHERE state IN ('received','routed')").fetchone()[0]
        q = db.execute("SELECT COUNT(*) FROM quarantine WHERE released_at IS NULL").fetchone()[0]
        qbytes = db.execute(
            "SELECT COALESCE(SUM(j.size),0) FROM quarantine q JOIN jobs j ON j.id=q.job_id"
            " WHERE q.released_at IS NULL").fetchone()[0]
        return {
            "spool": str(self.root),
            "spool_bytes": self._used,
            "spool_limit_bytes": self.max_size,
            "jobs": {s: jobs.get(s, 0) for s in ("received", "routed", "done", "quarantined")},
            "destinations": dests,
            "oldest_pending_age_s": round(now - oldest, 3) if oldest else None,
            "quarantine": {"entries": q, "bytes": qbytes},
        }

    def queue_depths(self) -> tuple[int, dict[str, int]]:
        db = self._conn()
        received = db.execute("SELECT COUNT(*) FROM jobs WHERE state='received'").fetchone()[0]
        pending = {r[0]: r[1] for r in db.execute(
            "SELECT destination, COUNT(*) FROM deliveries WHERE state='pending' GROUP BY destination")}
        return received, pending
