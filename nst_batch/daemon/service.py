"""`nst-batch serve`: the main loop, and nothing else. An intake thread turns inbox files into
queued runs; the main thread starts what fits (``dispatch``) on worker threads, settles what
ended (``finishing``), feeds the systemd watchdog and keeps the intake thread alive. The
publisher's thread writes results and publishes jobs beside them.
SIGTERM or SIGINT: no new run starts, the running ones checkpoint, exit 0."""

import gc
import signal
import threading
import time
from collections.abc import Callable, Hashable
from types import TracebackType

import torch
from loguru import logger

from ..engine import Speed, StyleParams
from ..results.report import JobStatus
from ..settings import tuning
from ..settings.config import Config
from .capacity import Capacity
from .control import Controller
from .dispatch import Dispatcher
from .finishing import Finisher
from .folders import Folders
from .intake import Intake
from .metrics import Metrics
from .notices import Notices
from .notifier import Notifier
from .preview import Previews
from .publisher import Publisher
from .runner import Runner, run_batch_key
from .store import RunRecord, Store
from .systemd import notify
from .watcher import InboxWatcher
from .workers import Work, Workers

BUSY_POLL_S = 0.5
INTAKE_RESTART_S = 5.0  # a dead intake or publisher thread is restarted at most this often
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service:
    """The daemon's parts, built once; ``serve()`` runs them until a stop signal. ``runner`` may be
    given (tests run fakes through the real loop)."""

    def __init__(self, config: Config, runner: Runner | None = None, actor_runner: type | None = None):
        self.config = config
        self.folders = Folders(config)
        self.folders.create()
        self.stop = threading.Event()
        self.work = threading.Event()  # set when something was queued or finished
        self.store = Store(self.folders.state)
        self.watcher = InboxWatcher(config.inbox, config.settle_seconds, config.observer)
        self.previews = Previews(self.folders.outbox, written=lambda: self.publisher.preview_changed())
        self.runner: Runner | None = None  # the threads executor's; the ray executor's actors have their own
        if config.executor == "ray":
            self.workers, batch_key = self._ray_workers(actor_runner)
        else:
            self.runner = runner or Runner(config, self.folders, self.folders.input_path, self._heartbeat, self.previews.offer)
            self.capacity = Capacity(config, self.runner.device)
            self.publisher = Publisher(config, self.folders, self.runner.device)
            self.workers = Workers(self.runner, self.folders, self.publisher, self.stop, self.work.set)
            batch_key = self.runner.batch_key
        self.finisher = Finisher(config, self.store, self.capacity, self.publisher)
        self.notifier = Notifier(config.notify)  # reads notify.urls_file: a bad one stops the start here
        self.notices = Notices(self.store, self.notifier, self.folders.outbox)
        self.metrics = Metrics(config.metrics, self.store, lambda: self.capacity.budget, lambda: self.notifier.failures)
        self.control = Controller(self.store, self.folders, self.workers, self.finisher, self.watcher.wake.set)
        self.dispatcher = Dispatcher(
            self.store, self.capacity, batch_key, self.workers, self.finisher, config.max_attempts,
            paused=lambda: self.control.paused,
        )
        self._intake_thread: threading.Thread | None = None
        self._intake_started = 0.0
        self._publisher_started = 0.0
        self._last_ping = 0.0
        self._stop_signal: int | None = None
        self._stop_announced = False

    def _ray_workers(self, actor_runner: type | None) -> tuple[Workers, Callable[[RunRecord], Hashable | None]]:
        """The ray executor (imported only when asked for: without the extra, Ray is never imported)."""
        from .ray_workers import RayWorkers, actor_kind

        kind = torch.device(actor_kind(self.config))
        self.capacity = Capacity(self.config, kind, key=kind.type)  # the actors' own kind, once one is ready
        self.publisher = Publisher(self.config, self.folders, kind, forget=lambda runs: self.workers.forget(runs))
        workers = RayWorkers(
            self.config, self.folders, self.publisher, self.store, self.stop, self.work.set, self.capacity, actor_runner
        )

        def speed(params: StyleParams) -> Speed:
            return tuning.choose_speed(self.config.performance, params.optimizer, kind.type, cpu_bf16=False)

        return workers, lambda run: run_batch_key(run, speed)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.workers.close()  # idempotent: after serve(), or when it failed before it could
        self.store.close()

    def serve(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            self._start()
            while not self.stop.is_set():
                self.control.tick()  # pause, resume, cancel, retry: within a tick of being asked
                self.workers.tick()  # the ray executor's pool: actors ready, dead ones replaced
                for work in self.workers.finished():
                    self._settle(work)
                idle = not self.dispatcher.dispatch() and not self.workers.busy
                self.notices.tick(idle)  # a job failed or done; the queue drained
                self.metrics.tick(self.workers.active)  # every metrics.every_seconds
                if idle:
                    self._idle()
                else:
                    self._heartbeat()
                    self.work.wait(BUSY_POLL_S)
                    self.work.clear()
            self._drain()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            gc.unfreeze()
        return 0

    def _settle(self, work: Work) -> None:
        self.finisher.settle(work)
        self.metrics.settled(work)
        if [run for _, run in work.runs if self.previews.remove(run.id)]:
            self.publisher.preview_changed()  # its "running" section shows no preview that has gone

    def _start(self) -> None:
        requeued = self.store.requeue_interrupted()
        if requeued:
            logger.info(f"{requeued} interrupted run(s) queued again; they resume from their checkpoints")
        tidied = self.folders.tidy()
        if tidied:
            logger.info(f"removed {tidied} temporary file(s) or reserved folder(s) an interruption left behind")
        where = self.workers.open(self.config, self.capacity, self.store)  # the network loaded, before READY
        gc.collect()  # nothing of start-up's garbage is frozen with what lives on
        # The ~400 000 objects of torch, matplotlib and pydantic live as long as the process: out
        # of the collector's sight, each automatic collection takes microseconds instead of a
        # fifth of a second.
        gc.freeze()
        self.publisher.start()
        self._publisher_started = time.monotonic()
        self.notifier.start()
        self.metrics.start()
        self.previews.start()
        self.finisher.finish_active()
        self.control.tick()  # a pause survives a restart: known before anything could start
        self.publisher.rebuild_gallery()
        # Watching before READY: a file written from then on is seen being written, so a copy
        # that stalls half way is never taken for a finished one.
        self.watcher.start()
        self._start_intake()
        notify("READY=1", "STATUS=watching the inbox")
        logger.info(f"nst-batch serving: {self.config.summary()}; {where}")

    def _drain(self) -> None:
        self._announce_stop()
        notify("STOPPING=1")
        self.workers.join()  # each running run sees the stop, checkpoints and returns; results are written
        for work in self.workers.finished():
            self._settle(work)
        self.previews.stop()
        self.publisher.stop()  # after what the last runs finished is published
        self.notices.tick(idle=False)  # what ended last is told, without waiting long for a receiver
        self.notifier.stop()
        self.metrics.stop()
        self._intake_thread.join(timeout=10)
        self.watcher.stop()
        self.workers.close()  # the ray executor's actors, and Ray if the daemon started it

    # --- signals ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask ``serve()`` to return: no new run starts, the running ones checkpoint. Safe from
        any thread and from a signal handler: it only sets events."""
        self.stop.set()
        self.work.set()
        self.watcher.wake.set()  # the intake may be waiting up to rescan_seconds

    def _on_signal(self, signum: int, frame: object) -> None:
        # Events only: logging here could raise or deadlock if the interrupted code holds a
        # sink's lock. The main thread says what happened (_announce_stop).
        self._stop_signal = signum
        self.request_stop()

    def _announce_stop(self) -> None:
        """Log the stop request once, from the main thread (never from the signal handler)."""
        if self.stop.is_set() and not self._stop_announced:
            self._stop_announced = True
            cause = signal.Signals(self._stop_signal).name if self._stop_signal else "stop"
            logger.info(f"{cause} received: stop requested; no new run starts, the running one checkpoints")

    # --- the intake thread -----------------------------------------------------------------

    def _start_intake(self) -> None:
        self._intake_thread = threading.Thread(target=self._intake_loop, name="intake", daemon=True)
        self._intake_started = time.monotonic()
        self._intake_thread.start()

    def _intake_alive(self) -> bool:
        """Whether the intake thread runs; one that died is restarted (main thread only). While
        it cannot be kept alive the watchdog is not fed, so systemd restarts the whole service."""
        if self._intake_thread is None or self._intake_thread.is_alive() or self.stop.is_set():
            return True
        if time.monotonic() - self._intake_started < INTAKE_RESTART_S:
            return False
        logger.error("the intake thread stopped; restarting it")
        self._start_intake()
        return self._intake_thread.is_alive()

    def _publisher_alive(self) -> bool:
        """Whether the publisher's thread runs; one that died (a bug) is started again, its
        queue intact. Meanwhile the watchdog is not fed, as for the intake."""
        if self.publisher.alive() or self.stop.is_set() or self._intake_thread is None:
            return True
        if time.monotonic() - self._publisher_started < INTAKE_RESTART_S:
            return False
        logger.error("the publisher's thread stopped; restarting it")
        self._publisher_started = time.monotonic()
        self.publisher.start()
        return self.publisher.alive()

    def _intake_loop(self) -> None:
        store = Store(self.folders.state)  # a connection of its own: SQLite objects stay in their thread
        try:
            intake = Intake(self.config, self.folders, store, self.watcher)
            while True:
                self.watcher.wake.clear()  # before looking: a stop or an event from now on ends the wait below
                if self.stop.is_set():
                    break
                waiting = False
                try:
                    self.watcher.ensure_alive()
                    scan = intake.tick()  # finishes interrupted claims first
                    if scan.claimed:
                        self.work.set()
                    waiting = scan.waiting
                except Exception:  # nothing in the inbox, nor the inbox briefly gone, may stop the intake
                    logger.exception("intake failed; retrying at the next scan")
                # Files that wait complete by time, not by an event: look again soon.
                self.watcher.wake.wait(BUSY_POLL_S if waiting else self.config.rescan_seconds)
        finally:
            store.close()

    # --- the watchdog ----------------------------------------------------------------------

    def _idle(self) -> None:
        self.finisher.rebuild_gallery_if_stale()
        counts = self.store.counts()
        queued, done, failed = (counts.get(s, 0) for s in (JobStatus.QUEUED, JobStatus.DONE, JobStatus.FAILED))
        paused = "paused; " if self.control.paused else ""
        notify(f"STATUS={paused}idle; {queued} queued, {done} done, {failed} failed")
        self._heartbeat()
        self.work.wait(1.0)
        self.work.clear()

    def _heartbeat(self) -> None:
        self._announce_stop()
        if not self._intake_alive() or not self._publisher_alive():
            return
        now = time.monotonic()
        if now - self._last_ping >= 1.0:
            self._last_ping = now
            notify("WATCHDOG=1")


def serve(config: Config) -> int:
    with Service(config) as service:
        return service.serve()
