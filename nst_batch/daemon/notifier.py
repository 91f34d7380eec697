"""Sending notifications with apprise, on a thread of their own, so that a slow or absent receiver
never holds a run, the main loop or a job.

A notification that cannot be sent is tried ``notify.attempts`` times in all, after
``retry_seconds``, doubled each time; each failed try is logged once, with why (the exception's
type, or apprise's status), then it is dropped. The URLs may hold secrets: they are never logged
(a URL is named by its number and scheme only), and apprise's own log, which may quote them, is
silenced.

A stop never waits on a retry: it wakes the retry's pause, and what is waiting gets one try each
for ``STOP_WAIT_S``. Past ``WAITING_MAX`` waiting, the oldest job notice is dropped, never a
drained summary.
"""

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from ..settings.config import NotifyConfig
from ..util.errors import ConfigError

WAITING_MAX = 100  # notifications waiting to be sent; past that the oldest job notice is dropped, with a line
STOP_WAIT_S = 5.0  # at a stop, what is waiting gets this long to go out (one try each)


@dataclass(frozen=True)
class Notice:
    event: str  # failed | done | drained
    title: str
    body: str


def read_urls(config: NotifyConfig) -> list[str]:
    """The config's URLs and those of ``urls_file`` (one a line; blank lines and # comments skipped)."""
    urls = [url.get_secret_value() for url in config.urls]
    if config.urls_file is not None:
        try:
            text = Path(config.urls_file).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"notify.urls_file {config.urls_file}: {error.strerror or error}") from None
        urls += [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return urls


def _scheme(url: str) -> str:
    return url.partition("://")[0] if "://" in url else "?"


class Notifier:
    """Notices in (from any thread, never waiting), apprise out (on this thread)."""

    def __init__(self, config: NotifyConfig):
        self.config = config
        self.events = frozenset(config.events)
        self.failures = 0  # tries that failed, for the metrics
        self.sent = 0
        self._targets = self._targets_of(read_urls(config)) if config.enabled else []
        self._waiting: deque[Notice] = deque()
        self._lock = threading.Condition()  # guards _waiting; notified when a notice comes or the stop
        self._stop = threading.Event()  # set by stop(): no more retries, what waits gets one try until _until
        self._until = 0.0  # time.monotonic() after which, once stopping, nothing more is tried
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._targets)

    def wants(self, event: str) -> bool:
        return self.enabled and event in self.events

    @staticmethod
    def _targets_of(urls: list[str]) -> list[tuple[str, object]]:
        import apprise  # only where notifications are configured: it costs the start-up time of its plugins

        apprise_log = logging.getLogger("apprise")  # it may quote a URL, secrets and all
        apprise_log.propagate = False
        apprise_log.handlers = [logging.NullHandler()]
        targets = []
        for number, url in enumerate(urls, start=1):
            name = f"notify URL {number} ({_scheme(url)}://...)"
            sender = apprise.Apprise()
            if not sender.add(url):
                raise ConfigError(f"{name}: apprise does not understand it (see https://github.com/caronc/apprise/wiki)")
            targets.append((name, sender))
        return targets

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="notifier", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Give what is waiting a few seconds to go out, one try each, then end the thread: a stop
        never waits on a retry's pause, nor longer than ``STOP_WAIT_S`` and a second."""
        if self._thread is None:
            return
        with self._lock:
            self._until = time.monotonic() + STOP_WAIT_S
            self._stop.set()  # wakes a retry's pause
            self._lock.notify()  # and a thread waiting for a notice
        self._thread.join(STOP_WAIT_S + 1.0)  # a try that hangs past that is left to the daemon thread
        with self._lock:
            if self._waiting:
                logger.warning(f"{len(self._waiting)} notification(s) not sent: the daemon stops")
                self._waiting.clear()
        self._thread = None

    def send(self, notice: Notice) -> None:
        """Queue a notice, never waiting; past ``WAITING_MAX`` the oldest job notice makes room."""
        if not self.wants(notice.event):
            return
        with self._lock:
            if len(self._waiting) >= WAITING_MAX:
                oldest = next((n for n in self._waiting if n.event != "drained"), self._waiting[0])
                self._waiting.remove(oldest)
                logger.warning(f"{WAITING_MAX} notifications wait to be sent; dropped the oldest: {oldest.title}")
            self._waiting.append(notice)
            self._lock.notify()

    def _next(self) -> Notice | None:
        """The next notice to try; None once stopping with nothing left, or past the stop's few seconds."""
        with self._lock:
            while not self._waiting and not self._stop.is_set():
                self._lock.wait()
            if not self._waiting or (self._stop.is_set() and time.monotonic() >= self._until):
                return None
            return self._waiting.popleft()

    def _serve(self) -> None:
        while (notice := self._next()) is not None:
            self._deliver(notice)

    def _deliver(self, notice: Notice) -> None:
        left = list(self._targets)
        for attempt in range(1, self.config.attempts + 1):
            why = {name: self._try(sender, notice) for name, sender in left}
            left = [(name, sender) for name, sender in left if why[name] is not None]
            if not left:
                self.sent += 1
                return
            self.failures += len(left)
            delay = self.config.retry_seconds * 2 ** (attempt - 1)
            again = attempt < self.config.attempts and not self._stop.is_set()
            more = f"; trying again in {delay:g} s" if again else "; dropped"
            if attempt < self.config.attempts and not again:
                more += " (the daemon stops)"
            for name, _ in left:
                logger.warning(
                    f"notification {notice.event!r} ({notice.title}) could not be sent to {name}: {why[name]} "
                    f"(try {attempt} of {self.config.attempts}){more}"
                )
            if not again:
                return
            if self._stop.wait(delay):  # a stop wakes the pause: no more tries
                logger.warning(f"notification {notice.event!r} ({notice.title}) dropped: the daemon stops")
                return

    @staticmethod
    def _try(sender, notice: Notice) -> str | None:
        """None when sent, else why not, without the URL: the exception's type, or apprise's status."""
        try:
            result = sender.notify(title=notice.title, body=notice.body)
        except Exception as error:  # apprise's plugins raise what their libraries raise; a try that failed
            return type(error).__name__
        if result:
            return None
        status = getattr(result, "status", None)  # apprise >= 2: FAILURE, TIMEOUT...; before: False
        return f"apprise: {status.name.lower()}" if status is not None else "apprise: not sent"
