"""Notifications: the messages (pure), and the real daemon telling a local HTTP receiver through
apprise's json:// URL, then going on without it."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from daemon_helpers import Daemon, drop_pair
from loguru import logger

from nst_batch.cli.main import main
from nst_batch.daemon.notices import Notices, drained, job_notice, summary_notice
from nst_batch.daemon.notifier import WAITING_MAX, Notice, Notifier
from nst_batch.daemon.store import JobRecord, Store
from nst_batch.results.report import JobStatus
from nst_batch.settings.config import NotifyConfig, config_from_mapping
from nst_batch.util.errors import ConfigError


def record(job_id: int, name: str, status: JobStatus, error: str | None = None) -> JobRecord:
    return JobRecord(job_id, name, "pair", status, 0, (), {}, None, {}, name, error, 0.0, 0.0, f"failed/{name}")


def test_messages_say_what_ended_why_and_where():
    failed = record(3, "bad", JobStatus.FAILED, "bad.yaml: iterations: must be at least 1\nmore")
    notice = job_notice(failed, Path("/out"))
    assert (notice.event, notice.title) == ("failed", "nst-batch: bad failed (job-3)")
    assert notice.body == "bad.yaml: iterations: must be at least 1; inputs in state_dir/failed/bad"
    assert job_notice(record(4, "cat", JobStatus.DONE), Path("/out")).body == "results in /out/cat"
    assert job_notice(record(5, "gone", JobStatus.CANCELLED), Path("/out")) is None
    summary = summary_notice([failed, record(4, "cat", JobStatus.DONE)], 75.0, Path("/out/index.html"))
    assert summary.title == "nst-batch: queue drained (1 done, 1 failed)"
    assert "Computing time: 1 min 15 s" in summary.body and "Gallery: /out/index.html" in summary.body
    assert "- bad (job-3): bad.yaml: iterations: must be at least 1" in summary.body
    assert drained(0, 2, idle=True) and not drained(1, 2, idle=True) and not drained(0, 0, idle=True)
    assert not drained(0, 2, idle=False)


def test_urls_are_secret_in_the_config():
    config = NotifyConfig(urls=["ntfy://user:hunter2@ntfy.example/topic"])
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"urls": "json://user:hunter2@h/x"}, "notify.urls"),  # a URL where a list of them goes
        ({"urls": [{"json://user:hunter2@h/x": None}]}, "notify.urls[0]"),
        ("json://user:hunter2@h/x", "notify"),  # the section itself, mistyped
    ],
    ids=["a URL for the list", "a mapping in the list", "a URL for the section"],
)
def test_a_config_error_names_a_secret_key_but_never_shows_its_value(given, key):
    with pytest.raises(ConfigError) as raised:
        config_from_mapping({"notify": given}, source="nst.yaml", base_dir=Path("/tmp"))
    assert str(raised.value).startswith(f"nst.yaml: {key}: must be ")
    assert "hunter2" not in str(raised.value) and "not shown" in str(raised.value)
    with pytest.raises(ConfigError, match=r"notify\.attempts: must be >= 1, got 0$"):  # other values are still shown
        config_from_mapping({"notify": {"attempts": 0}}, source="nst.yaml", base_dir=Path("/tmp"))


class DeadReceiver:
    """An apprise target whose every try fails, as a refused connection does."""

    def __init__(self):
        self.tries: list[str] = []
        self.tried = threading.Event()

    def notify(self, title: str, body: str) -> bool:
        self.tries.append(title)
        self.tried.set()
        raise ConnectionRefusedError("json://user:hunter2@127.0.0.1:9/hook refused")


def test_stop_returns_at_once_with_a_full_queue_and_a_dead_receiver_and_keeps_the_summary(monkeypatch):
    dead = DeadReceiver()
    monkeypatch.setattr(Notifier, "_targets_of", staticmethod(lambda urls: [("notify URL 1 (json://...)", dead)]))
    notifier = Notifier(NotifyConfig(urls=["json://user:hunter2@127.0.0.1:9/hook"], attempts=10, retry_seconds=3600))
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")
    try:
        notifier.start()
        notifier.send(Notice("failed", "first", ""))
        assert dead.tried.wait(10)  # its next try is an hour away
        for number in range(1, WAITING_MAX + 2):
            notifier.send(Notice("failed", f"job {number}", ""))
        notifier.send(Notice("drained", "summary", ""))  # the queue is full: the oldest job notice makes room
        thread = notifier._thread
        stopper = threading.Thread(target=notifier.stop)
        stopper.start()
        stopper.join(30)  # a bound for a broken stop only: this one waits on no retry and no receiver
        assert not stopper.is_alive() and not thread.is_alive()
    finally:
        logger.remove(sink)
    # The first's hour-long pause ended at the stop, with no more tries; the others had one try each.
    assert dead.tries == ["first", *(f"job {n}" for n in range(3, WAITING_MAX + 2)), "summary"]
    log = "".join(lines)
    assert "dropped the oldest: job 1" in log and "dropped the oldest: job 2" in log
    assert "(first) dropped: the daemon stops" in log
    assert "could not be sent to notify URL 1 (json://...): ConnectionRefusedError (try 1 of 10)" in log
    assert "hunter2" not in log
    assert notifier.failures == len(dead.tries) and notifier.sent == 0


class Told:
    """The notifier as the notices see it: it wants every event and keeps what it is given."""

    enabled = True

    def __init__(self):
        self.notices: list[Notice] = []

    def wants(self, event: str) -> bool:
        return True

    def send(self, notice: Notice) -> None:
        self.notices.append(notice)

    def titles(self) -> list[str]:
        titles = [notice.title for notice in self.notices]
        self.notices.clear()
        return titles


def end(store: Store, name: str, status: JobStatus, stamp: float) -> None:
    """A job ended with the time its write took before it waited for the lock: ``stamp``."""
    job_id = store.begin_claim(name, "pair", [], None, {})
    store.set_job_status(job_id, status, "it broke")
    store.db.execute("UPDATE jobs SET updated=? WHERE id=?", (stamp, job_id))


def test_an_end_committed_after_a_later_stamped_one_is_still_told_once(tmp_path):
    store = Store(tmp_path / "state")
    told = Told()
    notices = Notices(store, told, tmp_path / "outbox")
    now = time.time()
    end(store, "quick", JobStatus.DONE, now + 10)
    notices.tick(idle=False)
    assert told.titles() == ["nst-batch: quick done (job-1)"]
    end(store, "slow", JobStatus.FAILED, now + 5)  # stamped before quick, committed after it was told
    notices.tick(idle=False)
    assert told.titles() == ["nst-batch: slow failed (job-2)"]
    notices.tick(idle=True)
    assert told.titles() == ["nst-batch: queue drained (1 done, 1 failed)"]
    end(store, "slower", JobStatus.FAILED, now + 8)  # stamped before that summary's latest end, committed after it
    notices.tick(idle=True)
    assert told.titles() == ["nst-batch: slower failed (job-3)", "nst-batch: queue drained (0 done, 1 failed)"]
    notices.tick(idle=True)
    assert told.titles() == []
    Notices(store, told, tmp_path / "outbox").tick(idle=True)  # a restart repeats nothing
    assert told.titles() == []
    store.close()


class Receiver:
    """A JSON webhook on 127.0.0.1: what apprise's json:// plugin posts."""

    def __init__(self):
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def titles(self) -> list[str]:
        return [post.get("title", "") for post in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def control(daemon: Daemon, *args: str) -> None:
    assert main([*args, "--config", str(daemon.config)]) == 0


def night(daemon: Daemon, good: str, bad: str) -> None:
    """A good job and one failing on its sidecar, both in before either can end the queue."""
    control(daemon, "pause")
    drop_pair(daemon.inbox, good)
    drop_pair(daemon.inbox, bad, "iterations: 0\n", seed=1)
    daemon.wait(lambda: daemon.job_status(good) == "queued" and daemon.job_status(bad) == "failed", 60, "the claims")
    control(daemon, "resume")


@pytest.mark.slow
def test_a_local_receiver_hears_of_the_failure_and_the_drained_queue_and_without_it_the_jobs_still_end(daemon_factory):
    """Must show 5."""
    receiver = Receiver()
    url = f"json://127.0.0.1:{receiver.port}/hook-secret-token"
    daemon: Daemon = daemon_factory(notify={"urls_file": "urls.txt", "attempts": 2, "retry_seconds": 0.3})
    (daemon.root / "urls.txt").write_text(f"# the webhook\n{url}\n")
    daemon.start()
    try:
        night(daemon, "good", "bad")
        daemon.wait(lambda: any("drained" in t for t in receiver.titles()), 60, "the drained summary")
        failed = [p for p in receiver.posts if p["title"].startswith("nst-batch: bad failed (job-")]
        assert len(failed) == 1 and "iterations" in failed[0]["message"], receiver.posts
        [summary] = [p for p in receiver.posts if "drained" in p["title"]]
        assert summary["title"] == "nst-batch: queue drained (1 done, 1 failed)"
        assert "- bad (job-" in summary["message"] and "must be >= 1" in summary["message"]
        assert str(daemon.outbox / "index.html") in summary["message"]
        assert len(receiver.posts) == 2  # only the events asked for: no "done"
    finally:
        receiver.close()

    # The receiver is down: the jobs still end; each notice is tried twice, each try logged once.
    night(daemon, "good2", "bad2")
    daemon.wait_published("good2")
    line = "could not be sent to notify URL 1 (json://...)"
    daemon.wait(lambda: daemon.log().count(line) >= 4, 30, "two tries of the two notices")
    time.sleep(1.5)  # three times the longest retry pause: nothing more comes
    log = daemon.log()
    assert log.count(line) == 4, log
    assert log.count("(try 2 of 2); dropped") == 2
    assert "hook-secret-token" not in log and "hook-secret-token" not in (daemon.outbox / "good" / "job.json").read_text()
    assert daemon.job_status("good2") == "done"
