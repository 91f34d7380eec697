"""Metrics for monitoring, in Prometheus' text format (prometheus-client): written every
``metrics.every_seconds`` to a file in node_exporter's textfile directory (``metrics.textfile``:
no socket, so the default sandbox keeps), and served on 127.0.0.1 (``metrics.port``) where the
networked unit allows it.

The gauges are read from the job database when they are written (the same counts `nst-batch
status` shows); the counters are what this process saw end: out-of-memory retries, repairs,
unusable results, notification failures. Everything here runs on the main thread, but for the
HTTP server's own thread, which only reads the registry.
"""

import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile

from ..results.report import JobStatus, RunStatus
from ..settings.config import MetricsConfig
from ..util.errors import ConfigError
from .runner import Ending
from .store import Pause, Store
from .workers import Work


def iterations_per_second(before: dict[int, tuple[int, float]], now: dict[int, tuple[int, float]]) -> float:
    """The running runs' iterations per second between two looks (pure): each run's progress
    (iteration, when) now against before; a run not seen before counts from its next look."""
    rate = 0.0
    for run_id, (iteration, at) in now.items():
        if run_id in before and at > before[run_id][1]:
            rate += max(0, iteration - before[run_id][0]) / (at - before[run_id][1])
    return rate


class Metrics:
    def __init__(self, config: MetricsConfig, store: Store, budget: Callable[[], int], notification_failures: Callable[[], int]):
        self.config, self.store = config, store
        self.budget, self.notification_failures = budget, notification_failures
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("nst_batch_jobs", "Jobs in the job database, by state", ["state"], registry=r)
        self.runs = Gauge("nst_batch_runs", "Runs (one per result) in the job database, by state", ["state"], registry=r)
        self.running = Gauge("nst_batch_runs_running", "Runs on the device now", registry=r)
        self.paused = Gauge("nst_batch_paused", "1 while `nst-batch pause` holds the queue", registry=r)
        self.rate = Gauge("nst_batch_iterations_per_second", "Iterations per second of the running runs, together", registry=r)
        self.wait = Gauge("nst_batch_queue_wait_seconds", "How long the oldest waiting job has waited", registry=r)
        self.predicted = Gauge("nst_batch_memory_predicted_bytes", "Predicted peak memory of the work on the device", registry=r)
        self.measured = Gauge(
            "nst_batch_memory_measured_peak_bytes", "Measured peak memory of the last work that ran alone", registry=r
        )
        self.measured_predicted = Gauge(
            "nst_batch_memory_measured_predicted_bytes", "What was predicted for that work", registry=r
        )
        self.budget_bytes = Gauge("nst_batch_memory_budget_bytes", "The memory runs may use", registry=r)
        self.oom = Counter("nst_batch_out_of_memory_retries", "Runs that ran out of memory (retried alone)", registry=r)
        self.repairs = Counter("nst_batch_repairs", "Repairs of a run's optimization (rising, non-finite, stalled loss)", registry=r)
        self.unusable = Counter("nst_batch_unusable_results", "Results that were no picture and were tried again", registry=r)
        self.notify_failed = Counter("nst_batch_notification_failures", "Notification tries that failed", registry=r)
        self._notify_failed_seen = 0  # the notifier's count the counter has
        self._progress: dict[int, tuple[int, float]] = {}
        self._due = 0.0
        self._server = None

    @property
    def enabled(self) -> bool:
        return self.config.textfile is not None or self.config.port is not None

    def start(self) -> None:
        if self.config.port is not None:
            try:
                self._server, _ = start_http_server(self.config.port, addr="127.0.0.1", registry=self.registry)
            except OSError as error:  # in use, or no network (the default unit): the config's to change
                raise ConfigError(
                    f"metrics.port {self.config.port}: cannot listen on 127.0.0.1: {error.strerror or error} "
                    "(another program has the port, or the systemd unit has no network: see systemd/README.md)"
                ) from None
            logger.info(f"metrics on http://127.0.0.1:{self.config.port}/metrics")
        self.tick(force=True)

    def stop(self) -> None:
        self.tick(force=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def settled(self, work: Work) -> None:
        """What a finished piece of work adds to the counters."""
        for outcome in work.outcomes:
            if outcome.ending == Ending.OUT_OF_MEMORY:
                self.oom.inc()
            elif outcome.ending == Ending.UNUSABLE:
                self.unusable.inc()
        self.repairs.inc(work.repairs)
        if work.peak_bytes and not work.shared and len(work.runs) == 1:
            self.measured.set(work.peak_bytes)
            self.measured_predicted.set(work.need_bytes)

    def tick(self, active: list[Work] | None = None, force: bool = False) -> None:
        """Read the gauges and write the file, every ``every_seconds`` (or now, with ``force``)."""
        now = time.monotonic()
        if not self.enabled or (not force and now < self._due):
            return
        self._due = now + self.config.every_seconds
        try:
            self._read(active or [])
            if self.config.textfile is not None:
                Path(self.config.textfile).parent.mkdir(parents=True, exist_ok=True)
                write_to_textfile(str(self.config.textfile), self.registry)  # a temporary file, then a rename
        except Exception:  # monitoring is a view: never worth stopping the daemon for
            logger.exception("could not write the metrics")

    def _read(self, active: list[Work]) -> None:
        jobs, runs = self.store.counts(), self.store.run_counts()
        for state in JobStatus:
            self.jobs.labels(state.value).set(jobs.get(state, 0))
        for state in RunStatus:
            self.runs.labels(state.value).set(runs.get(state, 0))
        running = self.store.running_runs()
        self.running.set(len(running))
        seen = time.time()
        progress = {run.id: (run.iteration, seen) for run in running}
        self.rate.set(iterations_per_second(self._progress, progress))
        self._progress = progress
        oldest = self.store.oldest_waiting()
        self.wait.set(max(0.0, seen - oldest) if oldest is not None else 0.0)
        self.paused.set(0 if self.store.pause() == Pause.OFF else 1)
        self.predicted.set(sum(work.need_bytes for work in active))
        self.budget_bytes.set(self.budget())
        failures = self.notification_failures()  # the notifier's thread counts; the counter follows here
        self.notify_failed.inc(max(0, failures - self._notify_failed_seen))
        self._notify_failed_seen = max(failures, self._notify_failed_seen)
