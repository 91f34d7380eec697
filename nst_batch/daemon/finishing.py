"""What happens after a run: its outcome recorded (done, retried, requeued or failed), the memory
model taught by its peak, and once a job's last run has ended the job finished: its report
published to the outbox, its inputs archived or moved to failed/, the gallery rebuilt.

Every step can be repeated, so one that fails (a full disk) is tried again later; meanwhile the
disk is *held*: nothing starts and nothing is published for ``NO_SPACE_RETRY_S``.
"""

import shutil
import time
from collections.abc import Mapping
from typing import Any

import torch
from loguru import logger

from ..engine import StyleParams
from ..results import gallery
from ..results.outbox import publish
from ..results.report import ACTIVE_JOBS, Inputs, JobReport, JobStatus, ResultReport, RunStatus, versions
from ..settings.config import Config
from .capacity import Capacity
from .claims import dispose_failure, dispose_success
from .folders import Folders
from .runner import Ending, Outcome
from .store import JobRecord, RunRecord, Store
from .workers import Work

# A full disk: no run starts, nor is a finished job published, for this long; then they are tried
# again. Attempts are not counted: a full disk is nobody's input's fault.
NO_SPACE_RETRY_S = 60.0
GALLERY_FAILURES_SHOWN = 200


def another_try(params: StyleParams, attempt: int, varying: Mapping[str, Any]) -> tuple[StyleParams, str] | None:
    """Parameters for trying an unusable result again (pure): another seed at the first retry,
    the other optimizer at the second, never a key the result is named by (a sweep's ``varying``);
    and what changed, for the run's warning. None: nothing is left to try."""
    tries = []
    if "seed" not in varying:
        seed = (params.seed if params.seed is not None else 0) + 1
        tries.append(({"seed": seed}, f"seed {seed}"))
    if "optimizer" not in varying and "lr" not in varying:
        other = "adam" if params.optimizer == "lbfgs" else "lbfgs"
        tries.append(({"optimizer": other, "lr": None}, f"optimizer {other}"))
    if attempt > len(tries):
        return None
    change, text = tries[attempt - 1]
    return params.with_overrides(change), text


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
            )
            for r in runs
        ),
    )


class Finisher:
    """Settles finished work and finishes complete jobs; the main thread's only."""

    def __init__(self, config: Config, folders: Folders, store: Store, capacity: Capacity, device: torch.device):
        self.config, self.folders, self.store = config, folders, store
        self.capacity, self.device = capacity, device
        self._held_until = 0.0  # monotonic time before which nothing starts or is published
        self._unfinished: set[int] = set()  # jobs whose publication or disposal failed; retried
        self._gallery_failures = -1  # failed jobs the gallery shows; -1: not built yet

    # --- the disk ----------------------------------------------------------------------------

    def hold(self, reason: str) -> None:
        """Start nothing and finish nothing for NO_SPACE_RETRY_S: the disk may fill again at once."""
        self._held_until = time.monotonic() + NO_SPACE_RETRY_S
        logger.warning(f"{reason}; trying again in {NO_SPACE_RETRY_S:g} s, no run starts meanwhile")

    def held(self) -> bool:
        return time.monotonic() < self._held_until

    # --- runs ------------------------------------------------------------------------------

    def settle(self, work: Work) -> None:
        """Record how each run of finished work ended; finish the jobs whose last run it was.
        A peak teaches the memory model only when one run had the device to itself."""
        batched = len(work.runs) > 1
        alone_peak = work.peak_bytes if not batched and not work.shared else 0
        for (job, run), outcome in zip(work.runs, work.outcomes, strict=True):
            if outcome.ending in (Ending.DONE, Ending.OUT_OF_MEMORY) and alone_peak:
                last_scale = outcome.last_scale_iterations if outcome.ending == Ending.DONE else 10**6
                self.capacity.learn(
                    self.store, run, alone_peak, outcome.iterations, last_scale, outcome.seconds, outcome.fp32
                )
            self._record(job, run, outcome, None if batched else work.peak_bytes or None, batched)
            self.finish_if_complete(run.job_id)

    def _record(self, job: JobRecord, run: RunRecord, outcome: Outcome, peak_bytes: int | None, batched: bool) -> None:
        log = logger.bind(job=job.label)
        attempts_left = run.attempts < self.config.max_attempts
        match outcome.ending:
            case Ending.DONE:
                self.store.finish_run(run.id, outcome.seconds, peak_bytes)
            case Ending.STOPPED:
                self.store.requeue_run(run.id)
            case Ending.NO_SPACE:
                self.store.requeue_run(run.id, outcome.error)
                self.hold(f"{run.label}: {outcome.error}")
            case Ending.OUT_OF_MEMORY:
                # The record was read after this attempt began. A batch too big is not the run's fault.
                retry = batched or attempts_left
                self.store.retry_alone(run.id, outcome.error, retry, refund_attempt=batched)
                log.warning(f"{run.label}: {outcome.error}" + ("; it will run again alone" if retry else ""))
            case Ending.UNUSABLE if attempts_left and (retry := another_try(run.params, run.attempts, run.varying)):
                params, change = retry
                warning = "; ".join(filter(None, [run.warning, f"{outcome.error}; tried again with {change}"]))
                self.store.change_params(run.id, params, warning)
                self.store.fail_run(run.id, outcome.error, retry=True)
                log.warning(f"{run.label}: {outcome.error}; trying again with {change}")
            case _:
                retry = outcome.ending == Ending.RETRY and attempts_left
                self.store.fail_run(run.id, outcome.error, retry=retry)
                log.warning(f"{run.label}: {outcome.error}" + (" (will retry)" if retry else ""))

    def give_up(self, run: RunRecord, reason: str) -> None:
        """Fail a run before it starts (it cannot fit; it was running each time the daemon died)."""
        self.store.fail_run(run.id, reason, retry=False)
        self.finish_if_complete(run.job_id)

    # --- jobs ------------------------------------------------------------------------------

    def finish_active(self) -> None:
        """At start-up: finish every job whose runs had all ended before a crash."""
        for job in self.store.jobs(*ACTIVE_JOBS):
            self.finish_if_complete(job.id)

    def retry_unfinished(self) -> None:
        for job_id in sorted(self._unfinished):
            self._unfinished.discard(job_id)
            self.finish_if_complete(job_id)

    def finish_if_complete(self, job_id: int) -> None:
        """Publish a job whose runs have all ended; move its inputs to the archive or failed/."""
        job = self.store.job(job_id)
        if job.status not in ACTIVE_JOBS or self.store.has_active_runs(job_id):  # cheap: this follows every run
            return
        try:
            self._finish(job, self.store.runs(job_id))
        except OSError as error:
            self._unfinished.add(job_id)
            self.hold(f"{job.name}: could not finish the job: {error}")

    def _finish(self, job: JobRecord, runs: list[RunRecord]) -> None:
        log = logger.bind(job=job.label)
        failed = [r for r in runs if r.status == RunStatus.FAILED]
        staging = self.folders.staging_dir(job.id)
        if len(failed) < len(runs):
            folder = publish(staging, self.folders.outbox, job.outbox_name, job_report(job, runs, self.device))
            log.info(f"{job.name}: results in {folder}")
        else:
            self._keep_log(job.id)
        shutil.rmtree(staging, ignore_errors=True)
        for run in runs:
            self.folders.checkpoint(run.id).unlink(missing_ok=True)
        if failed:
            reason = "\n".join(f"{r.label}: {r.error}" for r in failed)
            folder = dispose_failure(self.folders, job.id, job.name, reason)
            self.store.set_job_status(job.id, JobStatus.FAILED, reason)
            where = f"inputs and error.txt in {folder}" if folder else "its folder had already gone to failed/"
            log.error(f"{job.name} failed ({len(failed)} of {len(runs)} results); {where}")
        else:
            dispose_success(self.folders, job.id, job.name, self.config.on_success)
            self.store.set_job_status(job.id, JobStatus.DONE)
        self.rebuild_gallery()

    def _keep_log(self, job_id: int) -> None:
        """No result to publish: the job's log goes with its inputs (to failed/), not away."""
        log = self.folders.staging_dir(job_id) / "log.txt"
        inputs = self.folders.job_dir(job_id)
        if log.exists() and inputs.is_dir():
            shutil.move(log, inputs / "log.txt")  # the outbox and state_dir may be different filesystems

    # --- the gallery -----------------------------------------------------------------------

    def gallery_stale(self) -> bool:
        """Whether jobs failed (by the intake, not by a run) since the gallery was last built."""
        return self.store.counts().get(JobStatus.FAILED, 0) != self._gallery_failures

    def rebuild_gallery(self) -> None:
        """outbox/index.html, after every job and whenever the intake failed one."""
        try:
            failures = self.store.recent_failures(limit=GALLERY_FAILURES_SHOWN)
            gallery.rebuild(self.folders.outbox, gallery.failed_jobs(failures))
            self._gallery_failures = self.store.counts().get(JobStatus.FAILED, 0)
        except Exception:  # the gallery is a view: never worth stopping the daemon for
            logger.exception("could not rebuild outbox/index.html")
