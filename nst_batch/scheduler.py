"""What runs next, and beside what: pure decisions over plain records, no clock, no GPU, no files.

Runs start in queue order (priority, then arrival) while they fit in the memory budget and a
slot is free. The first run that does not fit reserves its memory: runs behind it may start
only in what is left after that reservation, so a stream of small runs can never keep a big
one waiting for ever. A run marked ``alone`` (a retry after running out of memory) starts only
on an idle device, and nothing starts beside it.
"""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A queued run, as the scheduler sees it."""

    run_id: int
    job_id: int
    idx: int
    priority: int
    need_bytes: int
    alone: bool = False


@dataclass(frozen=True)
class Active:
    """A running run."""

    run_id: int
    need_bytes: int
    alone: bool = False


def queue_order(run: Candidate) -> tuple[int, int, int]:
    """Higher priority first, then the job that arrived first, then the run's place in its job."""
    return (-run.priority, run.job_id, run.idx)


def admit(queued: Sequence[Candidate], running: Sequence[Active], budget: int, max_concurrent: int) -> list[int]:
    """The runs to start now, in the order to start them."""
    if any(active.alone for active in running):
        return []
    free = budget - sum(active.need_bytes for active in running)
    slots = max_concurrent - len(running)
    started: list[int] = []
    for run in sorted(queued, key=queue_order):
        if slots <= 0 or free < 0:
            break
        if run.alone:
            if not running and not started:
                started.append(run.run_id)
            break  # nothing starts beside it, nor ahead of it
        if run.need_bytes <= free:
            started.append(run.run_id)
            slots -= 1
        free -= run.need_bytes  # started, or reserved for when enough memory is free
    return started

