"""The ray executor: the queue's work on Ray actors, one per device, on this machine or a cluster,
behind the interface of the threads executor (``workers.Workers``). The daemon stays the only
coordinator: it owns the inbox, the job database, the outbox and the gallery; an actor runs what
it is given and owns nothing durable but its node's checkpoints.

- **Devices.** One actor per device (``ray.devices``, or every GPU Ray has). Each loads the network
  once, measures its own budget, and is offered to placement (``placement.place``) with what runs
  on it. An actor that dies (its process, or its node) is replaced by the daemon, never by Ray.
- **Work.** Each piece of work has a thread here, as under the threads executor: it packs the
  runs' inputs as bytes (``shipping``), calls the actor, and about every second asks it for
  progress and log lines (into the job database and the job's log), passing on a stop, a pause
  ``--now`` or a cancel. The results come back as the call's value and are written and published
  by the daemon's publisher, as always.
- **Retries are the database's.** A call to an actor that died ends its runs with ``RETRY``: they
  are queued again with the attempt counted, and resume on their checkpoint's node if it is still
  there (``runs.node``), else start again elsewhere.
"""

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from loguru import logger

from ..settings.config import Config
from ..util.errors import ConfigError
from . import actors
from .actors import Ready, Report
from .capacity import Capacity
from .folders import Folders
from .placement import Device
from .publisher import Publisher
from .runner import PROGRESS_EVERY_S, Ending, Outcome, Unwritten, failure_outcome
from .shipping import Parcel, pack, run_inputs
from .store import DeviceRecord, DeviceState, Store
from .workers import Work, Workers

NODES_FOLDER = "nodes"  # under state_dir: each node's checkpoints and inputs, in a folder of its own
REPORT_TIMEOUT_S = 30.0
# After a start, a run whose checkpoint is on a node waits this long at most for the pool's actors
# there: they start one by one, and the first ones ready must not take it elsewhere to start again.
RESUME_GRACE_S = 120.0
CLOSE_TIMEOUT_S = 30.0


def actor_kind(config: Config) -> str:
    """What each actor asks Ray for (pure): a GPU, unless ``device: cpu``."""
    return "cpu" if config.device == "cpu" else "cuda"


@dataclass
class _Slot:
    """One device of the pool: its actor, and what it said once it was ready."""

    index: int
    actor: Any
    starting: Any  # the ObjectRef of its start()
    lifeline: Any  # the ObjectRef of its lifeline(): ready when the actor has died
    ready: Ready | None = None
    dead: bool = False

    @property
    def key(self) -> tuple[str, str] | None:
        return None if self.ready is None else (self.ready.where.node_name, self.ready.where.device)


class RayWorkers(Workers):
    placed = True

    def __init__(
        self, config: Config, folders: Folders, publisher: Publisher, store: Store, stop: threading.Event,
        on_finished: Callable[[], None], capacity: Capacity, runner_type: Any = None,
    ):
        super().__init__(None, folders, publisher, stop, on_finished)
        self.config, self.store, self.capacity = config, store, capacity
        self.runner_type = runner_type  # the Runner class each actor runs (tests inject faults)
        self.kind = actor_kind(config)
        self.ray: Any = None
        self._owned = False  # whether this daemon started or joined Ray (else it was joined already)
        self._slots: list[_Slot] = []
        self._on: dict[int, _Slot] = {}  # id(work) -> the slot it runs on
        self._keys = itertools.count(1)
        self._shown: list[DeviceRecord] | None = None
        self._calibrated = not config.scheduler.calibrate
        self._opened = 0.0

    # --- the pool --------------------------------------------------------------------------

    def open(self, config: Config, capacity: Capacity, store: Store) -> str:
        """Start or join Ray, start an actor per device, and wait for the first to be ready."""
        ray = sys.modules.get("ray")  # not imported before connect(): Ray reads its settings when it is
        self._owned = ray is None or not ray.is_initialized()
        if self._owned:
            resources = {"num_cpus": max(os.cpu_count() or 1, config.ray.devices or 0)} if self.kind == "cpu" else {}
            ray = actors.connect(config.ray, actors.token_path(self.folders.state),
                                 **(resources if config.ray.address is None else {}))
        self.ray = ray
        if config.ray.address is None and self._owned:
            logger.info(f"a Ray of its own at {ray.get_runtime_context().gcs_address}, token authentication on")
        count = config.ray.devices or int(ray.cluster_resources().get("GPU", 0))
        if count < 1:
            raise ConfigError("executor: ray found no GPU in Ray: give ray.devices, or use device: cpu with ray.devices")
        self._slots = [self._new_slot(index) for index in range(count)]
        self._opened = time.monotonic()
        logger.info(f"ray executor: {count} {self.kind} actor(s) asked for")
        while not any(slot.ready for slot in self._slots):
            if self.stop.is_set():
                break
            self.ray.wait([slot.starting for slot in self._slots if not slot.dead], num_returns=1, timeout=1.0)
            self._refresh()
            if all(slot.dead for slot in self._slots):
                raise ConfigError("executor: ray: no actor could start (see the log above)")
        return f"ray ({config.ray.address or 'its own, on 127.0.0.1'}), {count} {self.kind} device(s)"

    def _new_slot(self, index: int) -> _Slot:
        (actor,) = actors.start_actors(
            self.ray, 1, self.kind, self.folders.state / NODES_FOLDER, self.config, self.runner_type, first_slot=index
        )
        return _Slot(index, actor, actor.start.remote(), actor.lifeline.remote())

    def _refresh(self) -> None:
        """Take in actors that became ready, and replace those that died (main thread)."""
        for slot in list(self._slots):
            if slot.ready is None and not slot.dead and self._done(slot.starting):
                try:
                    slot.ready = self.ray.get(slot.starting)
                except Exception as error:
                    if not self._actor_died(error):
                        logger.error(f"a {self.kind} actor could not start: {error}")
                        slot.dead = True  # its own fault: another would fail alike
                        continue
                else:
                    where = slot.ready.where
                    logger.info(f"{where.node_name} {where.device} ready (pid {where.pid}, "
                                f"budget {slot.ready.budget / 2**30:.2f} GiB)")
                    self._calibrate(slot)
            if not slot.dead and self._done(slot.lifeline):
                place = " ".join(slot.key) if slot.key else f"actor {slot.index}"
                logger.warning(f"{place}: its actor died; starting another (its runs are queued again)")
                slot.dead = True
                self._slots[self._slots.index(slot)] = self._new_slot(slot.index)
        ready = [slot.ready for slot in self._slots if slot.ready is not None and not slot.dead]
        if ready:
            self.capacity.use_devices(ready[0].device_key, [r.budget for r in ready])
        self._show()

    def _calibrate(self, slot: _Slot) -> None:
        """The memory model's probes, once, on the first device ready."""
        if self._calibrated:
            return
        self._calibrated = True
        backbone = self.config.defaults.backbone
        self.capacity.use_devices(slot.ready.device_key, [slot.ready.budget])
        try:
            samples = self.ray.get(slot.actor.probe.remote(backbone), timeout=600)
        except Exception as error:
            logger.warning(f"the memory model's probes failed on {' '.join(slot.key)}: {error}; the prior is used")
            return
        self.capacity.keep_probes(self.store, backbone, samples)

    def _show(self) -> None:
        """The devices as `nst-batch status` shows them, written when they change."""
        shown = []
        for slot in self._slots:
            if slot.dead:
                continue
            if slot.ready is None:
                shown.append(DeviceRecord("-", f"actor {slot.index}", DeviceState.STARTING))
            else:
                shown.append(DeviceRecord(*slot.key, DeviceState.READY, slot.ready.budget))
        if shown != self._shown:
            self.store.set_devices(shown)
            self._shown = shown

    def _done(self, ref: Any) -> bool:
        done, _ = self.ray.wait([ref], timeout=0)
        return bool(done)

    def _actor_died(self, error: Exception) -> bool:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        return isinstance(error, (ActorDiedError, ActorUnavailableError, RayActorError))

    def starting_on(self) -> frozenset[str]:
        """While some actors are still starting, for at most RESUME_GRACE_S after the daemon started:
        every live node (one of them may be where a checkpoint waits). Then none: a node without
        a device of the pool by then is, for its checkpoints, gone."""
        if time.monotonic() - self._opened > RESUME_GRACE_S or all(s.ready or s.dead for s in self._slots):
            return frozenset()
        return frozenset(n["NodeName"] for n in self.ray.nodes() if n.get("Alive") and n.get("NodeName"))

    def devices(self, budget: int, max_concurrent: int) -> list[Device]:
        self._refresh()
        devices = []
        for slot in self._slots:
            if slot.ready is None or slot.dead:
                continue
            running = tuple(work.as_active for work in self.active if self._on.get(id(work)) is slot)
            devices.append(Device(*slot.key, slot.ready.budget, max_concurrent, running))
        return devices

    def close(self) -> None:
        """After ``join``: every actor closed and killed; Ray shut down if this daemon started or joined it."""
        if self.ray is None:
            return
        for slot in self._slots:
            try:
                slot.actor.close.remote()
            except Exception:  # already gone
                pass
        for slot in self._slots:
            self.ray.kill(slot.actor)
        self.store.set_devices([])
        if self._owned:
            self.ray.shutdown()
        self.ray = None

    # --- work ------------------------------------------------------------------------------

    def start(self, work: Work) -> None:
        (slot,) = [s for s in self._slots if not s.dead and s.key == (work.node, work.device)]
        self._on[id(work)] = slot
        super().start(work)

    def finished(self) -> list[Work]:
        done = super().finished()
        for work in done:
            self._on.pop(id(work), None)
        return done

    def _execute(self, work: Work, store: Store) -> list[Outcome]:
        slot = self._on[id(work)]
        try:
            parcels = _parcels(work, self.folders)
        except Exception as error:  # an input gone or unreadable on the daemon's disk
            return [failure_outcome(error, "reading its inputs: ")] * len(work.runs)
        key = next(self._keys)
        call = slot.actor.run.remote(key, work.runs, parcels, not work.shared)
        told_stop = False
        told_cancelled: set[int] = set()
        while True:
            done, _ = self.ray.wait([call], timeout=PROGRESS_EVERY_S)
            if done:
                break
            stop = work.halt.is_set() and not told_stop
            cancelled = tuple(r.id for _, r in work.runs if work.halt.cancelled(r.id) and r.id not in told_cancelled)
            try:
                report = self.ray.get(slot.actor.report.remote(key, stop, cancelled), timeout=REPORT_TIMEOUT_S)
            except Exception:  # the actor died or is stuck: the call below says which
                continue
            told_stop |= stop
            told_cancelled.update(cancelled)
            self._take(report, work, store)
        try:
            report: Report = self.ray.get(call)
        except Exception as error:
            if not self._actor_died(error):
                raise
            where = f"{work.node} {work.device}"
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            for job, run in work.runs:  # into the job's log too: its sink is open until the work is collected
                logger.bind(job=job.label).warning(f"{run.label}: its actor on {where} died: {reason}; queued again")
            return [Outcome(Ending.RETRY, f"its actor on {where} died: {reason}")] * len(work.runs)
        self._take(report, work, store)
        work.peak_bytes = report.peak_bytes
        return [self._here(outcome, job.id) for (job, _), outcome in zip(work.runs, report.outcomes, strict=True)]

    def _take(self, report: Report, work: Work, store: Store) -> None:
        """A report's progress into the job database, its lines into the jobs' logs (here: each
        job's log.txt and the journal), marked with the device they came from."""
        for run_id, (iteration, total, loss) in report.progress.items():
            store.progress(run_id, iteration, total, loss)
        for level, job, message in report.lines:
            logger.bind(job=job).log(level, f"[{work.node} {work.device}] {message}")

    def _here(self, outcome: Outcome, job_id: int) -> Outcome:
        """An outcome from an actor, its result to be written into the daemon's staging folder."""
        if outcome.unwritten is None:
            return outcome
        return replace(outcome, unwritten=Unwritten(self.folders.staging_dir(job_id), outcome.unwritten.run))


def _parcels(work: Work, folders: Folders) -> list[Parcel]:
    """The inputs of the work's runs, one parcel per job."""
    refs: dict[int, list[str]] = {}
    jobs = {}
    for job, run in work.runs:
        jobs[job.id] = job
        refs[job.id] = list(dict.fromkeys([*refs.get(job.id, []), *run_inputs(run)]))
    return [pack(jobs[job_id], job_refs, folders.input_path) for job_id, job_refs in refs.items()]
