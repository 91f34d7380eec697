"""The durable record of every job: SQLite (WAL) in ``state_dir/jobs.sqlite3``.

A job is what a person dropped (a pair, a folder, a sidecar); it has one run per result
(each content x style x sweep combination). Their states are ``JobStatus`` and ``RunStatus``,
stored as their string values. Each thread opens its own Store. Records leave it typed: the
parameters of a run are ``StyleParams``, validated once, here.
"""

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..engine import StyleParams
from ..results.report import ACTIVE_JOBS, ACTIVE_RUNS, UNFINISHED_JOBS, JobStatus, RunStatus
from .memory import Need, Sample

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    files TEXT NOT NULL,            -- JSON: inbox-relative paths it owns
    hashes TEXT NOT NULL DEFAULT '{}',  -- JSON: path -> sha256
    sidecar TEXT,
    spec TEXT NOT NULL DEFAULT '{}',    -- JSON: the inbox's submission (contents, styles, problem)
    outbox_name TEXT,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    label TEXT NOT NULL,
    status TEXT NOT NULL,
    content TEXT NOT NULL,
    styles TEXT NOT NULL,           -- JSON list
    params TEXT NOT NULL,           -- JSON: StyleParams fields that were set
    varying TEXT NOT NULL DEFAULT '{}',  -- JSON: the sweep values of this run
    attempts INTEGER NOT NULL DEFAULT 0,
    iteration INTEGER NOT NULL DEFAULT 0,
    total_iterations INTEGER NOT NULL DEFAULT 0,
    loss REAL,
    started REAL,
    finished REAL,
    seconds REAL,
    peak_bytes INTEGER,
    error TEXT,
    content_width INTEGER NOT NULL DEFAULT 0,
    content_height INTEGER NOT NULL DEFAULT 0,
    alone INTEGER NOT NULL DEFAULT 0,   -- retried after running out of memory: runs with nothing beside it
    warning TEXT,                       -- e.g. how the too_big policy changed its parameters
    UNIQUE (job_id, idx)
);
CREATE TABLE IF NOT EXISTS memory_samples (  -- measured runs and probes: what the memory model learns from
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    backbone TEXT NOT NULL,
    exact_bytes INTEGER NOT NULL,
    activation_bytes INTEGER NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    peak_bytes INTEGER NOT NULL,
    seconds_per_iteration REAL NOT NULL,
    source TEXT NOT NULL,               -- probe | run
    created REAL NOT NULL,
    work_bytes INTEGER                  -- tiled runs: activations computed per iteration; NULL: activation_bytes
);
CREATE TABLE IF NOT EXISTS control (     -- the daemon's switches, set by `nst-batch pause` and `resume`
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (    -- `nst-batch cancel` and `retry`: done by the daemon, answered here
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,               -- Action
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    run_id INTEGER,                     -- cancel of one run; NULL: the whole job
    payload TEXT NOT NULL DEFAULT '{}', -- JSON: a retry's parameter overrides
    created REAL NOT NULL,
    handled REAL,                       -- NULL until the daemon has acted
    answer TEXT                         -- what it did, in one line
);
CREATE TABLE IF NOT EXISTS devices (     -- the ray executor's devices, as it last saw them (for `nst-batch status`)
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,                -- DeviceState
    budget_bytes INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (node, name)
);
CREATE INDEX IF NOT EXISTS requests_pending ON requests(handled);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_by_job_status ON runs(job_id, status);  -- "has this job runs left?" after every run
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_by_updated ON jobs(updated);  -- jobs ended since: notifications, metrics  -- the intake looks for claiming jobs every tick
"""


_ADDED_COLUMNS = (
    ("memory_samples", "work_bytes", "INTEGER"),
    ("jobs", "place", "TEXT"),  # where a failed or cancelled job's inputs went, relative to state_dir
    # Where a run last started under the ray executor (its checkpoint stays on that node); NULL: never
    # placed there (the threads executor's one device).
    ("runs", "node", "TEXT"),
    ("runs", "device", "TEXT"),
    ("requests", "refused", "INTEGER NOT NULL DEFAULT 0"),  # 1: it changed nothing (the command line exits 2)
)


class Pause(str, Enum):
    """Whether runs start: ``nst-batch pause`` (running runs finish), ``pause --now`` (they
    checkpoint and wait), ``resume``. Kept in the store, so a restart keeps it."""

    OFF = "off"
    AFTER_RUNS = "after_runs"
    NOW = "now"

    def __str__(self) -> str:
        return self.value


class Action(str, Enum):
    """What a request asks the daemon to do."""

    CANCEL = "cancel"
    RETRY = "retry"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Request:
    """A control request (stage: asked by the command line, until the daemon has answered it)."""

    id: int
    action: Action
    job_id: int
    run_id: int | None
    payload: dict[str, Any]
    created: float
    handled: float | None
    answer: str | None
    refused: bool = False


@dataclass(frozen=True)
class JobRecord:
    """A job as the store has it: what it owns and how far it got."""

    id: int
    name: str
    kind: str
    status: JobStatus
    priority: int
    files: tuple[str, ...]
    hashes: dict[str, str]
    sidecar: str | None
    spec: dict[str, Any]
    outbox_name: str | None
    error: str | None
    created: float
    updated: float
    place: str | None = None  # failed/NAME or cancelled/NAME, once its inputs are there

    @property
    def label(self) -> str:
        return f"job-{self.id}"


@dataclass(frozen=True)
class RunRecord:
    """A run as the store has it (stage: from queued to its end), with its attempts and progress."""

    id: int
    job_id: int
    idx: int
    label: str
    status: RunStatus
    content: str
    styles: tuple[str, ...]
    params: StyleParams  # validated once, here: a field an older record lacks keeps its old meaning
    varying: dict[str, Any]
    attempts: int
    iteration: int
    total_iterations: int
    loss: float | None
    started: float | None
    finished: float | None
    seconds: float | None
    peak_bytes: int | None  # the device's peak while it ran; None in a batch or beside other work
    error: str | None
    content_width: int
    content_height: int
    alone: bool
    warning: str | None
    priority: int = 0  # the job's, for the scheduler
    node: str | None = None  # the Ray node it last started on, where its checkpoint is; None: this machine's
    device: str | None = None  # the device on that node

    @property
    def content_size(self) -> tuple[int, int]:
        return self.content_width, self.content_height


@dataclass(frozen=True)
class RunSpec:
    """A run to create: one result of a job (stage: planned by the intake, not yet stored)."""

    label: str
    content: str
    styles: tuple[str, ...]
    params: StyleParams
    varying: dict[str, Any]
    content_size: tuple[int, int] = (0, 0)  # (width, height) of the content image


def _job(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    data["status"] = JobStatus(data["status"])
    data["files"] = tuple(json.loads(data["files"]))
    data["hashes"] = json.loads(data["hashes"])
    data["spec"] = json.loads(data["spec"])
    return JobRecord(**data)


def _request(row: sqlite3.Row) -> Request:
    data = dict(row)
    data["action"] = Action(data["action"])
    data["payload"] = json.loads(data["payload"])
    data["refused"] = bool(data["refused"])
    return Request(**data)


class DeviceState(str, Enum):
    STARTING = "starting"  # its actor waits for Ray to give it a device, or loads the network
    READY = "ready"


@dataclass(frozen=True)
class DeviceRecord:
    """One device of the ray executor, for ``nst-batch status``."""

    node: str
    name: str
    state: DeviceState
    budget_bytes: int = 0


def _run(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    data["status"] = RunStatus(data["status"])
    data["styles"] = tuple(json.loads(data["styles"]))
    data["params"] = StyleParams.from_stored(json.loads(data["params"]))
    data["varying"] = json.loads(data["varying"])
    data["alone"] = bool(data["alone"])
    return RunRecord(**data)


class Store:
    def __init__(self, state_dir: Path):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "jobs.sqlite3"
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        """Columns added since a database was created: CREATE TABLE IF NOT EXISTS leaves an old table as it was."""
        for table, column, kind in _ADDED_COLUMNS:
            if column not in {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- claiming -------------------------------------------------------------------------

    def begin_claim(self, name: str, kind: str, files: Iterable[str], sidecar: str | None, spec: dict) -> int:
        now = time.time()
        cursor = self.db.execute(
            "INSERT INTO jobs (name, kind, status, files, sidecar, spec, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, kind, JobStatus.CLAIMING, json.dumps(list(files)), sidecar, json.dumps(spec), now, now),
        )
        return int(cursor.lastrowid)

    def queue(self, job_id: int, runs: list[RunSpec], priority: int, outbox_name: str, hashes: dict[str, str]) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM runs WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO runs (job_id, idx, label, status, content, styles, params, varying, content_width, "
                "content_height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (job_id, i, r.label, RunStatus.QUEUED, r.content, json.dumps(list(r.styles)), json.dumps(r.params.stored()),
                     json.dumps(r.varying), *r.content_size)
                    for i, r in enumerate(runs)
                ],
            )
            db.execute(
                "UPDATE jobs SET status=?, priority=?, outbox_name=?, hashes=?, updated=? WHERE id=?",
                (JobStatus.QUEUED, priority, outbox_name, json.dumps(hashes), time.time(), job_id),
            )

    def record_error(self, job_id: int, error: str) -> None:
        """Why a job is failing, before its files move: a claim interrupted after this is failed
        with this reason."""
        self.db.execute("UPDATE jobs SET error=?, updated=? WHERE id=?", (error, time.time(), job_id))

    def set_job_status(self, job_id: int, status: JobStatus, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE jobs SET status=?, error=COALESCE(?, error), updated=? WHERE id=?",
            (status, error, time.time(), job_id),
        )

    # --- recovery -------------------------------------------------------------------------

    def requeue_interrupted(self) -> int:
        """After a crash or stop: what was running is queued again (its checkpoint survives)."""
        with self._transaction() as db:
            # A job being cancelled when the daemon died: what was running is cancelled, not resumed.
            db.execute(
                "UPDATE runs SET status=?, finished=? WHERE status IN (?, ?) AND job_id IN (SELECT id FROM jobs WHERE status=?)",
                (RunStatus.CANCELLED, time.time(), *ACTIVE_RUNS, JobStatus.CANCELLING),
            )
            count = db.execute("UPDATE runs SET status=? WHERE status=?", (RunStatus.QUEUED, RunStatus.RUNNING)).rowcount
            db.execute("UPDATE jobs SET status=? WHERE status=?", (JobStatus.QUEUED, JobStatus.RUNNING))
        return count

    def set_place(self, job_id: int, place: str | None) -> None:
        """Where the job's inputs are now (``failed/NAME``, ``cancelled/NAME``), relative to state_dir."""
        self.db.execute("UPDATE jobs SET place=? WHERE id=?", (place, job_id))

    def jobs(self, *statuses: JobStatus) -> list[JobRecord]:
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY id", statuses)
        return [_job(r) for r in rows]

    def job(self, job_id: int) -> JobRecord:
        return _job(self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())

    def find_job(self, job_id: int) -> JobRecord | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def jobs_named(self, name: str) -> list[JobRecord]:
        """Jobs of this name, or published under it (the outbox folder's name)."""
        rows = self.db.execute("SELECT * FROM jobs WHERE name=? OR outbox_name=? ORDER BY id", (name, name))
        return [_job(r) for r in rows]

    def find_run(self, run_id: int) -> RunRecord | None:
        row = self.db.execute(
            "SELECT runs.*, jobs.priority AS priority FROM runs JOIN jobs ON jobs.id = runs.job_id WHERE runs.id=?",
            (run_id,),
        ).fetchone()
        return None if row is None else _run(row)

    # --- control: pause, priority, cancel, retry ----------------------------------------------

    def pause(self) -> Pause:
        value = self.control("pause")
        return Pause(value) if value in Pause._value2member_map_ else Pause.OFF

    def set_pause(self, pause: Pause) -> None:
        self.set_control("pause", pause.value)

    def set_devices(self, devices: list["DeviceRecord"]) -> None:
        """The executor's devices as they are now (the threads executor records none)."""
        now = time.time()
        with self._transaction() as db:
            db.execute("DELETE FROM devices")
            db.executemany(
                "INSERT INTO devices (node, name, state, budget_bytes, updated) VALUES (?, ?, ?, ?, ?)",
                [(d.node, d.name, d.state, d.budget_bytes, now) for d in devices],
            )

    def devices(self) -> list["DeviceRecord"]:
        rows = self.db.execute("SELECT * FROM devices ORDER BY node, name")
        return [DeviceRecord(r["node"], r["name"], DeviceState(r["state"]), r["budget_bytes"]) for r in rows]

    def control(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM control WHERE key=?", (key,)).fetchone()
        return None if row is None else row["value"]

    def set_control(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO control (key, value, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
            (key, value, time.time()),
        )

    def set_priority(self, job_id: int, priority: int) -> None:
        self.db.execute("UPDATE jobs SET priority=?, updated=? WHERE id=?", (priority, time.time(), job_id))

    def ask(self, action: Action, job_id: int, run_id: int | None = None, payload: dict | None = None) -> int:
        cursor = self.db.execute(
            "INSERT INTO requests (action, job_id, run_id, payload, created) VALUES (?, ?, ?, ?, ?)",
            (action.value, job_id, run_id, json.dumps(payload or {}), time.time()),
        )
        return int(cursor.lastrowid)

    def pending_requests(self) -> list[Request]:
        return [_request(r) for r in self.db.execute("SELECT * FROM requests WHERE handled IS NULL ORDER BY id")]

    def request(self, request_id: int) -> Request:
        return _request(self.db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone())

    def answer(self, request_id: int, answer: str, refused: bool = False) -> None:
        self.db.execute(
            "UPDATE requests SET handled=?, answer=?, refused=? WHERE id=?", (time.time(), answer, int(refused), request_id)
        )

    def cancel_job(self, job_id: int) -> bool:
        """The job is cancelling, if it is still queued, running or cancelling, with a run not ended
        (whether it was); its queued runs are cancelled at once. A running one is cancelled when
        its worker returns (``cancel_run``)."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status=?, updated=? WHERE id=? AND status IN (?, ?, ?) "
                "AND EXISTS (SELECT 1 FROM runs WHERE job_id=jobs.id AND status IN (?, ?))",
                (JobStatus.CANCELLING, time.time(), job_id, *UNFINISHED_JOBS, *ACTIVE_RUNS),
            ).rowcount
            if not changed:
                return False
            db.execute(
                "UPDATE runs SET status=?, finished=? WHERE job_id=? AND status=?",
                (RunStatus.CANCELLED, time.time(), job_id, RunStatus.QUEUED),
            )
        return True

    def cancel_run(self, run_id: int) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, finished=? WHERE id=?", (RunStatus.CANCELLED, time.time(), run_id)
        )

    def reclaim(self, job_id: int, overrides: dict[str, Any]) -> None:
        """A failed or cancelled job, its inputs back in ``jobs/ID``, is claimed again: the intake
        plans its runs afresh (new attempts), with ``overrides`` over its parameters."""
        job = self.job(job_id)
        spec = {**job.spec, "overrides": {**job.spec.get("overrides", {}), **overrides}, "retried": True}
        self.db.execute(
            "UPDATE jobs SET status=?, error=NULL, place=NULL, spec=?, updated=? WHERE id=?",
            (JobStatus.CLAIMING, json.dumps(spec), time.time(), job_id),
        )

    # --- runs -----------------------------------------------------------------------------

    def runs(self, job_id: int) -> list[RunRecord]:
        rows = self.db.execute("SELECT * FROM runs WHERE job_id=? ORDER BY idx", (job_id,))
        return [_run(r) for r in rows]

    def run(self, run_id: int) -> RunRecord:
        row = self.db.execute(
            "SELECT runs.*, jobs.priority AS priority FROM runs JOIN jobs ON jobs.id = runs.job_id WHERE runs.id=?",
            (run_id,),
        ).fetchone()
        return _run(row)

    def queued_runs(self, limit: int | None = None) -> list[RunRecord]:
        """Runs waiting, with their job's priority, in queue order (``scheduler.queue_order``): the
        first ``limit`` of them, or all."""
        rows = self.db.execute(
            "SELECT runs.*, jobs.priority AS priority FROM runs JOIN jobs ON jobs.id = runs.job_id "
            "WHERE runs.status=? AND jobs.status IN (?, ?) "
            "ORDER BY jobs.priority DESC, runs.job_id, runs.idx LIMIT ?",
            (RunStatus.QUEUED, *ACTIVE_JOBS, -1 if limit is None else limit),
        )
        return [_run(r) for r in rows]

    def has_active_runs(self, job_id: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM runs WHERE job_id=? AND status IN (?, ?) LIMIT 1", (job_id, *ACTIVE_RUNS)
        ).fetchone()
        return row is not None

    def start_run(self, run: RunRecord, node: str | None = None, device: str | None = None) -> None:
        """The run starts, counting an attempt; on ``node`` and ``device`` when placed across devices
        (without them, where it last ran is kept)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status=?, attempts=attempts+1, started=COALESCE(started, ?), "
                "node=COALESCE(?, node), device=COALESCE(?, device) WHERE id=?",
                (RunStatus.RUNNING, now, node, device, run.id),
            )
            db.execute("UPDATE jobs SET status=?, updated=? WHERE id=?", (JobStatus.RUNNING, now, run.job_id))

    def progress(self, run_id: int, iteration: int, total_iterations: int, loss: float) -> None:
        self.db.execute(
            "UPDATE runs SET iteration=?, total_iterations=?, loss=? WHERE id=?", (iteration, total_iterations, loss, run_id)
        )

    def finish_run(self, run_id: int, seconds: float, peak_bytes: int | None) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, finished=?, seconds=?, peak_bytes=?, error=NULL WHERE id=?",
            (RunStatus.DONE, time.time(), seconds, peak_bytes, run_id),
        )

    def fail_run(self, run_id: int, error: str, retry: bool) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, error=?, finished=? WHERE id=?",
            (RunStatus.QUEUED if retry else RunStatus.FAILED, error, None if retry else time.time(), run_id),
        )

    def requeue_run(self, run_id: int, error: str | None = None) -> None:
        """Back to the queue without counting an attempt (the daemon is stopping, the disk is full)."""
        self.db.execute(
            "UPDATE runs SET status=?, attempts=MAX(attempts-1, 0), error=COALESCE(?, error) WHERE id=?",
            (RunStatus.QUEUED, error, run_id),
        )

    def change_params(self, run_id: int, params: StyleParams, warning: str | None) -> None:
        """New parameters for a run (the too_big policy's, a retry's), and the warning that says why."""
        self.db.execute("UPDATE runs SET params=?, warning=? WHERE id=?", (json.dumps(params.stored()), warning, run_id))

    def retry_alone(self, run_id: int, error: str, retry: bool, refund_attempt: bool = False) -> None:
        """After running out of memory: queued again (if attempts remain) to run with nothing beside
        it. ``refund_attempt`` when the run's batch, not the run, was too big."""
        self.db.execute(
            "UPDATE runs SET status=?, error=?, alone=1, finished=?, attempts=MAX(attempts-?, 0) WHERE id=?",
            (RunStatus.QUEUED if retry else RunStatus.FAILED, error, None if retry else time.time(), int(refund_attempt), run_id),
        )

    # --- what the memory model learns from ---------------------------------------------------

    def add_sample(self, device: str, backbone: str, sample: Sample, source: str) -> None:
        need = sample.need
        self.db.execute(
            "INSERT INTO memory_samples (device, backbone, exact_bytes, activation_bytes, work_bytes, height, width, "
            "peak_bytes, seconds_per_iteration, source, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (device, backbone, need.exact_bytes, need.activation_bytes, need.work_bytes, need.height, need.width,
             sample.peak_bytes, sample.seconds_per_iteration, source, time.time()),
        )

    def samples(self, device: str, backbone: str, limit: int = 200) -> list[Sample]:
        """The most recent samples measured on this kind of device with this backbone."""
        rows = self.db.execute(
            "SELECT * FROM memory_samples WHERE device=? AND backbone=? ORDER BY id DESC LIMIT ?", (device, backbone, limit)
        )
        return [
            Sample(Need(r["exact_bytes"], r["activation_bytes"], r["height"], r["width"], r["work_bytes"]),
                   r["peak_bytes"], r["seconds_per_iteration"])
            for r in rows
        ]

    # --- reporting ------------------------------------------------------------------------

    def counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each state (states without one left out)."""
        rows = self.db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {JobStatus(row["status"]): row["n"] for row in rows}

    def run_counts(self) -> dict[RunStatus, int]:
        rows = self.db.execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
        return {RunStatus(row["status"]): row["n"] for row in rows}

    def running_runs(self) -> list[RunRecord]:
        rows = self.db.execute(
            "SELECT runs.*, jobs.priority AS priority FROM runs JOIN jobs ON jobs.id=runs.job_id WHERE runs.status=?",
            (RunStatus.RUNNING,),
        )
        return [_run(r) for r in rows]

    def recent_failures(self, limit: int = 5, status: JobStatus = JobStatus.FAILED) -> list[JobRecord]:
        rows = self.db.execute("SELECT * FROM jobs WHERE status=? ORDER BY updated DESC LIMIT ?", (status, limit))
        return [_job(r) for r in rows]

    def oldest_waiting(self) -> float | None:
        """When the oldest job still waiting for a run to start was created (epoch seconds)."""
        row = self.db.execute(
            "SELECT MIN(jobs.created) AS t FROM jobs JOIN runs ON runs.job_id = jobs.id "
            "WHERE runs.status=? AND jobs.status IN (?, ?)",
            (RunStatus.QUEUED, *ACTIVE_JOBS),
        ).fetchone()
        return row["t"]

    def ended_since(self, since: float) -> list[JobRecord]:
        """Jobs that ended (done, failed, cancelled) after ``since`` (epoch seconds), in that order."""
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE updated > ? AND status IN (?, ?, ?) ORDER BY updated, id",
            (since, JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED),
        )
        return [_job(r) for r in rows]

    def compute_seconds(self, job_ids: Iterable[int]) -> float:
        """The runs' computing time of these jobs."""
        ids = list(job_ids)
        total = 0.0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            row = self.db.execute(f"SELECT SUM(seconds) AS s FROM runs WHERE job_id IN ({marks})", chunk).fetchone()
            total += row["s"] or 0.0
        return total

    def queued_jobs(self, limit: int | None = None) -> list[tuple[JobRecord, int]]:
        """Jobs waiting or running, in queue order, each with how many of its runs are left."""
        rows = self.db.execute(
            "SELECT jobs.*, (SELECT COUNT(*) FROM runs WHERE runs.job_id = jobs.id AND runs.status IN (?, ?)) AS runs_left "
            "FROM jobs WHERE status IN (?, ?, ?) ORDER BY priority DESC, id LIMIT ?",
            (*ACTIVE_RUNS, JobStatus.CLAIMING, *ACTIVE_JOBS, -1 if limit is None else limit),
        )
        result = []
        for row in rows:
            data = dict(row)
            left = data.pop("runs_left")
            result.append((_job(data), left))
        return result

    def all_jobs(self) -> list[JobRecord]:
        return [_job(r) for r in self.db.execute("SELECT * FROM jobs ORDER BY id")]
