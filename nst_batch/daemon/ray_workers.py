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
from .store import DeviceRecord, DeviceState, RunRecord, Store
from .workers import Work, Workers

NODES_FOLDER = "nodes"  # under state_dir: each node's checkpoints and inputs, in a folder of its own
REPORT_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 600.0
RESTART_DELAY_S = 1.0  # before a dead actor's replacement starts; doubled with each death of its slot...
MAX_RESTART_DELAY_S = 300.0  # ...up to this
MAX_START_DEATHS = 3  # a slot whose actors die this many times before one is ready is given up
# After a start, a run whose checkpoint is on a node waits this long at most for the pool's actors
# there: they start one by one, and the first ones ready must not take it elsewhere to start again.
RESUME_GRACE_S = 120.0


def actor_kind(config: Config) -> str:
    """What each actor asks Ray for (pure): a GPU, unless ``device: cpu``."""
    return "cpu" if config.device == "cpu" else "cuda"


@dataclass
class _Slot:
    """One device of the pool: its actor (the latest, after any that died), and what it said once ready."""

    index: int
    actor: Any = None
    starting: Any = None  # the ObjectRef of its start()
    lifeline: Any = None  # the ObjectRef of its lifeline(): it fails when the actor dies
    ready: Ready | None = None
    deaths: int = 0  # of its actors, so far (the back-off)
    deaths_unready: int = 0  # of its actors since one was last ready (given up at MAX_START_DEATHS)
    restart_at: float = 0.0  # monotonic time before which no new actor is started for it
    failed: bool = False  # its actors cannot start: no more are tried
    budget: int = 0  # its device's budget, the last that was measured (kept while a replacement starts)

    @property
    def key(self) -> tuple[str, str] | None:
        return None if self.ready is None else (self.ready.where.node_name, self.ready.where.device)

    @property
    def starting_now(self) -> bool:
        return self.actor is not None and self.ready is None


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
        self._keys = itertools.count(1)
        self._shown: list[DeviceRecord] | None = None
        self._calibrated = not config.scheduler.calibrate
        self._opened = 0.0
        self._device_key: str | None = None  # the memory model's kind of device: the first ready actor's
        # Actors killed (a work thread's too): nothing more is placed on them. The handles themselves,
        # compared by Ray's actor id: a new handle may get a dropped one's id().
        self._killed: set[Any] = set()

    # --- the pool --------------------------------------------------------------------------

    def open(self, config: Config, capacity: Capacity, store: Store) -> str:
        """Start or join Ray, start an actor per device, and wait for the first to be ready."""
        ray = sys.modules.get("ray")  # not imported before connect(): Ray reads its settings when it is
        self._owned = ray is None or not ray.is_initialized()
        if self._owned:
            resources = {}
            if self.kind == "cpu" and config.ray.address is None:  # a cluster's nodes have theirs
                resources["num_cpus"] = max(os.cpu_count() or 1, config.ray.devices or 0)
            ray = actors.connect(config.ray, actors.token_path(self.folders.state), **resources)
        self.ray = ray
        if config.ray.address is None and self._owned:
            logger.info(f"a Ray of its own at {ray.get_runtime_context().gcs_address}, token authentication on")
        count = config.ray.devices or int(ray.cluster_resources().get("GPU", 0))
        if count < 1:
            raise ConfigError("executor: ray found no GPU in Ray: give ray.devices, or use device: cpu with ray.devices")
        self._slots = [_Slot(index) for index in range(count)]
        for slot in self._slots:
            self._start_actor(slot)
        self._opened = time.monotonic()
        logger.info(f"ray executor: {count} {self.kind} actor(s) asked for")
        while not any(slot.ready for slot in self._slots) and not self.stop.is_set():
            waiting = [slot.starting for slot in self._slots if slot.starting_now]
            if waiting:
                self.ray.wait(waiting, num_returns=1, timeout=1.0)
            else:
                time.sleep(0.5)  # every actor died: replacements wait for their back-off
            self.tick()  # raises when every device is given up
        return f"ray ({config.ray.address or 'its own, on 127.0.0.1'}), {count} {self.kind} device(s)"

    def _start_actor(self, slot: _Slot) -> None:
        (slot.actor,) = actors.start_actors(
            self.ray, 1, self.kind, self.folders.state / NODES_FOLDER, self.config, self.runner_type,
            first_slot=slot.index,
        )
        slot.starting = slot.actor.start.remote()
        slot.lifeline = slot.actor.lifeline.options(concurrency_group=actors.LIFELINE).remote()

    def tick(self) -> None:
        """The main loop's turn for the pool: take in actors that became ready, replace those that
        died (after a back-off that doubles with each death), show the devices in the status."""
        now = time.monotonic()
        for slot in self._slots:
            if slot.failed:
                continue
            if slot.actor is None:
                if now >= slot.restart_at:
                    self._start_actor(slot)
                continue
            if slot.ready is None and self._done(slot.starting):
                self._take_ready(slot)
            if slot.actor is not None and self._done(slot.lifeline):
                self._lost(slot, now)
        if self._device_key is not None:
            self.capacity.use_devices(self._device_key, [s.budget for s in self._slots if s.budget and not s.failed])
        self._show()
        if self._slots and all(slot.failed for slot in self._slots):
            raise ConfigError("executor: ray: no actor could start (see the log above)")

    def _take_ready(self, slot: _Slot) -> None:
        try:
            slot.ready = self.ray.get(slot.starting)
        except Exception as error:
            if self._actor_died(error):
                return  # its lifeline says so too: replaced below
            logger.error(f"a {self.kind} actor could not start: {error}")
            self._kill(slot.actor)
            slot.actor, slot.failed = None, True  # its own fault: another would fail alike
            return
        slot.budget, slot.deaths_unready = slot.ready.budget, 0
        if self._device_key is None:
            self._device_key = slot.ready.device_key
        where = slot.ready.where
        logger.info(f"{where.node_name} {where.device} ready (pid {where.pid}, budget {slot.budget / 2**30:.2f} GiB)")
        self._calibrate(slot)

    def _lost(self, slot: _Slot, now: float) -> None:
        """The slot's actor died: another is started for it, after a back-off; one that dies
        before it is ever ready, MAX_START_DEATHS times over, is given up."""
        place = " ".join(slot.key) if slot.key else f"actor {slot.index}"
        if slot.ready is None:
            slot.deaths_unready += 1
        slot.deaths += 1
        self._kill(slot.actor)  # dead, or only unreachable: either way it runs nothing more
        slot.actor, slot.ready = None, None
        if slot.deaths_unready >= MAX_START_DEATHS:
            slot.failed = True
            logger.error(f"{place}: its actors died {slot.deaths_unready} times before one was ready; no more are started")
            return
        delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** min(slot.deaths - 1, 16))
        slot.restart_at = now + delay
        logger.warning(f"{place}: its actor died; another starts in {delay:g} s (its runs are queued again)")

    def _calibrate(self, slot: _Slot) -> None:
        """The memory model's probes, once, on the first device ready."""
        if self._calibrated:
            return
        self._calibrated = True
        backbone = self.config.defaults.backbone
        self.capacity.use_devices(self._device_key, [slot.ready.budget])
        try:
            call = slot.actor.probe.options(concurrency_group=actors.CONTROL).remote(backbone)
            samples = self.ray.get(call, timeout=PROBE_TIMEOUT_S)
        except Exception as error:
            logger.warning(f"the memory model's probes failed on {' '.join(slot.key)}: {error}; the prior is used")
            return
        self.capacity.keep_probes(self.store, backbone, samples)

    def _show(self) -> None:
        """The devices as `nst-batch status` shows them, written when they change."""
        shown = []
        for slot in self._slots:
            if slot.ready is not None:
                shown.append(DeviceRecord(*slot.key, DeviceState.READY, slot.budget))
            elif not slot.failed:
                shown.append(DeviceRecord("-", f"actor {slot.index}", DeviceState.STARTING, slot.budget))
        if shown != self._shown:
            self.store.set_devices(shown)
            self._shown = shown

    def _kill(self, actor: Any) -> None:
        """From any thread: the actor is ended by Ray, and nothing more is placed on it."""
        self._killed.add(actor)
        self.ray.kill(actor, no_restart=True)

    def _placeable(self, slot: _Slot) -> bool:
        return slot.ready is not None and slot.actor not in self._killed

    def _done(self, ref: Any) -> bool:
        done, _ = self.ray.wait([ref], timeout=0)
        return bool(done)

    def _actor_died(self, error: Exception) -> bool:
        from ray.exceptions import RayActorError  # ActorDiedError, ActorUnavailableError

        return isinstance(error, RayActorError)

    def starting_on(self) -> frozenset[str]:
        """While some actors are still starting, for at most RESUME_GRACE_S after the daemon started:
        every live node (one of them may be where a checkpoint waits). Then none: a node without
        a device of the pool by then is, for its checkpoints, gone."""
        if time.monotonic() - self._opened > RESUME_GRACE_S or not any(s.starting_now for s in self._slots):
            return frozenset()
        return frozenset(n["NodeName"] for n in self.ray.nodes() if n.get("Alive") and n.get("NodeName"))

    def devices(self, budget: int, max_concurrent: int) -> list[Device]:
        devices = []
        for slot in self._slots:
            if not self._placeable(slot):
                continue
            running = tuple(work.as_active for work in self.active if (work.node, work.device) == slot.key)
            devices.append(Device(*slot.key, slot.budget, max_concurrent, running))
        return devices

    def forget(self, runs: list[RunRecord]) -> None:
        """Remove ended runs' checkpoints from their nodes (from any thread; a node without a ready
        actor keeps them)."""
        by_node: dict[str, list[int]] = {}
        for run in runs:
            if run.node is not None:
                by_node.setdefault(run.node, []).append(run.id)
        for slot in list(self._slots):
            ready, actor = slot.ready, slot.actor
            if ready is not None and actor is not None and ready.where.node_name in by_node:
                actor.forget.options(concurrency_group=actors.CONTROL).remote(by_node.pop(ready.where.node_name))

    def close(self) -> None:
        """After ``join``: every actor killed; Ray shut down if this daemon started or joined it."""
        if self.ray is None:
            return
        for slot in self._slots:
            if slot.actor is not None:
                self._kill(slot.actor)
        self.store.set_devices([])
        if self._owned:
            self.ray.shutdown()
        self.ray = None

    # --- work ------------------------------------------------------------------------------

    def start(self, work: Work) -> None:
        # Placed on a ready slot (only this thread changes slots): its actor, even one a work thread
        # killed since; the call then fails, and its runs are queued again.
        (work.actor,) = [s.actor for s in self._slots if s.ready is not None and s.key == (work.node, work.device)]
        super().start(work)

    def _execute(self, work: Work, store: Store) -> list[Outcome]:
        try:
            parcels = _parcels(work, self.folders)
        except Exception as error:  # an input gone or unreadable on the daemon's disk
            return [failure_outcome(error, "reading its inputs: ")] * len(work.runs)
        key = next(self._keys)
        call = work.actor.run.remote(key, work.runs, parcels, not work.shared)
        told_stop, told_cancelled = False, set()
        while not self.ray.wait([call], timeout=PROGRESS_EVERY_S)[0]:
            stop = work.halt.stopping() and not told_stop
            cancelled = tuple(r.id for _, r in work.runs if work.halt.cancelled(r.id) and r.id not in told_cancelled)
            asked = work.actor.report.options(concurrency_group=actors.CONTROL).remote(key, stop, cancelled)
            try:
                report = self.ray.get(asked, timeout=REPORT_TIMEOUT_S)
            except Exception:  # the actor died or is stuck: the call says which
                continue
            if report.found:  # else the run call has not reached the actor yet: told again next time
                told_stop |= stop
                told_cancelled.update(cancelled)
            self._take(report, work, store)
        try:
            report: Report = self.ray.get(call)
        except Exception as error:
            if not self._actor_died(error):
                raise
            return self._died(work, error)
        self._take(report, work, store)
        work.peak_bytes = report.peak_bytes
        return [self._here(outcome, job.id) for (job, _), outcome in zip(work.runs, report.outcomes, strict=True)]

    def _died(self, work: Work, error: Exception) -> list[Outcome]:
        """The work's actor died (or cannot be reached: it is killed, so that it never runs on
        unseen): its runs are queued again, but for those being cancelled."""
        self._kill(work.actor)  # its lifeline then fails: the main loop replaces it
        where = f"{work.node} {work.device}"
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        outcomes = []
        for job, run in work.runs:  # into the job's log too: its sink is open until the work is collected
            if work.halt.cancelled(run.id):
                outcomes.append(Outcome(Ending.CANCELLED))
                continue
            logger.bind(job=job.label).warning(f"{run.label}: its actor on {where} died: {reason}; queued again")
            outcomes.append(Outcome(Ending.RETRY, f"its actor on {where} died: {reason}"))
        return outcomes

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
