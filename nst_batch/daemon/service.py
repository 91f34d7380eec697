"""`nst-batch serve`: the main loop. An intake thread turns inbox files into queued runs; the
main thread starts as many as fit the device (scheduler, capacity) on worker threads, settles
each when it ends, finishes each job (outbox, archive or failed/) and talks to systemd.
SIGTERM or SIGINT: no new run starts, the running ones checkpoint, exit 0."""

import gc
import shutil
import signal
import threading
import time
from pathlib import Path

from loguru import logger

from .claims import Folders, dispose_failure, dispose_success
from ..settings.config import Config
from .intake import Intake
from ..results.outbox import publish, versions
from ..results.plots import sweep_entries, write_sweep_sheet
from ..results import gallery
from ..settings import tuning
from .capacity import Capacity
from .runner import Outcome, Runner, another_try
from .scheduler import Active, Candidate, admit
from .store import ACTIVE, JobRecord, RunRecord, Store
from .systemd import notify
from .watcher import InboxWatcher
from .workers import Work, Workers

BUSY_POLL_S = 0.5
# The scheduler is shown the first runs of the queue only: looking at all of them (a folder of
# 10 000 photos) would cost the main loop time in proportion to the queue before every start.
DISPATCH_WINDOW = 64  # queued runs the scheduler looks at, at least...
MAX_DISPATCH_WINDOW = 512  # ...and at most, whatever the slots and batch sizes
# A full disk: no run starts, nor is a finished job published, for this long; then they are tried
# again. Attempts are not counted: a full disk is nobody's input's fault.
NO_SPACE_RETRY_S = 60.0
INTAKE_RESTART_S = 5.0  # a dead intake thread is restarted at most this often


class Service:
    def __init__(self, config: Config):
        self.config = config
        self.folders = Folders(config)
        self.folders.create()
        self.stop = threading.Event()
        self.work = threading.Event()  # set by the intake when it queued something
        self.store = Store(self.folders.state)
        self.watcher = InboxWatcher(config.inbox, config.settle_seconds, config.observer)
        self._intake_thread: threading.Thread | None = None
        self._intake_started = 0.0
        self._last_ping = 0.0
        self._stop_signal: int | None = None
        self._stop_announced = False
        self._gallery_failures = -1  # failed jobs the gallery shows; -1: not built yet
        self._held_until = 0.0  # monotonic time before which nothing starts (a full disk)
        self._unfinished: set[int] = set()  # jobs whose publication or disposal failed; retried

    def serve(self) -> int:
        self._handle_signals()
        requeued = self.store.requeue_interrupted()
        if requeued:
            logger.info(f"{requeued} interrupted run(s) queued again; they resume from their checkpoints")
        tidied = self.folders.tidy()
        if tidied:
            logger.info(f"removed {tidied} temporary file(s) or reserved folder(s) an interruption left behind")
        self.runner = Runner(self.config, self.folders, self.folders.input_path, self._heartbeat)
        tuning.apply(self.config.performance, self.runner.device)
        network, _ = self.runner.network(self.config.defaults.backbone)  # load once, before saying READY
        self.capacity = Capacity(self.config, self.runner.device)
        if self.config.scheduler.calibrate:
            self.capacity.calibrate(self.store, network, self.config.defaults.backbone)
        self.workers = Workers(self.runner, self.folders, self.stop, self.work.set)
        gc.collect()  # nothing of start-up's garbage is frozen with what lives on
        # The ~400 000 objects of torch, matplotlib and pydantic live as long as the process: out
        # of the collector's sight, the collection before each run's peak measurement takes
        # microseconds instead of a fifth of a second.
        gc.freeze()
        for job in self.store.jobs(*ACTIVE):
            self._finish_if_complete(job.id)
        self._rebuild_gallery()
        # Watching before READY: a file written from then on is seen being written, so a copy
        # that stalls half way is never taken for a finished one.
        self.watcher.start()
        self._start_intake()
        notify("READY=1", "STATUS=watching the inbox")
        logger.info(f"nst-batch serving: {self.config.summary()}; device {self.runner.device}")
        while not self.stop.is_set():
            for work in self.workers.finished():
                self._settle(work)
            if not self._dispatch() and not self.workers.active:
                self._idle()
            else:
                self._heartbeat()
                self.work.wait(BUSY_POLL_S)
                self.work.clear()
        self._announce_stop()
        notify("STOPPING=1")
        self.workers.join()  # each running run sees the stop, checkpoints and returns
        for work in self.workers.finished():
            self._settle(work)
        self._intake_thread.join(timeout=10)
        self.watcher.stop()
        self.store.close()
        return 0

    def _handle_signals(self) -> None:
        def request_stop(signum, frame) -> None:
            # Events only: logging here could raise or deadlock if the interrupted code holds a
            # sink's lock. The main thread says what happened (_announce_stop).
            self.stop.set()
            self.work.set()
            self.watcher.wake.set()  # the intake may be waiting up to rescan_seconds
            self._stop_signal = signum

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def _announce_stop(self) -> None:
        """Log the stop request once, from the main thread (never from the signal handler)."""
        if self.stop.is_set() and not self._stop_announced:
            self._stop_announced = True
            cause = signal.Signals(self._stop_signal).name if self._stop_signal else "stop"
            logger.info(f"{cause} received: stop requested; no new run starts, the running one checkpoints")

    # --- intake thread ---------------------------------------------------------------------

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

    # --- main thread -----------------------------------------------------------------------

    def _idle(self) -> None:
        counts = self.store.counts()
        if counts.get("failed", 0) != self._gallery_failures:  # failed by the intake, not by a run
            self._rebuild_gallery()
        notify(f"STATUS=idle; {counts.get('queued', 0)} queued, {counts.get('done', 0)} done, {counts.get('failed', 0)} failed")
        self._heartbeat()
        self.work.wait(1.0)
        self.work.clear()

    def _heartbeat(self) -> None:
        self._announce_stop()
        if not self._intake_alive():
            return
        now = time.monotonic()
        if now - self._last_ping >= 1.0:
            self._last_ping = now
            notify("WATCHDOG=1")

    def _hold(self, reason: str) -> None:
        """Start nothing and finish nothing for NO_SPACE_RETRY_S: the disk may fill again at once."""
        self._held_until = time.monotonic() + NO_SPACE_RETRY_S
        logger.warning(f"{reason}; trying again in {NO_SPACE_RETRY_S:g} s, no run starts meanwhile")

    def _held(self) -> bool:
        return time.monotonic() < self._held_until

    def _dispatch(self) -> int:
        """Start every queued run (or batch) that fits now; return how many pieces of work started."""
        if self._held():
            return 0
        for job_id in sorted(self._unfinished):
            self._unfinished.discard(job_id)
            self._finish_if_complete(job_id)
        if self._held():  # finishing one failed again
            return 0
        queued = []
        wanted = 4 * self.capacity.max_concurrent * self.capacity.max_batch
        window = min(MAX_DISPATCH_WINDOW, max(DISPATCH_WINDOW, wanted))
        for run in self.store.queued_runs(limit=window):
            if run.attempts >= self.config.max_attempts:  # it was running each time the daemon died
                self.store.fail_run(run.id, f"the daemon stopped during each of {run.attempts} attempts", retry=False)
                self._finish_if_complete(run.job_id)
            elif (run := self._fitted(run)) is not None:
                queued.append(run)
        if not queued:
            return 0
        needs = {run.id: self.capacity.need(self.store, run) for run in queued}
        candidates = [
            Candidate(r.id, r.job_id, r.idx, r.priority, needs[r.id], r.alone, self.runner.batch_key(r),
                      self.capacity.shared_bytes(self.store, r))
            for r in queued
        ]
        active = [Active(w.runs[0][1].id, w.need_bytes, w.alone) for w in self.workers.active]
        chosen = admit(
            candidates, active, self.capacity.budget, self.capacity.max_concurrent, self.capacity.max_batch
        )
        by_id = {run.id: run for run in queued}
        for batch in chosen:
            runs = []
            for run_id in batch.run_ids:
                self.store.start_run(by_id[run_id])
                run = self.store.run(run_id)
                runs.append((self.store.job(run.job_id), run))
            self.workers.start(Work(runs, batch.need_bytes))
        if chosen:
            labels = "; ".join(w.labels for w in self.workers.active)
            notify(f"STATUS=running {labels}; {self.store.run_counts().get('queued', 0)} more queued")
        return len(chosen)

    def _fitted(self, run: RunRecord) -> RunRecord | None:
        """The run, changed by the too_big policy if it cannot fit even alone; None if refused."""
        fit = self.capacity.fit_alone(self.store, run)
        log = logger.bind(job=f"job-{run.job_id}")
        if fit.refusal is not None:
            self.store.fail_run(run.id, fit.refusal, retry=False)
            log.error(f"{run.label}: {fit.refusal}")
            self._finish_if_complete(run.job_id)
            return None
        if fit.warning is not None:
            self.store.change_params(run.id, fit.params, fit.warning)
            log.warning(f"{run.label}: {fit.warning}")
            return self.store.run(run.id)
        return run

    def _settle(self, work: Work) -> None:
        """Record how each run of finished work ended; finish the jobs whose last run it was.
        A peak teaches the memory model only when one run had the device to itself."""
        batched = len(work.runs) > 1
        alone_peak = work.peak_bytes if not batched and not work.shared else 0
        for (job, run), outcome in zip(work.runs, work.outcomes, strict=True):
            self._settle_run(job, run, outcome, alone_peak, work.peak_bytes, batched)

    def _settle_run(
        self, job: JobRecord, run: RunRecord, outcome: Outcome, alone_peak: int, peak_bytes: int, batched: bool
    ) -> None:
        log = logger.bind(job=job.label)
        if outcome.status in ("done", "out_of_memory") and alone_peak:
            last_scale = outcome.last_scale_iterations if outcome.status == "done" else 10**6
            self.capacity.learn(self.store, run, alone_peak, outcome.iterations, last_scale, outcome.seconds, outcome.fp32)
        if outcome.status == "done":
            self.store.finish_run(run.id, outcome.seconds, None if batched else peak_bytes or None)
        elif outcome.status == "stopped":
            self.store.requeue_run(run.id)
        elif outcome.status == "no_space":
            self.store.requeue_run(run.id, outcome.error)
            self._hold(f"{run.label}: {outcome.error}")
        elif outcome.status == "out_of_memory":
            # The record was read after this attempt began. A batch too big is not the run's fault.
            retry = batched or run.attempts < self.config.max_attempts
            self.store.retry_alone(run.id, outcome.error, retry, refund_attempt=batched)
            log.warning(f"{run.label}: {outcome.error}" + ("; it will run again alone" if retry else ""))
        elif outcome.status == "unusable" and run.attempts < self.config.max_attempts and (
            retry := another_try(run.params, run.attempts, run.varying)
        ):
            params, change = retry
            warning = "; ".join(filter(None, [run.warning, f"{outcome.error}; tried again with {change}"]))
            self.store.change_params(run.id, params, warning)
            self.store.fail_run(run.id, outcome.error, retry=True)
            log.warning(f"{run.label}: {outcome.error}; trying again with {change}")
        else:
            retry = outcome.status == "retry" and run.attempts < self.config.max_attempts
            self.store.fail_run(run.id, outcome.error, retry=retry)
            log.warning(f"{run.label}: {outcome.error}" + (" (will retry)" if retry else ""))
        self._finish_if_complete(run.job_id)

    def _finish_if_complete(self, job_id: int) -> None:
        """Publish a job whose runs have all ended; move its inputs to the archive or failed/.
        Every step can be repeated, so one that fails (a full disk) is simply tried again later."""
        job = self.store.job(job_id)
        if job.status not in ACTIVE or self.store.has_active_runs(job_id):  # cheap: this follows every run
            return
        runs = self.store.runs(job_id)
        try:
            self._finish(job, runs)
        except OSError as error:
            self._unfinished.add(job_id)
            self._hold(f"{job.name}: could not finish the job: {error}")

    def _finish(self, job: JobRecord, runs: list[RunRecord]) -> None:
        job_id = job.id
        log = logger.bind(job=job.label)
        failed = [r for r in runs if r.status == "failed"]
        staging = self.folders.staging_dir(job_id)
        if len(failed) < len(runs):
            single = runs[0].label if len(runs) == 1 else None
            if single is None:
                self._draw_sweep(job, staging, runs)
            folder = publish(staging, self.folders.outbox, job.outbox_name, self._job_json(job, runs), single)
            log.info(f"{job.name}: results in {folder}")
        else:
            self._keep_log(job_id)
        shutil.rmtree(staging, ignore_errors=True)
        for run in runs:
            self.folders.checkpoint(run.id).unlink(missing_ok=True)
        if failed:
            reason = "\n".join(f"{r.label}: {r.error}" for r in failed)
            folder = dispose_failure(self.folders, job_id, job.name, reason)
            self.store.set_job_status(job_id, "failed", reason)
            where = f"inputs and error.txt in {folder}" if folder else "its folder had already gone to failed/"
            log.error(f"{job.name} failed ({len(failed)} of {len(runs)} results); {where}")
        else:
            dispose_success(self.folders, job_id, job.name, self.config.on_success)
            self.store.set_job_status(job_id, "done")
        self._rebuild_gallery()

    def _draw_sweep(self, job: JobRecord, staging: Path, runs: list[RunRecord]) -> None:
        """sweep.jpg: the results of a many-result job side by side, labelled with what varies."""
        if (staging / "sweep.jpg").exists():  # a result may itself be called sweep.jpg
            return
        results = [{"label": r.label, "status": r.status, "content": r.content, "styles": list(r.styles),
                    "varying": r.varying} for r in runs]
        try:
            entries = sweep_entries(staging, results)
            if entries:
                write_sweep_sheet(staging / "sweep.jpg", entries)
        except OSError:
            raise
        except Exception:  # a picture that cannot be drawn must not cost the job
            logger.bind(job=job.label).exception(f"{job.name}: could not draw sweep.jpg")

    def _rebuild_gallery(self) -> None:
        """outbox/index.html, after every job and whenever the intake failed one."""
        try:
            gallery.rebuild(self.folders.outbox, gallery.failed_jobs(self.store.recent_failures(limit=200)))
            self._gallery_failures = self.store.counts().get("failed", 0)
        except Exception:  # the gallery is a view: never worth stopping the daemon for
            logger.exception("could not rebuild outbox/index.html")

    def _keep_log(self, job_id: int) -> None:
        """No result to publish: the job's log goes with its inputs (to failed/), not away."""
        log = self.folders.staging_dir(job_id) / "log.txt"
        inputs = self.folders.job_dir(job_id)
        if log.exists() and inputs.is_dir():
            shutil.move(log, inputs / "log.txt")  # the outbox and state_dir may be different filesystems

    def _job_json(self, job: JobRecord, runs: list[RunRecord]) -> dict:
        # The weights are per result (each run's summary): a sweep may change the backbone.
        return {
            "id": job.id,
            "name": job.name,
            "kind": job.kind,
            "status": "failed" if any(r.status == "failed" for r in runs) else "done",
            "inputs": {"files": list(job.files), "sha256": job.hashes, "sidecar": job.sidecar},
            "created": job.created,
            "finished": time.time(),
            "device": str(self.runner.device),
            "versions": versions(),
            "results": [
                {
                    "label": r.label,
                    "status": r.status,
                    "error": r.error,
                    "content": r.content,
                    "styles": list(r.styles),
                    "varying": r.varying,
                    "attempts": r.attempts,
                    "warning": r.warning,
                    "params": r.params.explicit(),
                }
                for r in runs
            ],
        }


def serve(config: Config) -> int:
    return Service(config).serve()
