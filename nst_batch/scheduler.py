"""What runs next: pure decisions over plain records, no clock, no GPU, no files."""

from collections.abc import Sequence

from .store import RunRecord


def queue_order(run: RunRecord) -> tuple[int, int, int]:
    """Higher priority first, then the job that arrived first, then the run's place in its job."""
    return (-run.priority, run.job_id, run.idx)


def next_run(queued: Sequence[RunRecord]) -> RunRecord | None:
    return min(queued, key=queue_order, default=None)
