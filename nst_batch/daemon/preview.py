"""A look at a running run: a JPEG of its current image, at most every ``PREVIEW_EVERY_S`` (the
first once it has run ``PREVIEW_FIRST_S``) and at most ``PREVIEW_SIDE`` px, in the outbox's hidden ``.running/`` folder (the gallery links it from
its "running" section; it never collects a hidden folder as a job), removed when the run ends.

The run's thread only copies its image and hands it on (well under the 20 ms a run may spend per
result outside the engine); this module's thread shrinks, encodes and writes it, and asks for the
gallery to be rebuilt. A preview is a view: it is never a result, and one that cannot be written
is skipped.
"""

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from loguru import logger
from PIL import Image

from ..util.atomicio import atomic_path

PREVIEW_EVERY_S = 30.0
PREVIEW_FIRST_S = 2.0  # a run's first preview, once it has run this long: a shorter run needs none
PREVIEW_SIDE = 512
PREVIEW_QUALITY = 80
FOLDER = ".running"
WAITING_MAX = 8  # previews waiting to be written; more are dropped (the next comes in 30 s)


def preview_name(run_id: int) -> str:
    return f"run-{run_id}.jpg"


def preview_size(width: int, height: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """The size of a preview of a ``width`` x ``height`` image: its long side at most ``side`` (pure)."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class Previews:
    """Offered an image by each running run's progress; writes a preview when one is due."""

    def __init__(
        self, outbox: Path, written: Callable[[], None] = lambda: None, every_s: float = PREVIEW_EVERY_S,
        first_s: float = PREVIEW_FIRST_S,
    ):
        self.folder = outbox / FOLDER
        self.written = written  # the gallery, to show it
        self.every_s, self.first_s = every_s, first_s
        self._last: dict[int, float] = {}  # run id -> when its last preview was taken (monotonic)
        self._live: set[int] = set()
        self._lock = threading.Lock()
        self._waiting: queue.Queue[tuple[int, torch.Tensor] | None] = queue.Queue(maxsize=WAITING_MAX)
        self._thread: threading.Thread | None = None

    def path(self, run_id: int) -> Path:
        return self.folder / preview_name(run_id)

    def start(self) -> None:
        """Remove what an interrupted run left, then serve."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for item in os.scandir(self.folder):
            if item.is_file(follow_symlinks=False):
                os.unlink(item.path)
        self._thread = threading.Thread(target=self._serve, name="previews", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._waiting.put(None)
            self._thread.join(10)
            self._thread = None

    def offer(self, run_id: int, image: Callable[[], torch.Tensor]) -> bool:
        """On the run's thread, after an iteration: take ``image()`` (a copy of the current image, on
        the CPU) if a preview is due; whether one was taken."""
        now = time.monotonic()
        last = self._last.get(run_id)
        if last is None:  # its first iteration (here): the first preview is due first_s from now
            self._last[run_id] = now - self.every_s + self.first_s
            return False
        if now - last < self.every_s:
            return False
        self._last[run_id] = now
        with self._lock:
            self._live.add(run_id)
        try:
            self._waiting.put_nowait((run_id, image()))
        except queue.Full:
            return False
        return True

    def remove(self, run_id: int) -> bool:
        """The run ended: its preview goes (and one still being written goes once it is); whether it had one."""
        with self._lock:
            self._live.discard(run_id)
        self._last.pop(run_id, None)
        try:
            self.path(run_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def _serve(self) -> None:
        while (item := self._waiting.get()) is not None:
            run_id, image = item
            try:
                self._write(run_id, image)
            except Exception as error:  # a full outbox, a bug: a preview is never worth a run
                logger.warning(f"could not write the preview of run-{run_id}: {type(error).__name__}: {error}")

    def _write(self, run_id: int, image: torch.Tensor) -> None:
        pixels = (image.detach().float().clamp(0, 1)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        picture = Image.fromarray(pixels, "RGB")
        picture = picture.resize(preview_size(*picture.size), Image.Resampling.LANCZOS)
        target = self.path(run_id)
        with atomic_path(target) as temp:
            picture.save(temp, format="JPEG", quality=PREVIEW_QUALITY)
        with self._lock:
            live = run_id in self._live
        if not live:  # the run ended while this was written
            target.unlink(missing_ok=True)
            return
        self.written()
