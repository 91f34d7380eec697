"""The finishing thread: everything a person looks at is made here, off the runs' threads and
off the main loop, while the device already runs the next work.

- Finished runs' files are written and drawn (``results.result.write_run``): the image,
  losses.csv, losses.png, compare.jpg, the GIF and the run summary.
- Complete jobs are published (``results.outbox.publish``), their inputs archived or moved to
  failed/, and the gallery rebuilt, at most every ``GALLERY_EVERY_S`` while jobs keep coming.

Bounded: at most ``WRITES_WAITING`` pieces of work wait to be written; a worker with more waits,
holding its place on the device, rather than memory growing without limit. Durable: a run is
recorded done only once its files are written, and publishing is a rename that can be repeated,
so a crash anywhere in between publishes each result exactly once (the run is redone from its
checkpoint). A full disk *holds* the queue for ``NO_SPACE_RETRY_S``: no run starts and no job is
published, then both are tried again. Another failure to publish is logged and tried again after
the same pause, without holding the rest.
"""

import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence

import torch
from loguru import logger

from ..results import gallery
from ..results.outbox import publish
from ..results.report import (
    UNFINISHED_JOBS,
    Inputs,
    JobReport,
    JobStatus,
    ResultReport,
    RunStatus,
    job_ending,
    versions,
)
from ..results.result import write_run
from ..settings.config import Config
from .claims import dispose_cancelled, dispose_failure, dispose_success
from .folders import Folders
from .preview import FOLDER as PREVIEWS
from .preview import preview_name
from .runner import Ending, Outcome, failure_outcome, no_space
from .store import JobRecord, Pause, RunRecord, Store

# A full disk: no run starts, nor is a finished job published, for this long; then they are tried
# again. Attempts are not counted: a full disk is nobody's input's fault.
NO_SPACE_RETRY_S = 60.0
WRITES_WAITING = 4  # pieces of finished work waiting for their files, at most
GALLERY_EVERY_S = 2.0  # while jobs keep being published; once they stop, at once
GALLERY_FAILURES_SHOWN = 200
PAUSE_TEXT = {Pause.AFTER_RUNS: "no new run starts; running runs finish", Pause.NOW: "no run runs; they wait, checkpointed"}


def job_report(job: JobRecord, runs: list[RunRecord], device: torch.device) -> JobReport:
    """What the store knows of a finished job, before its runs' summaries are merged in. The
    weights are per result (in each run's summary): a sweep may change the backbone."""
    return JobReport(
        id=job.id,
        name=job.name,
        kind=job.kind,
        status=JobStatus.FAILED if any(r.status == RunStatus.FAILED for r in runs) else JobStatus.DONE,
        inputs=Inputs(files=job.files, sha256=job.hashes, sidecar=job.sidecar),
        created=job.created,
        finished=time.time(),
        device=str(device),
        versions=versions(),
        results=tuple(
            ResultReport(
                label=r.label, status=r.status, error=r.error, content=r.content, styles=r.styles,
                varying=r.varying, attempts=r.attempts, warning=r.warning, params=r.params.explicit(),
                **({"node": r.node, "device": r.device} if r.node is not None else {}),
            )
            for r in runs
        ),
    )


class Publisher:
    """The finishing thread (see the module's doc). ``write`` and ``publish`` may be called from
    any thread; everything else of it runs on its own."""

    def __init__(
        self, config: Config, folders: Folders, device: torch.device,
        forget: Callable[[list[RunRecord]], None] | None = None,
    ):
        self.config, self.folders, self.device = config, folders, device
        # Removes ended runs' checkpoints: here, or on the nodes that ran them (the ray executor).
        self.forget = forget or self._forget_here
        self._tasks: queue.Queue[Callable[[Store], None] | None] = queue.Queue()
        self._write_slots = threading.BoundedSemaphore(WRITES_WAITING)
        self._lock = threading.Lock()
        self._pending: set[int] = set()  # jobs waiting to be published
        self._unfinished: set[int] = set()  # jobs whose publication failed; retried after _retry_at
        self._retry_at = 0.0
        self._held_until = 0.0  # monotonic time before which nothing starts or is published
        self._gallery_due: float | None = None  # monotonic time of the next wanted rebuild
        self._gallery_built = 0.0
        self._gallery_failures = -1  # failed jobs the gallery shows; -1: not built yet
        self._thread: threading.Thread | None = None
        self.writes_begun = 0  # how many pieces of work it has begun writing, ever
        self.writing = False

    def _forget_here(self, runs: list[RunRecord]) -> None:
        for run in runs:
            self.folders.checkpoint(run.id).unlink(missing_ok=True)

    # --- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="publisher", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Finish everything asked for so far, then end the thread."""
        if self._thread is not None:
            self._tasks.put(None)
            self._thread.join()
            self._thread = None

    def _serve(self) -> None:
        store = Store(self.folders.state)  # a connection of its own: SQLite objects stay in their thread
        try:
            while True:
                try:
                    task = self._tasks.get(timeout=self._until_gallery())
                except queue.Empty:
                    self._rebuild_gallery(store)
                    continue
                if task is None:  # stop, with the gallery up to date
                    if self._gallery_due is not None:
                        self._rebuild_gallery(store)
                    return
                try:
                    task(store)
                except Exception:  # a bug: logged, and the thread goes on with the next task
                    logger.exception("the publisher failed a task")
                if self._gallery_due is not None and time.monotonic() >= self._gallery_due:  # even while busy
                    self._rebuild_gallery(store)
        finally:
            store.close()

    def _until_gallery(self) -> float | None:
        if self._gallery_due is None:
            return None
        return max(0.0, self._gallery_due - time.monotonic())

    # --- the disk --------------------------------------------------------------------------

    def hold(self, reason: str) -> None:
        """Start nothing and publish nothing for NO_SPACE_RETRY_S: the disk may fill again at once."""
        self._held_until = time.monotonic() + NO_SPACE_RETRY_S
        logger.warning(f"{reason}; trying again in {NO_SPACE_RETRY_S:g} s, no run starts meanwhile")

    def held(self) -> bool:
        return time.monotonic() < self._held_until

    # --- runs ------------------------------------------------------------------------------

    def write(self, outcomes: Sequence[Outcome], then: Callable[[list[Outcome]], None]) -> None:
        """Write the results among ``outcomes``; ``then`` gets the outcomes as they finally are
        (a result that could not be written is not done). Waits while WRITES_WAITING are waiting."""
        self._write_slots.acquire()
        self._tasks.put(lambda store: self._write(outcomes, then))

    def _write(self, outcomes: Sequence[Outcome], then: Callable[[list[Outcome]], None]) -> None:
        written = list(outcomes)
        self.writes_begun += 1
        self.writing = True
        try:
            for i, outcome in enumerate(outcomes):
                try:
                    written[i] = self._written(outcome)
                except Exception as error:  # a bug: the run is tried again, and its work still ends
                    logger.exception("the publisher could not write a result")
                    written[i] = Outcome(Ending.RETRY, f"could not write the result: {type(error).__name__}: {error}")
        finally:
            self.writing = False
            self._write_slots.release()
            then(written)  # always: a work whose outcomes never come would hold the daemon for good

    def _written(self, outcome: Outcome) -> Outcome:
        if outcome.unwritten is None:
            return outcome
        staging, run = outcome.unwritten.staging, outcome.unwritten.run
        log = logger.bind(job=run.job)
        try:
            write_run(staging, self.config.output_format, run)
        except Exception as error:  # the disk full, the outbox unmounted: not done; the retry resumes from the checkpoint
            failed = failure_outcome(error, "could not write the result: ")
            if failed.ending == Ending.OUT_OF_MEMORY:  # the host's memory, writing: nothing for the device's model
                failed = Outcome(Ending.RETRY, failed.error)
            if failed.ending == Ending.RETRY:  # not the disk: a bug, with its traceback
                log.opt(exception=error).error(f"{run.label}: {failed.error}")
            else:
                log.warning(f"{run.label}: {failed.error}")
            return failed
        final = run.result.history[-1]
        log.info(f"{run.label}: done in {final.elapsed_s:.1f} s, {final.iteration} iterations, loss {final.total:.4g}")
        return outcome.written()

    # --- jobs ------------------------------------------------------------------------------

    def publish(self, job_id: int) -> None:
        """Publish the job, whose runs have all ended, unless that is already asked for."""
        with self._lock:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._tasks.put(lambda store: self._publish(store, job_id))

    def retry_unfinished(self) -> bool:
        """Ask again for the jobs whose publication failed, once their pause is over; whether any were."""
        with self._lock:
            if not self._unfinished or time.monotonic() < self._retry_at:
                return False
            unfinished, self._unfinished = self._unfinished, set()
        for job_id in sorted(unfinished):
            self.publish(job_id)
        return True

    def _publish(self, store: Store, job_id: int) -> None:
        with self._lock:
            self._pending.discard(job_id)
        if self.held():
            with self._lock:
                self._unfinished.add(job_id)
            return
        job = store.job(job_id)
        if job.status not in UNFINISHED_JOBS or store.has_active_runs(job_id):
            return
        try:
            self._finish(store, job, store.runs(job_id))
        except Exception as error:  # each step can be repeated: it is tried again later
            with self._lock:
                self._unfinished.add(job_id)
                self._retry_at = time.monotonic() + NO_SPACE_RETRY_S
            if no_space(error):
                self.hold(f"{job.name}: could not finish the job: {error}")
            else:
                logger.bind(job=job.label).opt(exception=error).error(
                    f"{job.name}: could not finish the job: {error}; trying again in {NO_SPACE_RETRY_S:g} s"
                )

    def _finish(self, store: Store, job: JobRecord, runs: list[RunRecord]) -> None:
        log = logger.bind(job=job.label)
        failed = [r for r in runs if r.status == RunStatus.FAILED]
        staging = self.folders.staging_dir(job.id)
        ending = job_ending(job.status, [r.status for r in runs])
        if ending != JobStatus.CANCELLED and any(r.status == RunStatus.DONE for r in runs):
            folder = publish(staging, self.folders.outbox, job.outbox_name, job_report(job, runs, self.device))
            log.info(f"{job.name}: results in {folder}")
        else:
            self._keep_log(job.id)
        shutil.rmtree(staging, ignore_errors=True)
        self.forget(runs)
        if ending == JobStatus.CANCELLED:
            done = sum(r.status == RunStatus.DONE for r in runs)
            note = f"{job.name} (job-{job.id}) was cancelled by `nst-batch cancel`"
            note += f"; {done} of its {len(runs)} result(s) had been made, none published" if done else ""
            note += f".\nRun `nst-batch retry job-{job.id}` to queue it again.\n"
            folder = dispose_cancelled(self.folders, job.id, job.name, note)
            if folder is not None:
                store.set_place(job.id, str(folder.relative_to(self.folders.state)))
            store.set_job_status(job.id, JobStatus.CANCELLED)
            log.info(f"{job.name} cancelled; inputs in {folder or 'cancelled/ already'}")
        elif failed:
            reason = "\n".join(f"{r.label}: {r.error}" for r in failed)
            folder = dispose_failure(self.folders, job.id, job.name, reason)
            if folder is not None:
                store.set_place(job.id, str(folder.relative_to(self.folders.state)))
            store.set_job_status(job.id, JobStatus.FAILED, reason)
            where = f"inputs and error.txt in {folder}" if folder else "its folder had already gone to failed/"
            log.error(f"{job.name} failed ({len(failed)} of {len(runs)} results); {where}")
        else:
            dispose_success(self.folders, job.id, job.name, self.config.on_success)
            store.set_job_status(job.id, JobStatus.DONE)
        self._want_gallery()

    def _running(self, store: Store) -> list[dict]:
        """The running runs, for the gallery's "running" section, each with its preview if it has one yet."""
        running = []
        for run in store.running_runs():
            preview = f"{PREVIEWS}/{preview_name(run.id)}"
            running.append({
                "run_id": run.id, "job": store.job(run.job_id).name, "label": run.label, "iteration": run.iteration,
                "total": run.total_iterations, "preview": preview if (self.folders.outbox / preview).exists() else None,
            })
        return running

    def _keep_log(self, job_id: int) -> None:
        """No result to publish: the job's log goes with its inputs (to failed/), not away."""
        log = self.folders.staging_dir(job_id) / "log.txt"
        inputs = self.folders.job_dir(job_id)
        if log.exists() and inputs.is_dir():
            shutil.move(log, inputs / "log.txt")  # the outbox and state_dir may be different filesystems

    # --- the gallery -----------------------------------------------------------------------

    def rebuild_gallery(self, failed_jobs: int | None = None) -> None:
        """Ask for outbox/index.html to be rebuilt; with ``failed_jobs`` (the store's count), only
        if jobs failed (by the intake, not by a run) since it was last built."""
        if failed_jobs is not None and failed_jobs == self._gallery_failures:
            return
        self._gallery_due = time.monotonic()
        self._tasks.put(lambda store: None)  # wakes the thread

    def preview_changed(self) -> None:
        """A running run's preview was written or removed (any thread): the gallery's running
        section is rebuilt, at most every GALLERY_EVERY_S."""
        self._want_gallery()
        self._tasks.put(lambda store: None)  # wakes the thread, which may be waiting for a task

    def _want_gallery(self) -> None:
        if self._gallery_due is None:
            self._gallery_due = max(time.monotonic(), self._gallery_built + GALLERY_EVERY_S)

    def _rebuild_gallery(self, store: Store) -> None:
        self._gallery_due = None
        try:
            failures = store.recent_failures(limit=GALLERY_FAILURES_SHOWN)
            cancelled = store.recent_failures(limit=GALLERY_FAILURES_SHOWN, status=JobStatus.CANCELLED)
            pause = store.pause()
            paused = None if pause == Pause.OFF else PAUSE_TEXT[pause]
            gallery.rebuild(
                self.folders.outbox, gallery.failed_jobs(failures), cancelled=gallery.failed_jobs(cancelled), paused=paused,
                running=self._running(store),
            )
            self._gallery_failures = store.counts().get(JobStatus.FAILED, 0)
        except Exception:  # the gallery is a view: never worth stopping the daemon for
            logger.exception("could not rebuild outbox/index.html")
        self._gallery_built = time.monotonic()
