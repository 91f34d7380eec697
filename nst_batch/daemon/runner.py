"""Runs through the engine: read their inputs, resume from their checkpoints, report progress,
checkpoint every N iterations, stop when asked, and end with their results still to be written
(``Outcome.unwritten``: the publisher's thread writes them into their jobs' staging folders). Runs of one shape may go through together,
as one batch (``engine.stylize_batch``); each still ends on its own. The network of each backbone is loaded once and kept."""

import contextlib
import gc
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

import torch
from loguru import logger

from ..engine import (
    Member,
    Network,
    Progress,
    Result,
    Speed,
    StyleParams,
    WeightsInfo,
    batch_key,
    resolve_device,
    stylize_batch,
)
from ..engine.checks import result_problem
from ..engine.images import fit_long_side
from ..engine.tiling import Tiling
from ..results.reel import FrameReel
from ..results.result import FinishedRun
from ..settings import tuning
from ..settings.config import Config
from ..util.errors import NstBatchError, disk_full
from ..util.imagefile import read_image
from .checkpoint import checkpoint_due, load_checkpoint, save_checkpoint
from .folders import Folders
from .halt import cancelled
from .inbox import LIBRARY_PREFIX
from .store import JobRecord, RunRecord

PROGRESS_EVERY_S = 1.0


class ProgressSink(Protocol):
    """Where a run's progress goes: the job database (``Store``), or an actor's report to the daemon."""

    def progress(self, run_id: int, iteration: int, total_iterations: int, loss: float) -> None: ...


class Ending(str, Enum):
    """How an attempt at a run ended; the finisher decides what each means for the run."""

    DONE = "done"
    STOPPED = "stopped"  # the daemon is stopping: checkpointed, to resume
    FAILED = "failed"  # the input or the parameters: trying again cannot help
    RETRY = "retry"  # something unexpected: worth another attempt
    OUT_OF_MEMORY = "out_of_memory"
    NO_SPACE = "no_space"  # a full disk: not the run's fault
    UNUSABLE = "unusable"  # a result that is no picture (black, flat, unchanged)
    CANCELLED = "cancelled"  # `nst-batch cancel`: stopped, no checkpoint kept


@dataclass(frozen=True)
class Unwritten:
    """A done run's result, still to be written into its job's staging folder (by the publisher)."""

    staging: Path
    run: FinishedRun


@dataclass(frozen=True)
class Outcome:
    """An attempt's end, with what the memory model and the store learn from it (stage: ended,
    before the finisher records it)."""

    ending: Ending
    error: str | None = None
    iterations: int = 0  # done by the end, all scales together
    last_scale_iterations: int = 0  # how deep the L-BFGS history got
    seconds: float = 0.0
    fp32: bool = True  # ran without reduced precision: its peak can teach the memory model
    unwritten: Unwritten | None = field(default=None, repr=False)  # a done run's files, still to write

    def written(self) -> "Outcome":
        return replace(self, unwritten=None)


def failure_outcome(error: Exception, context: str = "") -> Outcome:
    """How an error ends an attempt (pure): the input's or parameters' fault, a full disk, out
    of memory, or something unexpected that another attempt may not meet."""
    if isinstance(error, NstBatchError):  # retrying cannot help
        return Outcome(Ending.FAILED, f"{context}{error}")
    if no_space(error):
        return Outcome(Ending.NO_SPACE, f"{context or 'no space left: '}{error}")
    if _out_of_memory(error):
        return Outcome(Ending.OUT_OF_MEMORY, f"out of memory: {(str(error) or type(error).__name__).splitlines()[0][:300]}")
    if isinstance(error, OSError) and context:
        return Outcome(Ending.RETRY, f"{context}{error}")
    return Outcome(Ending.RETRY, f"{context}{type(error).__name__}: {error}")


class Runner:
    def __init__(
        self,
        config: Config,
        folders: Folders,
        input_path: Callable[[int, str], Path],
        heartbeat: Callable[[], None] = lambda: None,
        preview: Callable[[int, Callable[[], torch.Tensor]], bool] | None = None,
    ):
        self.config, self.folders = config, folders
        self.input_path = input_path
        self.heartbeat = heartbeat
        self.preview = preview  # offered the current image after each iteration (``preview.Previews.offer``)
        self.device = resolve_device(config.device)
        self._cpu_bf16 = tuning.cpu_has_bf16()
        self._networks: dict[str, tuple[Network, WeightsInfo]] = {}
        self._loading = threading.Lock()  # several runs may ask for a new backbone at once

    def network(self, backbone: str) -> tuple[Network, WeightsInfo]:
        with self._loading:
            return self._network(backbone)

    def speed(self, params: StyleParams) -> Speed:
        return tuning.choose_speed(self.config.performance, params.optimizer, self.device.type, self._cpu_bf16)

    def _network(self, backbone: str) -> tuple[Network, WeightsInfo]:
        if backbone not in self._networks:
            self._networks[backbone] = self.config.model.load(backbone, self.device)
        return self._networks[backbone]

    def batch_key(self, run: RunRecord) -> Hashable | None:
        return run_batch_key(run, self.speed)

    def run_batch(
        self, runs: Sequence[tuple[JobRecord, RunRecord]], stop: threading.Event, store: ProgressSink
    ) -> list[Outcome]:
        """Runs of one batch_key (or one run), through shared passes of the network; an outcome for
        each. Progress goes into ``store``: the calling thread's connection, or an actor's report."""
        with _own_stream(self.device):
            return self._run_batch(runs, stop, store)

    def _run_batch(
        self, runs: Sequence[tuple[JobRecord, RunRecord]], stop: threading.Event, store: ProgressSink
    ) -> list[Outcome]:
        saving = _SavingTime()
        seats = [self._seat(job, run, stop, store, saving) for job, run in runs]
        # The batch was formed from the sizes the store recorded; the decoded images decide.
        batches: dict[tuple, list[_Seat]] = {}
        for seat in seats:
            if seat.outcome is None:
                key = (batch_key(seat.params, seat.content.shape), self.speed(seat.params))
                batches.setdefault(key, []).append(seat)
        for batch in batches.values():
            for seat, ending in zip(batch, self._stylize(batch), strict=True):
                seat.outcome = ending if isinstance(ending, Outcome) else self._finish_or_fail(seat, ending)
        return [seat.outcome for seat in seats]

    def _seat(
        self, job: JobRecord, run: RunRecord, stop: threading.Event, store: ProgressSink, saving: "_SavingTime"
    ) -> "_Seat":
        """A run ready for the engine: its inputs read and its checkpoint loaded, or its outcome."""
        seat = _Seat(job, run, run.params, logger.bind(job=job.label))
        seat.cancelled = lambda: cancelled(stop, run.id)
        try:
            seat.content = read_image(self.input_path(job.id, run.content), self.config.max_pixels)
            styles = [read_image(self.input_path(job.id, s), self.config.max_pixels) for s in run.styles]
            init = None
            if (name := seat.params.init_image_name) is not None:  # in the daemon, a file of the style library
                init = read_image(self.input_path(job.id, LIBRARY_PREFIX + name), self.config.max_pixels)
            seat.weights = self.network(seat.params.backbone)[1]
        except Exception as error:
            seat.outcome = self._failure(seat, error)
            return seat
        checkpoint = self.folders.checkpoint(run.id)
        resume, seat.reel = load_checkpoint(checkpoint, seat.params)
        if resume is not None:
            seat.log.info(f"{run.label}: resuming from iteration {resume.iteration}")
        else:
            seat.log.info(f"{run.label}: starting ({seat.params.total_iterations} iterations on {self.device})")
        saved_at = resume.iteration if resume is not None else 0
        on_progress = self._progress(seat, stop, store, checkpoint, saved_at, saving)
        seat.member = Member(seat.content, styles, seat.params, init, on_progress, resume)
        return seat

    def _stylize(self, seats: list["_Seat"]) -> list[Result | Outcome]:
        """The engine's results, each member's own error as its own outcome, or one outcome for
        all when the batch as a whole broke (out of memory: each retries alone)."""
        network, _ = self.network(seats[0].params.backbone)
        speed = self.speed(seats[0].params)
        if len(seats) > 1:
            for seat in seats:
                seat.log.info(f"{seat.run.label}: in one batch of {len(seats)} ({', '.join(s.run.label for s in seats)})")
        try:
            endings = stylize_batch(network, [seat.member for seat in seats], speed=speed)
        except Exception as error:
            failures = [self._failure(seat, error) for seat in seats]
        else:
            return [self._failure(seat, e) if isinstance(e, Exception) else e for seat, e in zip(seats, endings)]
        if failures[0].ending == Ending.OUT_OF_MEMORY:
            # Outside the except block: the traceback, whose frames hold the batch's tensors, is gone.
            self._release_memory(seats)
        return failures

    def _failure(self, seat: "_Seat", error: Exception) -> Outcome:
        outcome = failure_outcome(error)
        if outcome.ending in (Ending.NO_SPACE, Ending.OUT_OF_MEMORY):
            seat.log.warning(f"{seat.run.label}: {error if outcome.ending == Ending.NO_SPACE else outcome.error}")
        elif outcome.ending == Ending.RETRY:
            seat.log.opt(exception=error).error(f"{seat.run.label}: unexpected error")
        return outcome

    def _release_memory(self, seats: list["_Seat"]) -> None:
        for seat in seats:
            seat.reel.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _finish_or_fail(self, seat: "_Seat", result: Result) -> Outcome:
        """One run's ending, whatever goes wrong writing it: the batch's other runs are not its fault."""
        try:
            return self._finish(seat, result)
        except Exception as error:
            return self._failure(seat, error)

    def _finish(self, seat: "_Seat", result: Result) -> Outcome:
        run, params, log = seat.run, seat.params, seat.log
        if result.interrupted and seat.cancelled():
            log.info(f"{run.label}: cancelled at iteration {result.state.iteration}; no checkpoint kept")
            return Outcome(Ending.CANCELLED)
        if result.interrupted:
            checkpoint = self.folders.checkpoint(run.id)
            saved = save_checkpoint(checkpoint, result.state, seat.reel, params, log)
            saved = "saved" if saved else "NOT saved"
            log.info(f"{run.label}: stopped at iteration {result.state.iteration}; checkpoint {saved}")
            return Outcome(Ending.STOPPED)
        for repair in result.repairs:
            log.warning(f"{run.label}: {repair.describe()}")
        history = result.history
        problem = result_problem(result.image, seat.content, _start_image(seat), history[-1].iteration, history[0].total)
        if problem is not None:
            log.warning(f"{run.label}: {problem}")
            return Outcome(Ending.UNUSABLE, problem)
        finished = FinishedRun(
            seat.job.label, run.label, run.content, run.styles, run.varying, params, seat.weights,
            self.speed(params).autocast or "fp32", result, seat.content, seat.member.styles, seat.reel.frames,
        )
        final = result.history[-1]
        last_scale = final.iteration - result.scale_starts[-1]
        fp32 = self.speed(params).autocast is None
        unwritten = Unwritten(self.folders.staging_dir(seat.job.id), finished)
        return Outcome(Ending.DONE, None, final.iteration, last_scale, final.elapsed_s, fp32, unwritten)

    def _progress(
        self, seat: "_Seat", stop: threading.Event, store: ProgressSink, checkpoint: Path, saved_at: int,
        saving: "_SavingTime",
    ) -> Callable:
        run, reel, log = seat.run, seat.reel, seat.log
        params = seat.params
        last_report = 0.0

        def on_progress(progress: Progress) -> bool:
            nonlocal last_report, saved_at
            if progress.frame is not None:
                reel.offer(progress.frame)
            since_saved = progress.iteration - saved_at
            due = checkpoint_due(since_saved, self.config.checkpoint_every, saving.spent_s, saving.elapsed_s())
            if due and not seat.cancelled():
                began = time.monotonic()
                save_checkpoint(checkpoint, progress.snapshot(), reel, params, log)
                saving.spent_s += time.monotonic() - began
                saved_at = progress.iteration
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                store.progress(run.id, progress.iteration, progress.total_iterations, progress.losses.total)
                self.heartbeat()
            if self.preview is not None:  # a picture of at most 512 px, taken only when one is due
                self.preview(run.id, progress.picture)
            return stop.is_set()

        return on_progress


def run_batch_key(run: RunRecord, speed: Callable[[StyleParams], Speed]) -> Hashable | None:
    """Runs with equal keys can go through together (pure); None (an unknown image size, or tiles:
    one image at a time) never does. Equal iteration counts at every scale too (the members go
    through the scales in step), so that no run's result waits long for a longer one's."""
    if not all(run.content_size):
        return None
    params = run.params
    width, height = run.content_size
    if Tiling.of(params).splits(*fit_long_side(height, width, params.image_size)):
        return None
    iterations = tuple(params.iterations_at(scale) for scale in range(params.scales))
    return (batch_key(params, (height, width)), speed(params), iterations)


@dataclass
class _Seat:
    """One run's place in the runner's batch (stage: running): what it was given, what it
    collects, and how it ended."""

    job: JobRecord
    run: RunRecord
    params: StyleParams
    log: object
    content: torch.Tensor | None = None
    weights: WeightsInfo | None = None
    member: Member | None = None
    reel: FrameReel = field(default_factory=FrameReel)  # the progress GIF's frames, bounded
    outcome: Outcome | None = None
    cancelled: Callable[[], bool] = lambda: False  # `nst-batch cancel` of this run


@dataclass
class _SavingTime:
    """How long the runs of one batch have spent saving checkpoints, of how long they have run."""

    started: float = field(default_factory=time.monotonic)
    spent_s: float = 0.0

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


def _start_image(seat: "_Seat") -> torch.Tensor | None:
    """The image a run's optimization began from, as far as a result may resemble it."""
    init = seat.params.init
    if init == "noise":
        return None
    return seat.content if init == "content" else seat.member.init_image


def _own_stream(device: torch.device) -> contextlib.AbstractContextManager:
    """On a GPU, a CUDA stream of the run's own: runs on the default stream would wait for each other."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device))


def no_space(error: Exception) -> bool:
    """A full disk or quota (SQLite says "database or disk is full")."""
    return disk_full(error) or (isinstance(error, sqlite3.OperationalError) and "full" in str(error))


def _out_of_memory(error: Exception) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text  # the CPU allocator's words
