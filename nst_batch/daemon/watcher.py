"""When inbox files are ready: watchdog events make the daemon look promptly, a scan of the
folder decides. A file is complete once it was closed after writing or moved in (an event
newer than its last change), or once its size and mtime stayed the same for
``settle_seconds``; a file in a folder also waits until no file came or went in that folder
for ``settle_seconds``. Events can be lost (overflow, network filesystems, the daemon was
down): the scan at start-up and the periodic rescans find those files all the same.

A file still open for writing is not complete, however long it stays unchanged: a copy that
stalls half way must not start a job. With the native (inotify) observer, a file written to
(IN_MODIFY) is held until it is closed (IN_CLOSE_WRITE), moved, or deleted; such a file is
reported as ``writing``, and the inbox rules refuse it once it has been unchanged for
``pair_timeout``. Without close events (the polling observer, network filesystems), after the
events were lost (queue overflow: watchdog warns, and this module listens), and for files that
were already there when the daemon started, settling decides alone: being wrong there delays
nothing forever.

The scan looks one folder deep. What it does not look into is still reported, as ``NAME/``, so
that nothing in the inbox goes unexplained: an empty folder, and a folder inside a job folder.
"""

import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .inbox import Entry, is_ignored

try:
    from watchdog.observers.inotify import InotifyObserver
except ImportError:  # not Linux: no close events to rely on
    InotifyObserver = None

# Where watchdog's inotify layer says it lost events (queue overflow) or a watch.
_WATCHDOG_INOTIFY_LOGGERS = ("watchdog.observers.inotify", "watchdog.observers.inotify_c")


@dataclass
class _Seen:
    first_seen: float
    signature: tuple[int, int]  # size, mtime_ns; of a folder: how many files, a hash of their names
    changed: float  # monotonic time the signature last changed


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: records completion events and wakes the intake, never raises."""

    def __init__(self, watcher: "InboxWatcher"):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if isinstance(event, (FileOpenedEvent, FileClosedNoWriteEvent)):
                return  # someone read a file (the intake reads sidecars): nothing changed
            if isinstance(event, FileModifiedEvent):
                self.watcher.mark_writing(os.fsdecode(event.src_path))
            elif isinstance(event, FileMovedEvent):
                self.watcher.mark_gone(os.fsdecode(event.src_path))
                self.watcher.mark_finished(os.fsdecode(event.dest_path))
            elif isinstance(event, FileClosedEvent):
                self.watcher.mark_finished(os.fsdecode(event.src_path))
            elif isinstance(event, FileDeletedEvent):
                self.watcher.mark_gone(os.fsdecode(event.src_path))
            self.watcher.wake.set()
        except Exception:  # an exception here would kill the observer thread
            logger.exception("inbox event handler failed; the next scan will catch up")


class _LostEvents(logging.Handler):
    """Hears watchdog's warnings about its inotify queue: events may be missing, so what they said
    about files still being written can no longer be trusted."""

    def __init__(self, watcher: "InboxWatcher"):
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        self.watcher.forget_writers()
        # Said here, since with a handler of its own watchdog's warning no longer reaches stderr.
        logger.warning(f"inbox events may have been lost ({record.getMessage()}); settle_seconds decides meanwhile")


class InboxWatcher:
    def __init__(self, inbox: Path, settle_seconds: float, observer: str = "native"):
        self.inbox = inbox
        self.settle_seconds = settle_seconds
        self.kind = observer
        self.wake = threading.Event()
        self._finished: dict[str, float] = {}  # relative path -> wall time of its close/move event
        self._writing: set[str] = set()  # relative paths written to and not closed since (inotify only)
        self._closes_reported = False  # whether the observer reports closes, so that _writing means something
        self._lost_events = _LostEvents(self)
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()
        self._observer = None

    # --- the observer, supervised -------------------------------------------------------

    def start(self) -> None:
        if self._observer is not None and self._observer.is_alive():
            return
        try:
            self._observer = self._start(PollingObserver(timeout=1) if self.kind == "polling" else Observer())
        except OSError as error:  # e.g. the inotify watch limit; the scans still find every file
            logger.warning(f"native inbox observer failed ({error}); polling instead")
            self._observer = self._start(PollingObserver(timeout=1))

    def _start(self, observer):
        self.forget_writers()  # events may have been missed while no observer ran
        self._closes_reported = InotifyObserver is not None and isinstance(observer, InotifyObserver)
        observer.schedule(_Handler(self), str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        for name in _WATCHDOG_INOTIFY_LOGGERS:
            logging.getLogger(name).addHandler(self._lost_events)
        return observer

    def ensure_alive(self) -> None:
        """Start the observer, or restart it if its thread died (the scans kept working meanwhile)."""
        if self._observer is None:
            self.start()
        elif not self._observer.is_alive():
            logger.warning("the inbox observer stopped; restarting it")
            self._stop_observer()
            self.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._stop_observer()
        self._observer = None
        for name in _WATCHDOG_INOTIFY_LOGGERS:
            logging.getLogger(name).removeHandler(self._lost_events)

    def _stop_observer(self) -> None:
        try:
            self._observer.stop()
            self._observer.join(timeout=5)
        except Exception:  # a dead observer may fail to stop; it is replaced either way
            logger.debug("observer did not stop cleanly")

    def mark_finished(self, absolute: str) -> None:
        """A file was closed after writing, or moved in."""
        relative = self._relative(absolute)
        if relative is not None:
            with self._lock:
                self._finished[relative] = time.time()
                self._writing.discard(relative)

    def mark_gone(self, absolute: str) -> None:
        """A file was deleted or moved away: whoever wrote it is not writing this name any more."""
        with self._lock:
            self._writing.discard(self._relative(absolute))

    def mark_writing(self, absolute: str) -> None:
        """A file was written to: it stays incomplete until it is closed."""
        relative = self._relative(absolute)
        if relative is not None and self._closes_reported:
            with self._lock:
                self._writing.add(relative)

    def forget_writers(self) -> None:
        with self._lock:
            self._writing.clear()

    def _relative(self, absolute: str) -> str | None:
        try:
            return Path(absolute).relative_to(self.inbox).as_posix()
        except ValueError:
            return None

    # --- the scan ------------------------------------------------------------------------

    def snapshot(self) -> list[Entry]:
        """Every file in the inbox (top level and one folder down) and every folder not looked
        into, with whether it is complete."""
        now = time.monotonic()
        found = dict(self._scan())
        with self._lock:
            finished = dict(self._finished)
            self._finished = {p: t for p, t in finished.items() if p in found}
            self._writing = {p for p in self._writing if p in found}
            writing = set(self._writing)
        # A folder is copied one file after another; each file may be complete long before the
        # next one appears, so a folder's files count only once its listing stopped changing.
        listings: dict[str, list[str]] = defaultdict(list)
        for path in found:
            folder, _, name = path.rstrip("/").rpartition("/")
            if folder:
                listings[f"{folder}/"].append(name)
        folders_settled = {
            folder: self._settled(self._track(folder, (len(names), hash(frozenset(names))), now), now)
            for folder, names in listings.items()
        }
        entries = []
        for path, (signature, mtime) in found.items():
            seen = self._track(path, signature, now)
            closed_after_writing = path in finished and mtime <= finished[path]
            folder = path.rstrip("/").rpartition("/")[0]
            folder_settled = not folder or folders_settled[f"{folder}/"]
            open_for_writing = path in writing
            complete = (closed_after_writing or self._settled(seen, now)) and folder_settled and not open_for_writing
            entries.append(Entry(path, complete, now - seen.first_seen, now - seen.changed, open_for_writing))
        self._seen = {p: s for p, s in self._seen.items() if p in found or p in listings}
        return entries

    def _track(self, key: str, signature: tuple[int, int], now: float) -> _Seen:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(now, signature, now)
        elif seen.signature != signature:
            seen.signature, seen.changed = signature, now
        return seen

    def _settled(self, seen: _Seen, now: float) -> bool:
        return now - seen.changed >= self.settle_seconds

    def _scan(self):
        yield from self._scan_folder(self.inbox, "", depth=1)

    def _scan_folder(self, folder: Path, prefix: str, depth: int):
        try:
            with os.scandir(folder) as listing:
                items = list(listing)
        except OSError as error:
            logger.warning(f"cannot list {folder}: {error}")
            return
        for item in items:
            if is_ignored(item.name):
                continue
            path = f"{prefix}{item.name}"
            try:
                stat = item.stat(follow_symlinks=False)
                is_folder = item.is_dir(follow_symlinks=False)
            except OSError:
                continue  # vanished between listing and stat
            signature = ((stat.st_size, stat.st_mtime_ns), stat.st_mtime)
            if not is_folder:
                yield path, signature
                continue
            inside = list(self._scan_folder(Path(item.path), f"{path}/", depth - 1)) if depth else []
            # An empty folder, or one too deep to look into, is reported itself, so that it is
            # refused; its size and mtime change whenever something is added to it or removed.
            yield from inside or [(f"{path}/", signature)]
