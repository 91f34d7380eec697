"""What happens after a run, on the main thread: its outcome recorded (done, retried, requeued
or failed) and the memory model taught by its peak; once a job's last run has ended, the job is
handed to the ``publisher``, whose thread publishes it."""

from collections.abc import Mapping
from typing import Any

from loguru import logger

from ..engine import StyleParams
from ..results.report import UNFINISHED_JOBS, JobStatus
from ..settings.config import Config
from .capacity import Capacity
from .publisher import Publisher
from .runner import Ending, Outcome
from .store import JobRecord, RunRecord, Store
from .workers import Work


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


class Finisher:
    """Settles finished work and hands complete jobs to the publisher; the main thread's only."""

    def __init__(self, config: Config, store: Store, capacity: Capacity, publisher: Publisher):
        self.config, self.store, self.capacity, self.publisher = config, store, capacity, publisher

    def held(self) -> bool:
        """Whether a full disk holds everything (see ``publisher``)."""
        return self.publisher.held()

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
        if outcome.ending == Ending.CANCELLED or self.store.job(job.id).status == JobStatus.CANCELLING:
            # A job being cancelled keeps nothing of a run, even one that ended meanwhile.
            self.store.cancel_run(run.id)
            self.publisher.forget([run])
            log.info(f"{run.label}: cancelled")
            return
        match outcome.ending:
            case Ending.DONE:
                self.store.finish_run(run.id, outcome.seconds, peak_bytes)
            case Ending.STOPPED:
                self.store.requeue_run(run.id)
            case Ending.NO_SPACE:
                self.store.requeue_run(run.id, outcome.error)
                self.publisher.hold(f"{run.label}: {outcome.error}")
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
        for job in self.store.jobs(*UNFINISHED_JOBS):
            self.finish_if_complete(job.id)

    def retry_unfinished(self) -> bool:
        return self.publisher.retry_unfinished()

    def finish_if_complete(self, job_id: int) -> None:
        """Have a job whose runs have all ended published (on the publisher's thread)."""
        job = self.store.job(job_id)
        if job.status in UNFINISHED_JOBS and not self.store.has_active_runs(job_id):  # cheap: this follows every run
            self.publisher.publish(job_id)

    def rebuild_gallery(self) -> None:
        self.publisher.rebuild_gallery()

    def rebuild_gallery_if_stale(self) -> None:
        """When idle: jobs the intake failed since the last rebuild are shown."""
        self.publisher.rebuild_gallery(failed_jobs=self.store.counts().get(JobStatus.FAILED, 0))
