"""Job and style records in SQLite (the standard library's), in the service's data directory.

The database is the queue: a job is accepted once its row is committed (WAL journal, synchronous=FULL),
and a worker claims the oldest queued jobs by changing their status in one transaction. Nothing about
a job lives only in memory except its live progress (step, loss), so a restart — also after ``kill -9``
— finds every accepted job: finished ones with their results, queued and interrupted ones to run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
UNFINISHED = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the queue's order
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    style_id TEXT,                          -- the stored style it names, if any
    style_sha TEXT NOT NULL,                -- its style image's file: styles/<sha>
    options TEXT NOT NULL,                  -- every Options field, as JSON
    batch_key TEXT,                         -- jobs with equal keys run as one batch; NULL: alone
    height INTEGER NOT NULL,                -- its content image's shape, as uploaded
    width INTEGER NOT NULL,
    total INTEGER NOT NULL,                 -- iterations its plan takes
    step INTEGER NOT NULL DEFAULT 0,
    loss REAL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,    -- runs started (more than one after an interruption)
    owner TEXT                              -- the worker running it (Ray Serve replicas); NULL: this process's
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS styles (
    id TEXT PRIMARY KEY,
    sha TEXT NOT NULL,
    created REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    created: float
    started: float | None
    finished: float | None
    style_id: str | None
    style_sha: str
    options: dict
    batch_key: str | None
    height: int
    width: int
    total: int
    step: int
    loss: float | None
    error: str | None
    attempts: int
    owner: str | None = None  # who claimed it (a replica, with Ray Serve); None in one process


def view(job: Job, progress: dict | None = None) -> dict:
    """A job's record as the API shows it; ``progress`` (step, total, loss, elapsed, eta) while it runs."""
    if progress is None:
        ran = job.finished - job.started if job.finished and job.started else None
        progress = {"step": job.step, "total": job.total, "loss": job.loss, "elapsed": ran, "eta": None}
    return {
        "id": job.id,
        "status": job.status,
        **progress,
        "error": job.error,
        "created": job.created,
        "style_id": job.style_id,
        "attempts": job.attempts,
    }


@dataclass(frozen=True)
class StyleRecord:
    id: str
    sha: str
    created: float
    width: int
    height: int


_JOB_COLUMNS = (
    "id, status, created, started, finished, style_id, style_sha, options, batch_key, height, width, total, step, loss, "
    "error, attempts, owner"
)


def _job(row) -> Job:
    values = list(row)
    values[7] = json.loads(values[7])
    return Job(*values)


class JobStore:
    """The jobs and styles tables; every method is one transaction, safe from any thread.

    ``owner`` arguments are for workers in several processes sharing one store (Ray Serve replicas,
    :mod:`nst_fast.distributed.shared`): a claimed job records its owner, and an owner finishes or
    requeues only jobs that are still its own. In one process, owners are None and never checked.
    """

    owner: str | None = None  # the workers of this process claim as no one in particular

    def __init__(self, path: str | Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a 202 means the job survives a crash
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "owner" not in columns:  # a database from before owners
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self):
        return _Transaction(self._lock, self._db)

    # Jobs.

    def add_job(self, job: Job, max_queued: int | None = None) -> bool:
        """Insert ``job`` (queued); False, and nothing inserted, when ``max_queued`` jobs are queued already."""
        with self._transaction() as db:
            if max_queued is not None:
                (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()
                if queued >= max_queued:
                    return False
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                (
                    job.id,
                    job.status,
                    job.created,
                    job.started,
                    job.finished,
                    job.style_id,
                    job.style_sha,
                    json.dumps(job.options, sort_keys=True),
                    job.batch_key,
                    job.height,
                    job.width,
                    job.total,
                    job.step,
                    job.loss,
                    job.error,
                    job.attempts,
                    job.owner,
                ),
            )
        return True

    def get_job(self, job_id: str) -> Job | None:
        with self._transaction() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def jobs(self, ids: list[str]) -> list[Job]:
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY seq", ids
            ).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs by status (every status present, zero where none)."""
        with self._transaction() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {**dict.fromkeys(STATUSES, 0), **dict(rows)}

    def claim(self, limit: int, owner: str | None = None) -> list[Job]:
        """Mark the oldest queued job running (by ``owner``), with up to ``limit - 1`` more queued jobs of its
        batch key (in queue order); return them, or an empty list when nothing is queued."""
        now = time.time()
        with self._transaction() as db:
            first = db.execute(
                "SELECT id, batch_key FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", (QUEUED,)
            ).fetchone()
            if first is None:
                return []
            ids = [first[0]]
            if first[1] is not None and limit > 1:
                rows = db.execute(
                    "SELECT id FROM jobs WHERE status = ? AND batch_key = ? AND id != ? ORDER BY seq LIMIT ?",
                    (QUEUED, first[1], first[0], limit - 1),
                ).fetchall()
                ids += [r[0] for r in rows]
            marks = ", ".join("?" * len(ids))
            db.execute(
                f"UPDATE jobs SET status = ?, started = ?, step = 0, loss = NULL, attempts = attempts + 1, owner = ? "
                f"WHERE id IN ({marks})",
                (RUNNING, now, owner, *ids),
            )
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({marks}) ORDER BY seq", ids).fetchall()
        return [_job(r) for r in rows]

    def finish(
        self,
        job_id: str,
        status: str,
        error: str | None = None,
        step: int | None = None,
        loss: float | None = None,
        owner: str | None = None,
    ) -> bool:
        """Set an unfinished job's final status; False when it was finished already (cancelled meanwhile),
        or, with ``owner``, when it is not running as that owner's any more."""
        assert status in FINISHED
        mine = "" if owner is None else " AND status = 'running' AND owner = ?"
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = ?, finished = ?, error = ?, step = COALESCE(?, step), loss = COALESCE(?, loss) "
                f"WHERE id = ? AND status IN (?, ?){mine}",
                (status, time.time(), error, step, loss, job_id, *UNFINISHED, *([] if owner is None else [owner])),
            )
            return cursor.rowcount == 1

    def requeue(self, job_ids: list[str], undo_attempt: bool = False, owner: str | None = None) -> int:
        """Put running jobs back in the queue, at their old places (a stopped run starts again);
        ``undo_attempt``: they were claimed but not started; ``owner``: only those still its own."""
        if not job_ids:
            return 0
        mine = "" if owner is None else " AND owner = ?"
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET status = ?, started = NULL, step = 0, loss = NULL, attempts = attempts - ?, "
                f"owner = NULL WHERE status = ? AND id IN ({', '.join('?' * len(job_ids))}){mine}",
                (QUEUED, int(undo_attempt), RUNNING, *job_ids, *([] if owner is None else [owner])),
            )
            return cursor.rowcount

    def requeue_interrupted(self, max_attempts: int, live: set[str] | None = None) -> tuple[list[str], list[str]]:
        """Jobs left running by workers that are gone go back in the queue — at start-up, every running job
        (the last process's); with ``live``, those of owners not in it — except those whose runs were
        interrupted ``max_attempts`` times already (a job that kills the server must not do so forever),
        which fail. Returns the ids (requeued, failed)."""
        with self._transaction() as db:
            rows = db.execute("SELECT id, owner, attempts FROM jobs WHERE status = ?", (RUNNING,)).fetchall()
            gone = [(i, a) for i, owner, a in rows if live is None or owner not in live]
            failed = [i for i, a in gone if a >= max_attempts]
            requeued = [i for i, a in gone if a < max_attempts]
            if failed:
                db.execute(
                    f"UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id IN ({', '.join('?' * len(failed))})",
                    (FAILED, time.time(), f"interrupted {max_attempts} times while running", *failed),
                )
            if requeued:
                db.execute(
                    "UPDATE jobs SET status = ?, started = NULL, step = 0, loss = NULL, owner = NULL "
                    f"WHERE id IN ({', '.join('?' * len(requeued))})",
                    (QUEUED, *requeued),
                )
        return requeued, failed

    def running(self, owner: str | None = None) -> list[Job]:
        """Running jobs (of ``owner``, if given), in queue order."""
        mine = "" if owner is None else " AND owner = ?"
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ?{mine} ORDER BY seq",
                (RUNNING, *([] if owner is None else [owner])),
            ).fetchall()
        return [_job(r) for r in rows]

    def expired(self, before: float) -> list[str]:
        """Finished jobs that finished before ``before`` (a time.time())."""
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE status IN ({', '.join('?' * len(FINISHED))}) AND finished < ?",
                (*FINISHED, before),
            ).fetchall()
        return [r[0] for r in rows]

    def delete_jobs(self, job_ids: list[str]) -> None:
        if job_ids:
            with self._transaction() as db:
                db.execute(f"DELETE FROM jobs WHERE id IN ({', '.join('?' * len(job_ids))})", job_ids)

    def unfinished(self) -> list[Job]:
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN (?, ?) ORDER BY seq", UNFINISHED
            ).fetchall()
        return [_job(r) for r in rows]

    def finished_ids(self) -> set[str]:
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE status IN ({', '.join('?' * len(FINISHED))})", FINISHED
            ).fetchall()
        return {r[0] for r in rows}

    # Styles.

    def add_style(self, style: StyleRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO styles (id, sha, created, width, height) VALUES (?, ?, ?, ?, ?)",
                (style.id, style.sha, style.created, style.width, style.height),
            )

    def get_style(self, style_id: str) -> StyleRecord | None:
        with self._transaction() as db:
            row = db.execute("SELECT id, sha, created, width, height FROM styles WHERE id = ?", (style_id,)).fetchone()
        return None if row is None else StyleRecord(*row)

    def styles(self) -> list[StyleRecord]:
        with self._transaction() as db:
            rows = db.execute("SELECT id, sha, created, width, height FROM styles ORDER BY created").fetchall()
        return [StyleRecord(*r) for r in rows]

    def delete_style(self, style_id: str) -> StyleRecord | None:
        with self._transaction() as db:
            row = db.execute("SELECT id, sha, created, width, height FROM styles WHERE id = ?", (style_id,)).fetchone()
            db.execute("DELETE FROM styles WHERE id = ?", (style_id,))
        return None if row is None else StyleRecord(*row)

    def style_shas_in_use(self) -> set[str]:
        """Style files still needed: a stored style's, or an unfinished job's."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT sha FROM styles UNION SELECT style_sha FROM jobs WHERE status IN (?, ?)", UNFINISHED
            ).fetchall()
        return {r[0] for r in rows}


class _Transaction:
    """The store's lock, and BEGIN … COMMIT (ROLLBACK on an exception) around one method's statements."""

    def __init__(self, lock: threading.Lock, db: sqlite3.Connection):
        self.lock, self.db = lock, db

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self.db.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self.lock.release()
