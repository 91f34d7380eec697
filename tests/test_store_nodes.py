"""Where a run started (the ray executor): its node and device, kept in the job database so that
its resume goes back to the node its checkpoint is on (``placement``)."""

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from nst_batch.daemon.store import _SCHEMA, RunSpec, Store
from nst_batch.engine import StyleParams


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "state")
    yield store
    store.close()


def queued_run(store: Store) -> int:
    job_id = store.begin_claim("cat", "pair", ["cat.content.jpg", "cat.style.jpg"], None, {"contents": []})
    store.queue(job_id, [RunSpec("cat", "cat.content.jpg", ("cat.style.jpg",), StyleParams(iterations=3), {})], 0,
                "cat", {})
    return store.queued_runs()[0].id


def test_a_run_never_placed_has_no_node(store):
    run = store.run(queued_run(store))
    assert (run.node, run.device) == (None, None)
    store.start_run(run)  # the threads executor
    assert (store.run(run.id).node, store.run(run.id).device) == (None, None)


def test_where_a_run_started_is_kept_for_its_resume(store):
    run = store.run(queued_run(store))
    store.start_run(run, "node-a", "gpu:1")
    assert (store.run(run.id).node, store.run(run.id).device, store.run(run.id).attempts) == ("node-a", "gpu:1", 1)
    assert store.requeue_interrupted() == 1  # the daemon died: queued again, its checkpoint on node-a
    queued = store.queued_runs()[0]
    assert (queued.node, queued.device) == ("node-a", "gpu:1")
    store.start_run(queued)  # started without a place: where it last ran is kept
    assert store.run(run.id).node == "node-a"
    store.requeue_run(run.id)
    store.start_run(store.run(run.id), "node-b", "gpu:0")  # node-a was gone: it started again elsewhere
    assert (store.run(run.id).node, store.run(run.id).device) == ("node-b", "gpu:0")


def test_an_older_database_gains_the_columns(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with closing(sqlite3.connect(state / "jobs.sqlite3")) as db:  # the tables as they were before
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        assert "node" not in columns and "device" not in columns
        db.execute("INSERT INTO jobs (name, kind, status, files, created, updated) VALUES ('a', 'pair', 'queued', '[]', 0, 0)")
        db.execute("INSERT INTO runs (job_id, idx, label, status, content, styles, params) "
                   "VALUES (1, 0, 'a', 'queued', 'a.jpg', '[\"b.jpg\"]', '{}')")
        db.commit()
    store = Store(state)
    try:
        run = store.queued_runs()[0]
        assert (run.node, run.device) == (None, None)
    finally:
        store.close()
