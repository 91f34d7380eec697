"""Crash safety: `nst-batch serve` killed with SIGKILL while it claims, optimizes, writes and
publishes, restarted each time; in the end nothing is lost, nothing is doubled, nothing partial
is visible, and the database agrees with the folders.

The daemon runs through ``paced_daemon.py``, which holds every fsync open for a moment (a
temporary file complete but not yet renamed, a rename not yet durable), so that the kills land
inside those windows, not only between them. The moments are seeded, so a failure can be replayed."""

import errno
import hashlib
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import torch
from daemon_helpers import Daemon, in_gallery, loss_rows, make_image, wait_for
from loguru import logger

from nst_batch.daemon import publisher
from nst_batch.daemon.service import Service
from nst_batch.settings.config import Config

pytestmark = pytest.mark.slow

ITERATIONS = 8
# Layers up to relu2_1 only: ten times cheaper than up to relu5_1, and the same code paths.
SHALLOW = {"style_layers": "relu1_1,relu2_1", "content_layers": "relu2_1"}
PAIRS = [f"j{i:02d}" for i in range(18)]
JOBS = {*PAIRS, "duo", "sweep"}  # 20 jobs, 22 results


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def drop_everything(inbox: Path, scratch: Path) -> dict[str, str]:
    """20 jobs: 18 pairs, a folder with two contents, a pair with a 2-value sweep, made aside and
    moved in. Returns the SHA-256 of every input file, by name."""
    for i, name in enumerate(PAIRS):
        make_image(scratch / f"{name}.content.png", (40, 30), "gradient", seed=i)
        make_image(scratch / f"{name}.style.png", (30, 40), "noise", seed=100 + i)
    make_image(scratch / "duo" / "style.png", (32, 32), "noise", seed=200)
    make_image(scratch / "duo" / "one.png", (40, 30), "gradient", seed=30)
    make_image(scratch / "duo" / "two.png", (40, 30), "gradient", seed=31)
    (scratch / "sweep.yaml").write_text("sweep:\n  style_weight: [100, 10000]\n")
    make_image(scratch / "sweep.content.png", (40, 30), "gradient", seed=20)
    make_image(scratch / "sweep.style.png", (30, 40), "noise", seed=201)
    digests = {str(p.relative_to(scratch)): sha256(p) for p in scratch.rglob("*") if p.is_file()}
    assert len(set(digests.values())) == len(digests) == 42  # each file can be told apart by its content
    for item in sorted(scratch.iterdir(), key=lambda p: (p.suffix != ".yaml", p.name)):  # the sidecar first
        item.rename(inbox / item.name)
    return digests


def files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()]


# --- the moments to kill it --------------------------------------------------------------


def claiming(daemon: Daemon, rng: random.Random) -> Callable[[], bool]:
    """Some jobs claimed, not all: the intake is in the middle of its claims."""
    target = rng.randint(1, 12)
    return lambda: target <= len(daemon.query("SELECT id FROM jobs")) < len(JOBS)


def optimizing(daemon: Daemon, rng: random.Random) -> Callable[[], bool]:
    """A running run has written a checkpoint: it is past its first iterations, not finished."""

    def check() -> bool:
        running = daemon.query("SELECT id FROM runs WHERE status='running'")
        return any((daemon.state / "checkpoints" / f"run-{r['id']}.pt").exists() for r in running)

    return check


def writing(daemon: Daemon, rng: random.Random) -> Callable[[], bool]:
    """A result file is being written in the staging folder (its temporary file exists)."""
    return lambda: any(p.name.endswith(".tmp") for p in files_under(daemon.outbox / ".staging"))


def ended(daemon: Daemon, rng: random.Random) -> Callable[[], bool]:
    """A run is recorded done, its files written, and its job is not published yet: the results
    wait for the publisher's thread."""
    return lambda: bool(daemon.query(
        "SELECT runs.id FROM runs JOIN jobs ON jobs.id = runs.job_id WHERE runs.status='done' AND jobs.status != 'done'"
    ))


def publishing(daemon: Daemon, rng: random.Random) -> Callable[[], bool]:
    """A result folder has just appeared in the outbox; its job is not recorded done yet."""
    published = {p.name for p in daemon.outbox.iterdir() if p.is_dir() and not p.name.startswith(".")}
    done = len(daemon.query("SELECT id FROM jobs WHERE status='done'"))
    return lambda: sum(1 for p in daemon.outbox.iterdir() if p.is_dir() and not p.name.startswith(".")) > max(
        len(published), done
    )


def anytime(daemon: Daemon, rng: random.Random) -> Callable[[], bool]:
    deadline = time.monotonic() + rng.uniform(0.2, 2.5)
    return lambda: time.monotonic() > deadline


MOMENTS = [claiming, optimizing, writing, ended, publishing, anytime, writing]


def test_kill_9_at_any_moment_loses_nothing_and_doubles_nothing(daemon_factory) -> None:
    rng = random.Random(1234)
    daemon: Daemon = daemon_factory(
        settle_seconds=0.3, checkpoint_every=2, max_attempts=20,
        defaults={"image_size": 32, "iterations": ITERATIONS, **SHALLOW}, scheduler={"calibrate": False},
    )
    daemon.command = [sys.executable, str(Path(__file__).with_name("paced_daemon.py")), "0.03"]
    daemon.start()
    originals = drop_everything(daemon.inbox, daemon.root / "scratch")

    hit = []
    for moment in MOMENTS:
        condition = moment(daemon, rng)
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline and daemon.alive():
            time.sleep(0.005)
        if condition():
            hit.append(moment.__name__)
        assert daemon.alive(), daemon.tail()
        daemon.crash()
        daemon.start()

    # The moments are seeded and the work is paced by the pauses: each one is reached.
    assert {"claiming", "optimizing", "writing", "ended", "publishing"} <= set(hit), hit

    daemon.wait(
        lambda: len(daemon.query("SELECT id FROM jobs WHERE status IN ('done', 'failed')")) == len(JOBS),
        120, "every job to end",
    )
    daemon.terminate()
    for log in daemon.logs:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    assert any("resuming from iteration" in log.read_text() for log in daemon.logs)  # killed mid-run, resumed

    # The database: every job once, done, with all its runs done.
    jobs = daemon.query("SELECT * FROM jobs")
    assert sorted(j["name"] for j in jobs) == sorted(JOBS)
    assert {j["status"] for j in jobs} == {"done"}, [(j["name"], j["status"], j["error"]) for j in jobs]
    assert {r["status"] for r in daemon.query("SELECT status FROM runs")} == {"done"}
    assert len(daemon.query("SELECT id FROM runs")) == 22

    # The outbox: exactly one complete folder per job, nothing hidden or temporary in it.
    staging, previews = daemon.outbox / ".staging", daemon.outbox / ".running"
    assert list(staging.iterdir()) == []
    assert list(previews.iterdir()) == []  # every run ended: no preview of a running run stays
    folders = {p.name: p for p in daemon.outbox.iterdir() if p.is_dir() and p not in (staging, previews)}
    assert sorted(folders) == sorted(JOBS)
    assert sorted(p.name for p in daemon.outbox.iterdir() if not p.is_dir()) == ["index.html"]  # the gallery
    ids = {j["name"]: j["id"] for j in jobs}
    for name, folder in folders.items():
        hidden = [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
        assert hidden == [], hidden
        record = json.loads((folder / "job.json").read_text())
        assert (record["id"], record["status"]) == (ids[name], "done")
        labels = [r["label"] for r in daemon.query("SELECT label FROM runs WHERE job_id=? ORDER BY idx", ids[name])]
        assert [result["label"] for result in record["results"]] == labels
        assert (folder / "log.txt").is_file()
        for result in record["results"]:
            assert result["status"] == "done" and result["iterations"] == ITERATIONS
            assert (folder / f"{result['label']}.png").is_file()
            losses = folder / ("losses.csv" if len(record["results"]) == 1 else f"{result['label']}.losses.csv")
            # One row per iteration, in order: none lost or repeated, whatever the kills.
            assert [int(row[0]) for row in loss_rows(losses)[1]] == list(range(1, ITERATIONS + 1))
    assert len(json.loads((folders["sweep"] / "job.json").read_text())["results"]) == 2
    assert {p.name for p in folders["duo"].glob("*.png") if ".losses." not in p.name} == {"one.png", "two.png"}

    # Every input is in exactly one place: here, all archived; nothing left anywhere else.
    where = [(p, sha256(p)) for p in files_under(daemon.inbox, daemon.state / "jobs", daemon.state / "archive",
                                                  daemon.state / "failed")]
    for name, digest in originals.items():
        places = [p for p, d in where if d == digest]
        assert len(places) == 1 and places[0].is_relative_to(daemon.state / "archive"), (name, places)
    assert len(where) == len(originals), [p for p, _ in where]
    assert list(daemon.inbox.iterdir()) == [] and list((daemon.state / "jobs").iterdir()) == []
    assert list((daemon.state / "checkpoints").iterdir()) == []
    assert all(any(folder.iterdir()) for folder in (daemon.state / "archive").iterdir())


# --- a full disk ---------------------------------------------------------------------------


def query(state: Path, sql: str) -> list[dict]:
    with closing(sqlite3.connect(state / "jobs.sqlite3", timeout=10)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(sql)]


@pytest.fixture()
def serving(tmp_path, monkeypatch):
    """``serving(**config)`` -> the daemon's Service, serving on a thread of this process (so that
    a fault can be injected), and the log lines; stopped at teardown."""
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # never replace pytest's handlers
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), format="{message}", level="INFO")
    started: list[tuple[Service, threading.Thread]] = []
    threads = torch.get_num_threads()  # serve() sets the process's count

    def start(**settings) -> tuple[Service, list[str]]:
        config = Config.model_validate({
            "inbox": tmp_path / "inbox", "outbox": tmp_path / "outbox", "state_dir": tmp_path / "state",
            "styles_dir": None, "device": "cpu", "settle_seconds": 0.2, "checkpoint_every": 2,
            "model": {"weights": "random"}, "scheduler": {"calibrate": False}, "performance": {"threads": 1},
            "defaults": {"image_size": 32, "iterations": 4, "seed": 0, **SHALLOW}, **settings,
        })
        made: list[Service] = []
        ready = threading.Event()

        def serve() -> None:
            with Service(config) as service:  # SQLite connections belong to the thread that opens them
                made.append(service)
                ready.set()
                service.serve()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert ready.wait(30)
        started.append((made[0], thread))
        return made[0], lines

    yield start
    for service, thread in started:
        service.request_stop()
        thread.join(30)
    logger.remove(sink)
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("victim", "where"),
    [(".cat.png.", "the result image, in the outbox"), (".job.json.", "job.json, when the job is published"),
     (".run-", "a checkpoint, in state_dir")],
)
def test_a_full_disk_is_not_done_corrupts_nothing_and_is_retried_when_space_returns(
    serving, monkeypatch, victim, where
) -> None:
    monkeypatch.setattr(publisher, "NO_SPACE_RETRY_S", 0.3)
    full = threading.Event()
    full.set()
    refused: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # where a delayed-allocation filesystem reports a full disk
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if full.is_set() and name.startswith(victim):
            refused.append(name)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    service, lines = serving()
    inbox, outbox, state = service.folders.inbox, service.folders.outbox, service.folders.state
    make_image(inbox / "cat.content.png", (40, 30), "gradient")
    make_image(inbox / "cat.style.png", (30, 40), "noise")

    def job() -> dict:
        rows = query(state, "SELECT * FROM jobs")
        return rows[0] if rows else {}

    if victim == ".run-":  # a checkpoint is only a time saver: the run goes on without it
        wait_for(lambda: (outbox / "cat" / "job.json").exists(), 60, "the result", lambda: "\n".join(lines))
        assert refused and full.is_set()
        assert any("checkpoint run-" in line and "not saved" in line for line in lines)
    else:
        wait_for(lambda: len(refused) >= 3, 60, f"writes of {where} to be refused", lambda: "\n".join(lines))
        # Not done, nothing visible in the outbox, and the failures cost no attempt.
        assert job()["status"] in ("queued", "running")
        # no result folder yet (.running: the hidden preview of the run in progress, never a result)
        assert sorted(p.name for p in outbox.iterdir() if p.is_dir()) == [".running", ".staging"]
        assert query(state, "SELECT attempts FROM runs")[0]["attempts"] <= 1
        assert any("No space left on device" in line and "trying again" in line for line in lines)
        full.clear()
        wait_for(lambda: (outbox / "cat" / "job.json").exists(), 60, "the result", lambda: "\n".join(lines))

    wait_for(lambda: job()["status"] == "done", 30, "the job to be recorded done")
    [run] = query(state, "SELECT * FROM runs")
    assert (run["status"], run["attempts"]) == ("done", 1)
    record = json.loads((outbox / "cat" / "job.json").read_text())
    assert record["results"][0]["iterations"] == 4 and "seed" in record["results"][0]
    assert [int(row[0]) for row in loss_rows(outbox / "cat" / "losses.csv")[1]] == [1, 2, 3, 4]
    wait_for(lambda: in_gallery(outbox, "cat"), 30, "the gallery to show the job")
    assert sorted(p.name for p in (outbox / "cat").iterdir()) == [
        "cat.png", "compare.jpg", "job.json", "log.txt", "losses.csv", "losses.png", "thumb.jpg"
    ]
    leftovers = [p for p in (*outbox.rglob("*"), *state.rglob("*")) if p.name.endswith(".tmp")]
    assert leftovers == [] and list((state / "checkpoints").iterdir()) == []
    assert sorted(p.name for p in (state / "archive" / "cat").iterdir()) == ["cat.content.png", "cat.style.png"]
