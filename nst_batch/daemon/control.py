"""Control of a running daemon through the job database: `nst-batch pause`, `resume`, `priority`,
`cancel` and `retry`.

The command line writes; the daemon's main thread reads. Pause and priority are plain values in
the store (the dispatcher reads them before each start). Cancel and retry move files, so they are
*requests*: the command line records one, the daemon carries it out within a tick of its loop and
writes its one-line answer back, which the command line prints. What decides is pure
(``parse_ref``, ``pick``, ``cancel_refusal``, ``retry_refusal``); ``Controller`` does it.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from ..results.report import ACTIVE_RUNS, JobStatus, RunStatus
from ..util.errors import InputError
from .claims import take_back
from .finishing import Finisher
from .folders import Folders
from .store import Action, JobRecord, Pause, Request, RunRecord, Store
from .workers import Workers

_JOB_ID = re.compile(r"(?:job-)?(\d+)")
_RUN_ID = re.compile(r"run-(\d+)")
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)
CANCELLABLE = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class Target:
    """What a command names: a job, or one run of it."""

    job: JobRecord
    run: RunRecord | None = None

    def describe(self) -> str:
        text = f"{self.job.label} {self.job.name}"
        return text + (f" run-{self.run.id} ({self.run.label})" if self.run is not None else "")


def parse_ref(text: str) -> tuple[str, int | str]:
    """("run", id) for ``run-12``; ("job", id) for ``job-5`` or ``5``; else ("name", text) (pure)."""
    text = text.strip()
    if match := _RUN_ID.fullmatch(text):
        return "run", int(match.group(1))
    if match := _JOB_ID.fullmatch(text):
        return "job", int(match.group(1))
    return "name", text


def pick(ref: str, named: Sequence[JobRecord]) -> JobRecord:
    """The one job a name names (pure); a name used twice is refused with every id."""
    if not named:
        raise InputError(f"no job is named {ref!r}: `nst-batch status --all` lists the jobs with their ids")
    if len(named) > 1:
        ids = ", ".join(f"{job.label} ({job.status})" for job in named)
        raise InputError(f"{ref!r} is ambiguous: {len(named)} jobs have that name ({ids}); give the id instead")
    return named[0]


def resolve(store: Store, ref: str) -> Target:
    """The job or run ``ref`` names, as `status` shows them: ``job-5``, ``5``, a name, ``run-12``."""
    kind, value = parse_ref(ref)
    if kind == "run":
        run = store.find_run(int(value))
        if run is None:
            raise InputError(f"no run {ref}: `nst-batch status` shows the running runs' ids")
        return Target(store.job(run.job_id), run)
    if kind == "job":
        job = store.find_job(int(value))
        if job is None and not (named := store.jobs_named(ref)):
            raise InputError(f"no job {ref}: `nst-batch status --all` lists the jobs with their ids")
        return Target(job if job is not None else pick(ref, named))
    return Target(pick(ref, store.jobs_named(str(value))))


class Refusal(str):
    """An answer that changed nothing: the command line ends with exit status 2."""


def cancel_refusal(target: Target) -> str | None:
    """Why ``target`` cannot be cancelled (pure); None: it can."""
    job, run = target.job, target.run
    if job.status == JobStatus.CLAIMING:
        return f"{target.describe()} is being claimed; try again in a few seconds"
    if job.status == JobStatus.CANCELLING:
        return None if run is None else f"{target.describe()}: its job is being cancelled already"
    if job.status not in CANCELLABLE:
        return f"{target.describe()} is {job.status} already: nothing to cancel"
    if run is not None and run.status not in ACTIVE_RUNS:
        return f"{target.describe()} is {run.status} already: nothing to cancel"
    return None


def retry_refusal(target: Target) -> str | None:
    """Why ``target`` cannot be retried (pure); None: it can."""
    if target.run is not None:
        return f"{target.describe()}: retry takes a job (its id or name), not a run"
    if target.job.status not in RETRYABLE:
        return f"{target.describe()} is {target.job.status}: only a failed or cancelled job can be retried"
    return None


def inputs_place(folders: Folders, job: JobRecord) -> Path | None:
    """Where a failed or cancelled job's inputs are: the folder the store recorded, else (a job
    failed by an older nst-batch) ``failed/NAME`` if there is one."""
    if job.place:
        return folders.state / job.place
    for parent in (folders.failed, folders.cancelled):
        if (parent / job.name).is_dir():
            return parent / job.name
    return None


class Controller:
    """Carries out pause and the requests, on the main thread, once per tick of its loop."""

    def __init__(self, store: Store, folders: Folders, workers: Workers, finisher: Finisher, wake: Callable[[], None]):
        self.store, self.folders, self.workers, self.finisher = store, folders, workers, finisher
        self.wake = wake  # the intake: a retried job is claimed again there
        self.pause = Pause.OFF

    @property
    def paused(self) -> bool:
        return self.pause != Pause.OFF

    def tick(self) -> None:
        pause = self.store.pause()
        if pause != self.pause:
            self.pause = pause
            logger.info(
                "resumed: queued runs start again" if pause == Pause.OFF
                else "paused: no new run starts" + ("; running runs checkpoint and wait" if pause == Pause.NOW else "")
            )
            self.finisher.rebuild_gallery()  # the gallery says so
        if pause == Pause.NOW:
            for work in self.workers.active:
                work.halt.pause()
        for request in self.store.pending_requests():
            try:
                answer = self._carry_out(request)
            except Exception as error:  # a bug, or a folder moved by hand: answered, never the loop's end
                logger.opt(exception=error).error(f"request {request.id} ({request.action}) failed")
                answer = Refusal(f"could not {request.action} job-{request.job_id}: {type(error).__name__}: {error}")
            self.store.answer(request.id, answer, refused=isinstance(answer, Refusal))

    def _carry_out(self, request: Request) -> str:
        job = self.store.find_job(request.job_id)
        run = self.store.find_run(request.run_id) if request.run_id is not None else None
        if job is None or (request.run_id is not None and run is None):
            return Refusal(f"job-{request.job_id}: no such job or run any more")
        target = Target(job, run)
        if request.action == Action.CANCEL:
            return self._cancel(target)
        return self._retry(target, request.payload.get("overrides", {}))

    def _cancel(self, target: Target) -> str:
        refusal = cancel_refusal(target)
        if refusal is not None:
            return Refusal(refusal)
        job, run = target.job, target.run
        log = logger.bind(job=job.label)
        # Here, on the main thread, no run ends and no job is handed to the publisher meanwhile.
        if run is None:
            if not self.store.cancel_job(job.id):
                return Refusal(f"{target.describe()}: too late, all its results are made and it is being published")
            stopping = self._halt(lambda r: r.job_id == job.id)
        else:
            stopping = self._halt(lambda r: r.id == run.id)
            if not stopping and run.status == RunStatus.RUNNING:
                return Refusal(f"{target.describe()}: too late, its result is being written")
            if not stopping:
                self.store.cancel_run(run.id)
        self.finisher.finish_if_complete(job.id)
        where = f"its inputs go to {self.folders.cancelled.name}/" if run is None else "the other results go on"
        answer = f"{target.describe()}: cancelled" + (f", its running run stops now; {where}" if stopping else f"; {where}")
        log.info(answer)
        return answer

    def _halt(self, which: Callable[[RunRecord], bool]) -> bool:
        """Tell the work running the chosen runs to stop them; whether any was running."""
        halted = False
        for work in self.workers.active:
            for _, run in work.runs:
                if which(run):
                    work.halt.cancel(run.id)
                    halted = True
        return halted

    def _retry(self, target: Target, overrides: dict[str, Any]) -> str:
        refusal = retry_refusal(target)
        if refusal is not None:
            return Refusal(refusal)
        job = target.job
        place = inputs_place(self.folders, job)
        if (place is None or not place.is_dir()) and not self.folders.job_dir(job.id).is_dir():
            return Refusal(
                f"{target.describe()}: its inputs are not in {job.place or 'failed/' + job.name} any more; drop them again"
            )
        take_back(self.folders, job.id, place)
        self.store.reclaim(job.id, overrides)
        self.wake()
        changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
        answer = f"{target.describe()}: queued again from {place.relative_to(self.folders.state) if place else 'jobs/'}"
        answer += f" with {changed}" if changed else ""
        logger.bind(job=job.label).info(answer + "; its attempts count afresh")
        return answer
