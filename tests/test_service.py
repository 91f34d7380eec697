"""The main loop's parts, without a network: signals, the intake thread's supervision, and how a
job ends. The daemon end to end is in test_daemon.py."""

import signal
import threading

import pytest
import torch
from loguru import logger

from nst_batch.engine import StyleParams
from nst_batch.daemon import service as service_module
from nst_batch.settings.config import Config
from nst_batch.daemon.runner import Outcome
from nst_batch.daemon.capacity import Capacity
from nst_batch.daemon.service import INTAKE_RESTART_S, Service
from nst_batch.daemon.store import RunSpec
from nst_batch.daemon.workers import Workers


class FakeRunner:
    """Runs nothing: logs a line for the job and returns the outcome it was given."""

    device = torch.device("cpu")

    def __init__(self, outcome: Outcome):
        self.outcome = outcome

    def batch_key(self, run):
        return None

    def run_batch(self, runs, stop, store):
        for job, run in runs:
            logger.bind(job=job.label).info(f"{run.label}: pretending to run")
        return [self.outcome] * len(runs)


def run_queue(service: Service, outcome: Outcome) -> None:
    """The main loop's work without serve(): start what fits, wait, settle."""
    service.runner = FakeRunner(outcome)
    service.capacity = Capacity(service.config, service.runner.device)
    service.workers = Workers(service.runner, service.folders, service.stop, service.work.set)
    while service._dispatch() or service.workers.active:
        service.workers.join()
        for work in service.workers.finished():
            service._settle(work)


@pytest.fixture()
def service(tmp_path, monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # never replace pytest's handlers
    config = Config(
        inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state", styles_dir=None,
        scheduler={"calibrate": False},
    )
    service = Service(config)
    yield service
    service.stop.set()
    service.store.close()


def queued_job(service: Service, name: str = "cat") -> int:
    job_id = service.store.begin_claim(name, "pair", [f"{name}.content.png"], None, {})
    service.folders.job_dir(job_id).mkdir(parents=True)
    (service.folders.job_dir(job_id) / f"{name}.content.png").write_bytes(b"c")
    service.store.queue(job_id, [RunSpec(name, f"{name}.content.png", ("s.png",), StyleParams(iterations=3), {})], 0, name, {})
    return job_id


def test_the_signal_handler_only_sets_events_and_the_main_thread_says_why(service, monkeypatch):
    handlers = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.setdefault(signum, handler))
    service._handle_signals()

    class Locked:  # loguru, when the interrupted code holds a sink's lock
        def __getattr__(self, name):
            raise RuntimeError("Could not acquire internal lock because it was already in use (deadlock avoided)")

    monkeypatch.setattr(service_module, "logger", Locked())
    handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert service.stop.is_set() and service.work.is_set() and service.watcher.wake.is_set()

    monkeypatch.setattr(service_module, "logger", logger)
    lines = []
    sink = logger.add(lines.append, format="{message}")
    try:
        service._announce_stop()
        service._announce_stop()
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "SIGTERM received" in lines[0] and "stop requested" in lines[0]


def test_a_dead_intake_thread_is_restarted_and_the_watchdog_waits_for_it(service, monkeypatch):
    pings = []
    monkeypatch.setattr(service_module, "notify", lambda *fields: pings.append(fields))
    service._intake_loop = lambda: None  # an intake thread that dies at once
    service._start_intake()
    service._intake_thread.join()
    service._heartbeat()
    assert pings == []  # not restarted yet (it just started), and no watchdog ping meanwhile

    keep_running = threading.Event()
    service._intake_loop = keep_running.wait
    service._intake_started -= INTAKE_RESTART_S
    try:
        service._heartbeat()
        assert service._intake_thread.is_alive() and pings == [("WATCHDOG=1",)]
    finally:
        keep_running.set()


def test_serve_gives_the_runner_the_folders_input_path(service, monkeypatch):
    made = {}

    class Runner:
        device = torch.device("cpu")

        def __init__(self, config, folders, input_path, heartbeat):
            made["input_path"] = input_path

        def network(self, backbone):
            return None, None

    monkeypatch.setattr(service_module, "Runner", Runner)
    service.stop.set()  # serve starts, finds nothing to do, stops
    assert service.serve() == 0
    assert made["input_path"] == service.folders.input_path


def test_a_started_run_is_reported_and_its_job_published(service, monkeypatch):
    job_id = queued_job(service)
    statuses = []
    monkeypatch.setattr(service_module, "notify", lambda *fields: statuses.extend(fields))
    run_queue(service, Outcome("done"))
    assert "STATUS=running cat; 0 more queued" in statuses
    assert service.store.job(job_id).status == "done"
    record = service.folders.outbox / "cat" / "job.json"
    text = record.read_text()
    assert '"device": "cpu"' in text and '"weights"' not in text  # the weights are per result, from each run


def test_when_every_run_fails_the_log_goes_to_failed_with_the_inputs(service):
    job_id = queued_job(service)
    run_queue(service, Outcome("failed", "not an image"))
    assert service.store.job(job_id).status == "failed"
    failed = service.folders.failed / "cat"
    assert sorted(p.name for p in failed.iterdir()) == ["cat.content.png", "error.txt", "log.txt"]
    assert "pretending to run" in (failed / "log.txt").read_text()
    assert not service.folders.staging_dir(job_id).exists()
