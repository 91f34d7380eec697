"""What the daemon tells people, and when (the main thread's part of notifications): a notice for
each job that fails or is done, and one summary when the queue drains, i.e. becomes empty after at
least one job ended since the last summary. The messages are pure functions of the records; the
``notifier`` sends them.

Job endings are found in the store, wherever they ended: the intake fails a bad submission, the
publisher a failed run's job. A job's ``updated`` is stamped before its write waits for the
database's lock (up to 30 s), so another thread's later stamp may be committed first: each look
also goes ``LOOK_BACK_S`` behind the last one, and skips the jobs already told (``Ends``). The
last summary's time is kept in the store, so a restart neither repeats a summary nor forgets a
night's jobs.
"""

import time
from collections.abc import Sequence
from pathlib import Path

from ..results.report import JobStatus
from ..util.text import format_duration
from .notifier import Notice, Notifier
from .store import JobRecord, Store

FAILURES_LISTED = 20
REASON_CHARS = 300
SUMMARY_SINCE = "summary_since"  # the control key: epoch seconds of the last summary
WAITING_STATES = (JobStatus.CLAIMING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)
LOOK_BACK_S = 90.0  # three times the longest wait of a write for the lock (the store's sqlite timeout, 30 s)


def _reason(job: JobRecord) -> str:
    text = (job.error or "no reason recorded").strip()
    first = text.splitlines()[0] if text else "no reason recorded"
    return first if len(first) <= REASON_CHARS else first[: REASON_CHARS - 3] + "..."


def job_notice(job: JobRecord, outbox: Path) -> Notice | None:
    """The notice of a job that ended (pure); None for a cancelled one (the person knows)."""
    if job.status == JobStatus.FAILED:
        where = f"; inputs in state_dir/{job.place}" if job.place else ""
        return Notice("failed", f"nst-batch: {job.name} failed ({job.label})", _reason(job) + where)
    if job.status == JobStatus.DONE:
        return Notice("done", f"nst-batch: {job.name} done ({job.label})", f"results in {outbox / (job.outbox_name or job.name)}")
    return None


def summary_notice(ended: Sequence[JobRecord], compute_seconds: float, gallery: Path) -> Notice:
    """The morning summary (pure): counts, failures with their reasons, computing time, the gallery."""
    counts = {status: sum(job.status == status for job in ended) for status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)}
    said = ", ".join(f"{n} {status}" for status, n in counts.items() if n or status != JobStatus.CANCELLED)
    lines = [f"The queue is empty: {said}.", f"Computing time: {format_duration(compute_seconds)}.", f"Gallery: {gallery}"]
    failed = [job for job in ended if job.status == JobStatus.FAILED]
    if failed:
        lines.append("Failures:")
        lines += [f"- {job.name} ({job.label}): {_reason(job)}" for job in failed[:FAILURES_LISTED]]
        if len(failed) > FAILURES_LISTED:
            lines.append(f"- and {len(failed) - FAILURES_LISTED} more (see the gallery)")
    return Notice("drained", f"nst-batch: queue drained ({said})", "\n".join(lines))


def drained(waiting: int, ended: int, idle: bool) -> bool:
    """Whether the queue has just drained (pure): nothing waiting or running, and a job ended since the last summary."""
    return idle and waiting == 0 and ended > 0


class Ends:
    """The jobs that ended after ``since``, each found once, though its end be committed late: an
    end stamped before its write waited for the lock is committed within 30 s, so each look also
    goes ``LOOK_BACK_S`` behind the last look's start (never behind ``floor``), skipping the jobs
    already found (by id and ``updated``; those behind every later look are forgotten). Once
    nothing ended for that long, a look is one indexed query that finds nothing."""

    def __init__(self, since: float, floor: float = float("-inf"), found: dict[int, float] | None = None):
        self.since, self.floor = since, floor
        self._looked = time.time()  # when the last look began
        self._found = dict(found or {})

    def _after(self) -> float:
        return max(self.floor, min(self.since, self._looked - LOOK_BACK_S))

    def look(self, store: Store) -> list[JobRecord]:
        after, self._looked = self._after(), time.time()
        return [job for job in store.ended_since(after) if self._found.get(job.id) != job.updated]

    def found(self, jobs: Sequence[JobRecord]) -> None:
        """These are told: never found again (unless they end again)."""
        if not jobs:
            return
        self.since = max(self.since, *(job.updated for job in jobs))
        self._found.update((job.id, job.updated) for job in jobs)
        after = self._after()  # what is older than this is never looked at again
        self._found = {job_id: updated for job_id, updated in self._found.items() if updated > after}


class Notices:
    """Looks for ended jobs on every tick of the main loop; cheap when nothing ended (one indexed query)."""

    def __init__(self, store: Store, notifier: Notifier, outbox: Path):
        self.store, self.notifier, self.outbox = store, notifier, outbox
        now = time.time()
        # Job notices for what ends from now on; what ended just before was the last daemon's to tell.
        self._ended = Ends(now, found={job.id: job.updated for job in store.ended_since(now - LOOK_BACK_S)})
        since = store.control(SUMMARY_SINCE)
        if since is None:  # a first start: the summary counts from now, not every job ever
            store.set_control(SUMMARY_SINCE, repr(now))
        since_summary = float(since) if since is not None else now
        self._summarised = Ends(since_summary, floor=since_summary)  # the last daemon's summary had what came before

    def tick(self, idle: bool) -> None:
        if not self.notifier.enabled:
            return
        if self.notifier.wants("failed") or self.notifier.wants("done"):
            ended = self._ended.look(self.store)
            for job in ended:
                if (notice := job_notice(job, self.outbox)) is not None:
                    self.notifier.send(notice)
            self._ended.found(ended)
        if idle and self.notifier.wants("drained"):
            self._summary_if_drained()

    def _summary_if_drained(self) -> None:
        counts = self.store.counts()
        waiting = sum(counts.get(status, 0) for status in WAITING_STATES)
        if waiting:
            return
        ended = self._summarised.look(self.store)
        if not drained(waiting, len(ended), idle=True):
            return
        self.notifier.send(summary_notice(ended, self.store.compute_seconds(j.id for j in ended), self.outbox / "index.html"))
        self._summarised.found(ended)
        self.store.set_control(SUMMARY_SINCE, repr(self._summarised.since))
