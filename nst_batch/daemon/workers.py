"""The threads that run admitted work, side by side on one device.

Each piece of work (a run, or a batch of runs sharing the network's passes) gets a thread of
its own, with its own database connection, and its peak memory measured. A peak is only worth
learning from when one run had the device to itself, so each piece of work remembers whether
another one ran beside it, and one that starts beside another is not measured at all. When the
engine is done, the thread hands its results to the publisher and ends: the device is free for
the next work while they are written. The main thread starts work and collects what has
finished, files and all; only it touches the job logs' sinks.

This is the threads executor; ``ray_workers.RayWorkers`` is the other one, behind the same
interface: ``devices`` (what placement may put work on), ``start``, ``finished``, ``join``, ``close``.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from ..settings import tuning
from ..settings.config import Config
from .capacity import Capacity
from .folders import Folders
from .halt import Halt
from .measure import PeakMeter
from .placement import Device
from .publisher import Publisher
from .runner import Ending, Outcome, Runner
from .scheduler import Active
from .store import JobRecord, RunRecord, Store

LOCAL = "local"  # the threads executor's one device, as placement names it


@dataclass
class Work:
    """Admitted runs on one worker thread (stage: running), and what their thread measured."""

    runs: list[tuple[JobRecord, RunRecord]]  # one, or a batch
    need_bytes: int
    node: str = LOCAL  # where placement put it (the ray executor: a node's name and one of its devices)
    device: str = LOCAL
    shared: bool = False  # other work was on the device at some point: its peak says little
    outcomes: list[Outcome] = field(default_factory=list)  # one per run, once finished
    peak_bytes: int = 0
    repairs: int = 0  # of its runs' optimizations (rising, non-finite or stalled losses), for the metrics
    thread: threading.Thread | None = field(default=None, repr=False)
    left_device: threading.Event = field(default_factory=threading.Event, repr=False)  # its results handed on
    ended: threading.Event = field(default_factory=threading.Event, repr=False)  # outcomes final, files written
    halt: Halt | None = field(default=None, repr=False)  # set by start(): the daemon's stop, a pause --now, a cancel
    actor: Any = field(default=None, repr=False)  # the ray executor's actor it runs on

    @property
    def on_device(self) -> bool:
        return self.thread is not None and not self.left_device.is_set()

    @property
    def alone(self) -> bool:
        return any(run.alone for _, run in self.runs)

    @property
    def labels(self) -> str:
        return ", ".join(run.label for _, run in self.runs)

    @property
    def as_active(self) -> Active:
        """As the scheduler sees it."""
        return Active(self.runs[0][1].id, self.need_bytes, self.alone)


class Workers:
    placed = False  # whether runs record the node and device they run on (their checkpoints stay there)

    def __init__(
        self, runner: Runner, folders: Folders, publisher: Publisher, stop: threading.Event, on_finished: Callable[[], None]
    ):
        self.runner, self.folders, self.publisher, self.stop = runner, folders, publisher, stop
        self.on_finished = on_finished
        self._works: list[Work] = []  # started, not yet collected
        self._sinks: dict[int, tuple[int, int]] = {}  # job id -> (loguru sink, runs using it)

    @property
    def active(self) -> list[Work]:
        """The work on the device now (its results may still be written after)."""
        return [work for work in self._works if work.on_device]

    @property
    def busy(self) -> bool:
        """Whether any work is on the device or waiting for its files."""
        return bool(self._works)

    def open(self, config: Config, capacity: Capacity, store: Store) -> str:
        """Ready the device: the network loaded once, then the budget measured with it in, and
        the memory model calibrated; where runs run, in words."""
        tuning.apply(config.performance, self.runner.device)
        network, _ = self.runner.network(config.defaults.backbone)
        capacity.measure_budget()
        if config.scheduler.calibrate:
            capacity.calibrate(store, network, config.defaults.backbone)
        return f"device {self.runner.device}"

    def devices(self, budget: int, max_concurrent: int) -> list[Device]:
        """The devices work may be placed on now, each with what runs on it: here, the one."""
        return [Device(LOCAL, LOCAL, budget, max_concurrent, tuple(work.as_active for work in self.active))]

    def tick(self) -> None:
        """The main loop's turn for the devices (the ray executor's pool): nothing to do here."""

    def starting_on(self) -> frozenset[str]:
        """The nodes where devices are still starting (their runs' checkpoints wait for them): none here."""
        return frozenset()

    def start(self, work: Work) -> None:
        work.halt = Halt(self.stop)
        beside = [other for other in self.active if (other.node, other.device) == (work.node, work.device)]
        for other in beside:
            other.shared = True
        work.shared = bool(beside)
        for job, _ in work.runs:
            self._open_log(job)
        name = f"run-{work.runs[0][1].id}"
        work.thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._works.append(work)
        work.thread.start()

    def finished(self) -> list[Work]:
        done = [work for work in self._works if work.ended.is_set()]
        for work in done:
            self._works.remove(work)
            for job, _ in work.runs:
                self._close_log(job)
        return done

    def join(self) -> None:
        """Wait for all started work, on the device and then its files."""
        for work in list(self._works):
            work.ended.wait()

    def close(self) -> None:
        """Once everything has been joined: let go of the devices (threads have nothing to let go of)."""

    def _execute(self, work: Work, store: Store) -> list[Outcome]:
        """Run the work on its device; an outcome per run. Its peak goes into ``work``."""
        # On the CPU the peak is the whole process's: the publisher drawing meanwhile is beside it too.
        quiet = self.runner.device.type != "cpu" or not self.publisher.writing
        writes = self.publisher.writes_begun
        with PeakMeter(self.runner.device, enabled=not work.shared) as meter:
            outcomes = self.runner.run_batch(work.runs, work.halt, store)
        work.peak_bytes = meter.peak_bytes
        if self.runner.device.type == "cpu" and (not quiet or self.publisher.writes_begun != writes):
            work.shared = True
        return outcomes

    def _run(self, work: Work) -> None:
        store = Store(self.folders.state)
        try:
            outcomes = self._execute(work, store)
        except Exception as error:  # a bug, not the runs' fault: report it as a retry
            for job, run in work.runs:
                logger.bind(job=job.label).opt(exception=error).error(f"{run.label}: worker failed")
            outcomes = [Outcome(Ending.RETRY, f"{type(error).__name__}: {error}")] * len(work.runs)
        finally:
            store.close()
        work.repairs = sum(len(o.unwritten.run.result.repairs) for o in outcomes if o.unwritten is not None)
        to_write = any(outcome.unwritten is not None for outcome in outcomes)
        if to_write:
            self.publisher.write(outcomes, then=lambda written: self._end(work, written))
        work.left_device.set()
        if to_write:
            self.on_finished()  # the device is free: the main loop may start the next work now
        else:
            self._end(work, outcomes)

    def _end(self, work: Work, outcomes: list[Outcome]) -> None:
        work.outcomes = outcomes
        work.ended.set()
        self.on_finished()

    def _open_log(self, job: JobRecord) -> None:
        sink, users = self._sinks.get(job.id, (None, 0))
        if sink is None:
            staging = self.folders.staging_dir(job.id)
            staging.mkdir(parents=True, exist_ok=True)
            sink = logger.add(
                staging / "log.txt",
                level="INFO",
                format="{time:YYYY-MM-DD HH:mm:ss} {level: <7} {message}",
                filter=lambda record, label=job.label: record["extra"].get("job") == label,
                backtrace=False,
                diagnose=False,
            )
        self._sinks[job.id] = (sink, users + 1)

    def _close_log(self, job: JobRecord) -> None:
        sink, users = self._sinks[job.id]
        if users > 1:
            self._sinks[job.id] = (sink, users - 1)
        else:
            logger.remove(sink)
            del self._sinks[job.id]

