"""Why running work stops before its end: the daemon stops or is paused with ``--now`` (each run
checkpoints, to resume), or some of its runs are cancelled (no checkpoint is kept). The runner
asks ``is_set()`` after every iteration, as it would a ``threading.Event``."""

import threading


class Halt:
    """The stop flag of one piece of work: the daemon's stop event, and this work's own requests."""

    def __init__(self, stop: threading.Event):
        self._stop = stop
        self._paused = threading.Event()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        return self.stopping() or bool(self._cancelled)

    def stopping(self) -> bool:
        """Whether all of the work checkpoints and stops: the daemon stops, or is paused with ``--now``."""
        return self._stop.is_set() or self._paused.is_set()

    def pause(self) -> None:
        """Checkpoint and stop, to resume later (``nst-batch pause --now``)."""
        self._paused.set()

    def cancel(self, run_id: int) -> None:
        with self._lock:
            self._cancelled = self._cancelled | {run_id}

    def cancelled(self, run_id: int) -> bool:
        return run_id in self._cancelled


def cancelled(stop: object, run_id: int) -> bool:
    """Whether ``stop`` (a Halt, or a plain event) says the run is cancelled."""
    return isinstance(stop, Halt) and stop.cancelled(run_id)
