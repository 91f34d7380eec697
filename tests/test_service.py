"""The main loop in this process, with a runner that runs nothing: signals, the intake thread's
supervision, and how a job ends. The daemon end to end is in test_daemon.py."""

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from daemon_helpers import serve_until_settled
from loguru import logger

from nst_batch.daemon import dispatch as dispatch_module
from nst_batch.daemon import publisher as publisher_module
from nst_batch.daemon import service as service_module
from nst_batch.daemon.intake import Scan
from nst_batch.daemon.runner import Ending, Outcome, Unwritten
from nst_batch.daemon.service import Service
from nst_batch.daemon.store import RunSpec
from nst_batch.engine import LossRecord, StyleParams
from nst_batch.settings.config import Config


class FakeRunner:
    """Runs nothing: logs a line for the job and returns the outcome it was given."""

    device = torch.device("cpu")

    def __init__(self, outcome: Outcome = Outcome(Ending.DONE)):
        self.outcome = outcome

    def network(self, backbone):
        return None, None

    def batch_key(self, run):
        return None

    def run_batch(self, runs, stop, store):
        for job, run in runs:
            logger.bind(job=job.label).info(f"{run.label}: pretending to run")
        return [self.outcome] * len(runs)


@pytest.fixture()
def make_service(tmp_path, monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # never replace pytest's handlers
    config = Config(
        inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state", styles_dir=None,
        scheduler={"calibrate": False}, performance={"threads": 1},
    )
    made = []

    def make(outcome: Outcome = Outcome(Ending.DONE), runner=None) -> Service:
        made.append(Service(config, runner=runner or FakeRunner(outcome)))
        return made[-1]

    yield make
    for service in made:
        service.request_stop()
        service.store.close()


@pytest.fixture()
def service(make_service) -> Service:
    return make_service()


def queued_job(service: Service, name: str = "cat") -> int:
    job_id = service.store.begin_claim(name, "pair", [f"{name}.content.png"], None, {})
    service.folders.job_dir(job_id).mkdir(parents=True)
    (service.folders.job_dir(job_id) / f"{name}.content.png").write_bytes(b"c")
    service.store.queue(job_id, [RunSpec(name, f"{name}.content.png", ("s.png",), StyleParams(iterations=3), {})], 0, name, {})
    return job_id


def test_sigterm_stops_the_loop_says_why_once_from_the_main_thread_and_restores_the_handler(tmp_path, monkeypatch):
    """A real SIGTERM to this process: the handler only sets events (logging there could deadlock
    on a sink's lock, so it must not touch the logger at all), the main thread says why once, and
    pytest's own handler is back afterwards."""
    config = Config(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state",
                    styles_dir=None, scheduler={"calibrate": False}, performance={"threads": 1})
    pytest_handler = signal.getsignal(signal.SIGTERM)
    installed, from_the_handler, lines = [], [], []

    class WatchedLogger:  # the real logger, noting any use from inside the installed handler
        def __getattr__(self, name):
            frame = sys._getframe(1)
            while frame is not None:
                if installed and frame.f_code is installed[0].__code__:
                    from_the_handler.append(name)
                frame = frame.f_back
            return getattr(logger, name)

    monkeypatch.setattr(service_module, "logger", WatchedLogger())
    sink = logger.add(lambda message: lines.append(message.record["message"]))
    with Service(config, runner=FakeRunner()) as service:
        def send_sigterm_once_serving() -> None:
            while not any("nst-batch serving" in text for text in lines):
                time.sleep(0.01)
            installed.append(signal.getsignal(signal.SIGTERM).__func__)
            os.kill(os.getpid(), signal.SIGTERM)

        sender = threading.Thread(target=send_sigterm_once_serving, daemon=True)
        sender.start()
        try:
            assert service.serve() == 0
        finally:
            logger.remove(sink)
        sender.join()
    assert [text for text in lines if "received" in text] == [
        "SIGTERM received: stop requested; no new run starts, the running one checkpoints"
    ]
    assert installed and from_the_handler == []
    assert signal.getsignal(signal.SIGTERM) is pytest_handler


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the intake that breaks
def test_a_dead_intake_thread_is_restarted_and_the_watchdog_waits_for_it(service, monkeypatch):
    events = []  # (what, monotonic time)
    monkeypatch.setattr(service_module, "INTAKE_RESTART_S", 2.5)  # two idle heartbeats while it is dead
    monkeypatch.setattr(service_module, "notify", lambda *fields: events.extend((f, time.monotonic()) for f in fields))

    class Intake:  # the first dies at once; the second works, and the service stops a second later
        def __init__(self, *args):
            events.append(("intake", time.monotonic()))
            if sum(what == "intake" for what, _ in events) == 1:
                raise RuntimeError("the intake broke")
            threading.Timer(1.0, service.request_stop).start()

        def tick(self):
            return Scan(0, False)

    monkeypatch.setattr(service_module, "Intake", Intake)
    sink = logger.add(lambda m: events.append(("restart", time.monotonic())), filter=lambda r: "restarting" in r["message"])
    try:
        assert service.serve() == 0
    finally:
        logger.remove(sink)
    died = next(when for what, when in events if what == "intake")
    restart = next(when for what, when in events if what == "restart")
    pings = [when for what, when in events if what == "WATCHDOG=1"]
    assert restart - died >= 2.5  # not restarted at once...
    # ...and the watchdog was not fed meanwhile (but for a ping in the moment the thread took to die)
    assert not [when for when in pings if died + 0.25 < when < restart]
    assert [when for when in pings if when > restart]  # fed again once it runs


def test_a_started_run_is_reported_and_its_job_published(service, monkeypatch):
    job_id = queued_job(service)
    statuses = []
    monkeypatch.setattr(dispatch_module, "notify", lambda *fields: statuses.extend(fields))
    serve_until_settled(service)
    assert "STATUS=running cat; 0 more queued" in statuses
    assert service.store.job(job_id).status == "done"
    record = service.folders.outbox / "cat" / "job.json"
    text = record.read_text()
    assert '"device": "cpu"' in text and '"weights"' not in text  # the weights are per result, from each run


def test_when_every_run_fails_the_log_goes_to_failed_with_the_inputs(make_service):
    service = make_service(Outcome(Ending.FAILED, "not an image"))
    job_id = queued_job(service)
    serve_until_settled(service)
    assert service.store.job(job_id).status == "failed"
    failed = service.folders.failed / "cat"
    assert sorted(p.name for p in failed.iterdir()) == ["cat.content.png", "error.txt", "log.txt"]
    assert "pretending to run" in (failed / "log.txt").read_text()
    assert not service.folders.staging_dir(job_id).exists()


class WritingRunner(FakeRunner):
    """Each run ends done, with a result for the publisher to write."""

    def __init__(self):
        super().__init__()
        self.started = []

    def run_batch(self, runs, stop, store):
        outcomes = []
        for job, run in runs:
            self.started.append(run.label)
            fake = SimpleNamespace(job=job.label, label=run.label, result=SimpleNamespace(history=[LossRecord(1, 1.0, 1.0, 0.0, 2.0, 0.1)], repairs=[]))
            outcomes.append(Outcome(Ending.DONE, iterations=1, unwritten=Unwritten(Path("unused"), fake)))
        return outcomes


def test_the_next_run_starts_while_the_last_ones_files_are_still_being_written(make_service, monkeypatch):
    service = make_service(runner=WritingRunner())
    for name in ("one", "two"):
        queued_job(service, name)
    disk, written = threading.Event(), []

    def slow_write_run(staging, output_format, run):
        if run.label == "one":
            assert disk.wait(20)  # one's files wait until two has started
        written.append(run.label)

    monkeypatch.setattr(publisher_module, "write_run", slow_write_run)
    threading.Thread(target=lambda: (wait_until(lambda: "two" in service.runner.started), disk.set()), daemon=True).start()
    serve_until_settled(service)
    assert service.runner.started == ["one", "two"] and written == ["one", "two"]
    assert [job.status for job in service.store.all_jobs()] == ["done", "done"]


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)
