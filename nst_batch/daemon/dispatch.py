"""Starting work: the first queued runs, each changed by the too_big policy if it cannot fit even
alone, offered to placement with what each needs; what it admits starts on the workers, on the
device it was placed on (the threads executor has one: placement then decides what the
scheduler's ``admit`` decides)."""

from collections.abc import Callable, Hashable

from loguru import logger

from ..results.report import RunStatus
from .capacity import Capacity
from .finishing import Finisher
from .placement import place
from .scheduler import Candidate
from .store import RunRecord, Store
from .systemd import notify
from .workers import Work, Workers

# The scheduler is shown the first runs of the queue only: looking at all of them (a folder of
# 10 000 photos) would cost the main loop time in proportion to the queue before every start.
DISPATCH_WINDOW = 64  # queued runs the scheduler looks at, at least...
MAX_DISPATCH_WINDOW = 512  # ...and at most, whatever the slots and batch sizes


class Dispatcher:
    def __init__(
        self, store: Store, capacity: Capacity, batch_key: Callable[[RunRecord], Hashable | None], workers: Workers,
        finisher: Finisher, max_attempts: int, paused: Callable[[], bool] = lambda: False,
    ):
        self.store, self.capacity, self.batch_key = store, capacity, batch_key
        self.workers, self.finisher = workers, finisher
        self.max_attempts = max_attempts
        self.paused = paused  # `nst-batch pause`: no run starts

    def dispatch(self) -> int:
        """Start every queued run (or batch) that fits now; return how many pieces of work started."""
        if self.finisher.held() or self.paused():
            return 0
        if self.finisher.retry_unfinished():  # jobs asked for again: start nothing until they are tried
            return 0
        devices = self.workers.devices(self.capacity.budget, self.capacity.max_concurrent)
        if all(len(device.running) >= device.max_concurrent for device in devices):  # no slot: nothing to read the queue for
            return 0
        starting = self.workers.starting_on()
        queued = [
            started for run in self._window(len(devices)) if (started := self._startable(run, starting)) is not None
        ]
        if not queued:
            return 0
        placed = self.workers.placed
        candidates = [
            Candidate(r.id, r.job_id, r.idx, r.priority, self.capacity.need(self.store, r), r.alone,
                      self.batch_key(r), self.capacity.shared_bytes(self.store, r), r.node if placed else None)
            for r in queued
        ]
        chosen = place(candidates, devices, self.capacity.max_batch, starting)
        by_id = {run.id: run for run in queued}
        started = []
        for where in chosen:
            runs = []
            for run_id in where.batch.run_ids:
                if placed:
                    self.store.start_run(by_id[run_id], where.node, where.device)
                else:
                    self.store.start_run(by_id[run_id])
                run = self.store.run(run_id)
                runs.append((self.store.job(run.job_id), run))
            started.append(Work(runs, where.batch.need_bytes, where.node, where.device))
            self.workers.start(started[-1])
        if started:  # with what was running beside them: a short run may have left the device already
            beside = [work for work in self.workers.active if all(work is not s for s in started)]
            labels = "; ".join(w.labels for w in [*beside, *started])
            notify(f"STATUS=running {labels}; {self.store.run_counts().get(RunStatus.QUEUED, 0)} more queued")
        return len(chosen)

    def _window(self, devices: int) -> list[RunRecord]:
        wanted = 4 * devices * self.capacity.max_concurrent * self.capacity.max_batch
        return self.store.queued_runs(limit=min(MAX_DISPATCH_WINDOW, max(DISPATCH_WINDOW, wanted)))

    def _startable(self, run: RunRecord, starting: frozenset[str]) -> RunRecord | None:
        """The run, changed by the too_big policy if it cannot fit even alone; None if it is
        refused, or was running each time the daemon died."""
        if run.attempts >= self.max_attempts:
            self.finisher.give_up(run, f"the daemon stopped during each of {run.attempts} attempts")
            return None
        fit = self.capacity.fit_alone(self.store, run)
        if (fit.refusal is not None or fit.warning is not None) and starting:
            return None  # a device still starting may hold it as it is: it waits, unchanged
        log = logger.bind(job=f"job-{run.job_id}")
        if fit.refusal is not None:
            log.error(f"{run.label}: {fit.refusal}")
            self.finisher.give_up(run, fit.refusal)
            return None
        if fit.warning is not None:
            self.store.change_params(run.id, fit.params, fit.warning)
            log.warning(f"{run.label}: {fit.warning}")
            return self.store.run(run.id)
        return run
