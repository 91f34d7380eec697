"""The job database: the life of a job and its runs, recovery after a stop, and queue order."""

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from nst_batch.daemon.scheduler import queue_order
from nst_batch.daemon.store import RunSpec, Store
from nst_batch.engine import StyleParams


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "state")
    yield store
    store.close()


def run_spec(label: str, content: str = "c.jpg") -> RunSpec:
    return RunSpec(label, content, ("s.jpg",), StyleParams(iterations=3), {})


def queued_job(store: Store, name: str, runs: int = 1, priority: int = 0) -> int:
    job_id = store.begin_claim(name, "pair", [f"{name}.content.jpg", f"{name}.style.jpg"], None, {"contents": []})
    store.queue(job_id, [run_spec(f"{name}-{i}") for i in range(runs)], priority, name, {"a": "0" * 64})
    return job_id


def test_a_job_goes_from_claiming_to_queued_to_running_to_done(store: Store) -> None:
    files = ["cat.content.jpg", "cat.style.jpg", "cat.yaml"]
    job_id = store.begin_claim("cat", "pair", files, "cat.yaml", {"contents": ["cat.content.jpg"]})
    job = store.job(job_id)
    assert (job.status, job.files, job.sidecar) == ("claiming", tuple(files), "cat.yaml")
    assert job.spec == {"contents": ["cat.content.jpg"]}
    assert store.jobs("claiming") == [job] and store.queued_runs() == []

    store.queue(job_id, [run_spec("cat"), run_spec("cat-2")], 5, "cat", {"cat.yaml": "ab" * 32})
    job = store.job(job_id)
    assert (job.status, job.priority, job.outbox_name, job.hashes) == ("queued", 5, "cat", {"cat.yaml": "ab" * 32})
    queued = store.queued_runs()
    assert [(r.label, r.status, r.idx, r.priority) for r in queued] == [
        ("cat", "queued", 0, 5), ("cat-2", "queued", 1, 5)
    ]
    assert queued[0].params == StyleParams(iterations=3) and queued[0].styles == ("s.jpg",)

    store.start_run(queued[0])
    assert store.job(job_id).status == "running"
    store.progress(queued[0].id, 2, 3, 0.5)
    running = store.running_runs()
    assert [(r.id, r.attempts, r.iteration, r.total_iterations, r.loss) for r in running] == [
        (queued[0].id, 1, 2, 3, 0.5)
    ]
    assert running[0].started is not None

    store.finish_run(queued[0].id, 1.5, None)
    store.start_run(queued[1])
    store.fail_run(queued[1].id, "boom", retry=False)
    runs = store.runs(job_id)
    assert [(r.status, r.seconds, r.error) for r in runs] == [("done", 1.5, None), ("failed", None, "boom")]
    assert runs[1].finished is not None

    store.set_job_status(job_id, "failed", "cat-2: boom")
    assert store.job(job_id).error == "cat-2: boom"
    assert [j.id for j in store.recent_failures()] == [job_id]
    assert store.counts() == {"failed": 1} and store.run_counts() == {"done": 1, "failed": 1}


def test_queueing_again_after_a_crash_mid_claim_does_not_duplicate_runs(store: Store) -> None:
    job_id = store.begin_claim("cat", "pair", ["a"], None, {})
    store.queue(job_id, [run_spec("cat")], 0, "cat", {})
    store.queue(job_id, [run_spec("cat")], 0, "cat", {})
    assert len(store.runs(job_id)) == 1


def test_a_retry_goes_back_to_the_queue_and_keeps_its_attempts(store: Store) -> None:
    job_id = queued_job(store, "cat")
    run = store.queued_runs()[0]
    store.start_run(run)
    store.fail_run(run.id, "RuntimeError: flaky", retry=True)
    again = store.queued_runs()
    assert [(r.id, r.attempts, r.error) for r in again] == [(run.id, 1, "RuntimeError: flaky")]
    assert store.runs(job_id)[0].finished is None


def test_requeue_interrupted_puts_running_work_back_in_the_queue(store: Store) -> None:
    first, second = queued_job(store, "first"), queued_job(store, "second")
    run = store.queued_runs()[0]
    store.start_run(run)
    store.progress(run.id, 7, 10, 1.0)
    # the daemon died here; the next start:
    assert store.requeue_interrupted() == 1
    assert store.running_runs() == []
    assert store.job(first).status == "queued" and store.job(second).status == "queued"
    back = store.queued_runs()[0]
    assert (back.id, back.status, back.attempts, back.iteration) == (run.id, "queued", 1, 7)  # the attempt counts
    assert store.requeue_interrupted() == 0


def test_a_stop_requeues_without_counting_an_attempt(store: Store) -> None:
    queued_job(store, "cat")
    run = store.queued_runs()[0]
    store.start_run(run)
    store.requeue_run(run.id)
    assert store.queued_runs()[0].attempts == 0


def test_higher_priority_runs_first_then_arrival_order(store: Store) -> None:
    early = queued_job(store, "early", runs=2)
    urgent = queued_job(store, "urgent", runs=2, priority=10)
    late = queued_job(store, "late")
    order = []
    while queued := store.queued_runs():
        run = min(queued, key=queue_order)
        order.append((run.job_id, run.idx))
        store.start_run(run)
        store.finish_run(run.id, 0.1, None)
    assert order == [(urgent, 0), (urgent, 1), (early, 0), (early, 1), (late, 0)]


def test_failed_or_claiming_jobs_have_no_queued_runs(store: Store) -> None:
    job_id = queued_job(store, "cat")
    store.set_job_status(job_id, "failed", "gone")
    assert store.queued_runs() == []


def test_the_database_is_in_wal_mode_and_readable_by_a_second_connection(store: Store, tmp_path: Path) -> None:
    queued_job(store, "cat")
    with closing(sqlite3.connect(tmp_path / "state" / "jobs.sqlite3")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other = Store(tmp_path / "state")
    try:
        assert [j.name for j in other.all_jobs()] == ["cat"]
    finally:
        other.close()


def test_finding_claiming_jobs_uses_an_index_not_a_scan_of_every_job(store: Store) -> None:
    plan = store.db.execute("EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE status IN ('claiming')").fetchall()
    assert any("jobs_by_status" in row["detail"] for row in plan), [row["detail"] for row in plan]


def test_a_failure_is_recorded_before_the_job_leaves_claiming(store: Store) -> None:
    job_id = store.begin_claim("cat", "pair", ["a"], None, {})
    store.record_error(job_id, "bad sidecar")
    assert [(j.status, j.error) for j in store.jobs("claiming")] == [("claiming", "bad sidecar")]


def test_a_job_is_cancelled_again_while_its_run_runs_and_not_once_its_runs_have_ended(store: Store) -> None:
    job_id = queued_job(store, "cat", runs=2)
    first, second = store.queued_runs()
    store.start_run(first)
    assert store.cancel_job(job_id)
    assert store.job(job_id).status == "cancelling" and store.run(second.id).status == "cancelled"
    assert store.cancel_job(job_id)  # asked twice: its running run is told again
    store.cancel_run(first.id)
    assert not store.cancel_job(job_id)  # every run ended: nothing is left to cancel


def test_a_requests_table_from_before_refusals_gains_the_column(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with closing(sqlite3.connect(state / "jobs.sqlite3")) as db:  # as nst-batch made it before `refused`
        db.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, "
                   "job_id INTEGER NOT NULL, run_id INTEGER, payload TEXT NOT NULL DEFAULT '{}', "
                   "created REAL NOT NULL, handled REAL, answer TEXT)")
        db.execute("INSERT INTO requests (action, job_id, created) VALUES ('cancel', 1, 0)")
        db.commit()
    store = Store(state)
    try:
        (old,) = store.pending_requests()
        assert not old.refused
        store.answer(old.id, "job-1: no such job or run any more", refused=True)
        assert store.request(old.id).refused
    finally:
        store.close()
