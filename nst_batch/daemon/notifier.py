"""Sending notifications with apprise, on a thread of their own, so that a slow or absent receiver
never holds a run, the main loop or a job.

A notification that cannot be sent is tried again ``notify.attempts`` times in all, after
``retry_seconds``, doubled each time; each failed try is logged once, then it is dropped. The
URLs may hold secrets: they are never logged (a URL is named by its number and scheme only), and
apprise's own log, which may quote them, is silenced.
"""

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from ..settings.config import NotifyConfig
from ..util.errors import ConfigError

WAITING_MAX = 100  # notifications waiting to be sent; past that the newest are dropped, with a line
STOP_WAIT_S = 5.0  # at a stop, what is waiting gets this long to go out


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
        self._waiting: queue.Queue[Notice] = queue.Queue(maxsize=WAITING_MAX)
        self._stop = threading.Event()
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
        """Give what is waiting a few seconds to go out, then end the thread (a stop never waits longer)."""
        if self._thread is None:
            return
        self._waiting.put(Notice("", "", ""))  # wakes it: the end
        self._thread.join(STOP_WAIT_S)
        self._stop.set()
        self._thread.join(1.0)
        self._thread = None

    def send(self, notice: Notice) -> None:
        if not self.wants(notice.event):
            return
        try:
            self._waiting.put_nowait(notice)
        except queue.Full:
            logger.warning(f"{WAITING_MAX} notifications are waiting to be sent; dropped: {notice.title}")

    def _serve(self) -> None:
        while True:
            notice = self._waiting.get()
            if not notice.event:
                return
            self._deliver(notice)

    def _deliver(self, notice: Notice) -> None:
        left = list(self._targets)
        for attempt in range(1, self.config.attempts + 1):
            left = [(name, sender) for name, sender in left if not self._sent(sender, notice)]
            if not left:
                self.sent += 1
                return
            self.failures += len(left)
            delay = self.config.retry_seconds * 2 ** (attempt - 1)
            more = f"; trying again in {delay:g} s" if attempt < self.config.attempts else "; dropped"
            for name, _ in left:
                logger.warning(
                    f"notification {notice.event!r} ({notice.title}) could not be sent to {name} "
                    f"(try {attempt} of {self.config.attempts}){more}"
                )
            if attempt < self.config.attempts and self._stop.wait(delay):
                return

    @staticmethod
    def _sent(sender, notice: Notice) -> bool:
        try:
            return bool(sender.notify(title=notice.title, body=notice.body))
        except Exception:  # apprise's plugins raise what their libraries raise; a try that failed
            return False
