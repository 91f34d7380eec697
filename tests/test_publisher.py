"""The publisher's thread: results are written beside the device, a bounded number at a time,
and a result that cannot be written is not done."""

import errno
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from nst_batch.daemon import publisher as publisher_module
from nst_batch.daemon.folders import Folders
from nst_batch.daemon.publisher import WRITES_WAITING, Publisher
from nst_batch.daemon.runner import Ending, Outcome, Unwritten
from nst_batch.engine import LossRecord
from nst_batch.settings.config import Config


@pytest.fixture
def publisher(tmp_path):
    config = Config(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state", styles_dir=None)
    folders = Folders(config)
    folders.create()
    publisher = Publisher(config, folders, torch.device("cpu"))
    publisher.start()
    yield publisher
    publisher.stop()


def done(label: str, tmp_path) -> Outcome:
    run = SimpleNamespace(job="job-1", label=label, result=SimpleNamespace(history=[LossRecord(1, 1.0, 1.0, 0.0, 2.0, 0.1)]))
    return Outcome(Ending.DONE, iterations=1, unwritten=Unwritten(tmp_path, run))


def test_a_worker_with_more_results_than_may_wait_waits_until_one_is_written(publisher, monkeypatch, tmp_path):
    disk = threading.Event()  # a slow disk: nothing is written until it is set
    written = []
    monkeypatch.setattr(publisher_module, "write_run", lambda staging, fmt, run: (disk.wait(10), written.append(run.label)))
    ends: list[list[Outcome]] = []
    for i in range(WRITES_WAITING):
        publisher.write([done(f"r{i}", tmp_path)], then=ends.append)  # taken at once

    handed = threading.Event()
    late = threading.Thread(target=lambda: (publisher.write([done("late", tmp_path)], then=ends.append), handed.set()))
    late.start()
    time.sleep(0.3)
    assert not handed.is_set() and written == []  # the late one waits, holding its worker's slot
    disk.set()
    late.join(10)
    deadline = time.monotonic() + 10
    while len(ends) < WRITES_WAITING + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert written == [f"r{i}" for i in range(WRITES_WAITING)] + ["late"]
    assert all(o.ending == Ending.DONE and o.unwritten is None and o.iterations == 1 for [o] in ends)


@pytest.mark.parametrize(
    ("error", "ending"),
    [(OSError(errno.ENOSPC, "No space left on device"), Ending.NO_SPACE), (RuntimeError("a bug"), Ending.RETRY)],
)
def test_a_result_that_cannot_be_written_is_not_done(publisher, monkeypatch, tmp_path, error, ending):
    def write_run(staging, fmt, run):
        raise error

    monkeypatch.setattr(publisher_module, "write_run", write_run)
    ended = threading.Event()
    got: list[Outcome] = []
    publisher.write([done("cat", tmp_path), Outcome(Ending.STOPPED)], then=lambda o: (got.extend(o), ended.set()))
    assert ended.wait(10)
    assert [o.ending for o in got] == [ending, Ending.STOPPED]
    assert got[0].error.startswith("could not write the result: ") and got[0].unwritten is None
