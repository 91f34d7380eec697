"""What runs next, and beside what: pure decisions over plain records, no clock, no GPU, no files.

Runs start in queue order (priority, then arrival) while they fit in the memory budget and a
slot is free. The first run that does not fit reserves its memory: runs behind it may start
only in what is left after that reservation, so a stream of small runs can never keep a big
one waiting for ever. A run marked ``alone`` (a retry after running out of memory) starts only
on an idle device, and nothing starts beside it.

Runs that can share the network's passes (equal ``batch_key``: the same shapes and layers, see
``engine.batch_key``) and have the same priority start together as one batch, led by the first
of them in the queue (and, across devices, the same checkpoint node: a batch runs on one device).
A batch pays once for what its members share (the network, the runtime),
so it needs less than its members would apart, and it takes one slot.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A queued run, as the scheduler sees it (stage: offered by dispatch, before it starts)."""

    run_id: int
    job_id: int
    idx: int
    priority: int
    need_bytes: int
    alone: bool = False
    batch_key: Hashable | None = None  # None: never batched
    shared_bytes: int = 0  # the part of need_bytes a batch pays once, whatever its size
    node: str | None = None  # the node its checkpoint is on, across devices (``placement``); None: anywhere


@dataclass(frozen=True)
class Batch:
    """Runs that start together, in one slot (stage: admitted, about to become a worker's ``Work``)."""

    runs: tuple[Candidate, ...]

    @property
    def run_ids(self) -> tuple[int, ...]:
        return tuple(run.run_id for run in self.runs)

    @property
    def need_bytes(self) -> int:
        return sum(run.need_bytes - run.shared_bytes for run in self.runs) + max(r.shared_bytes for r in self.runs)

    @property
    def alone(self) -> bool:
        return self.runs[0].alone


@dataclass(frozen=True)
class Active:
    """Running work as the scheduler sees it: a run, or a batch (stage: on a worker thread)."""

    run_id: int
    need_bytes: int
    alone: bool = False


def queue_order(run: Candidate) -> tuple[int, int, int]:
    """Higher priority first, then the job that arrived first, then the run's place in its job."""
    return (-run.priority, run.job_id, run.idx)


def batches(queued: Sequence[Candidate], max_batch: int, budget: int) -> list[Batch]:
    """The queue as batches of up to ``max_batch`` runs, in the order of their first runs. A run
    joins a batch only if the batch still fits the whole budget: a batch that could never start
    would block the queue behind it for ever."""
    formed: list[list[Candidate]] = []
    open_batches: dict[tuple, list[Candidate]] = {}
    for run in sorted(queued, key=queue_order):
        key = (run.batch_key, run.priority, run.node)
        members = open_batches.get(key) if run.batch_key is not None and not run.alone else None
        if members is None or len(members) >= max_batch or Batch((*members, run)).need_bytes > budget:
            members = [run]
            formed.append(members)
            if run.batch_key is not None and not run.alone:
                open_batches[key] = members
        else:
            members.append(run)
    return [Batch(tuple(members)) for members in formed]


def admit(
    queued: Sequence[Candidate], running: Sequence[Active], budget: int, max_concurrent: int, max_batch: int = 1
) -> list[Batch]:
    """The batches to start now, in the order to start them (with max_batch 1, one run each)."""
    if any(active.alone for active in running):
        return []
    free = budget - sum(active.need_bytes for active in running)
    slots = max_concurrent - len(running)
    started: list[Batch] = []
    for batch in batches(queued, max_batch, budget):
        if slots <= 0 or free < 0:
            break
        if batch.alone:
            if not running and not started:
                started.append(batch)
            break  # nothing starts beside it, nor ahead of it
        if batch.need_bytes <= free:
            started.append(batch)
            slots -= 1
        free -= batch.need_bytes  # started, or reserved for when enough memory is free
    return started
