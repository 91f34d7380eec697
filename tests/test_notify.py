"""Notifications: the messages (pure), and the real daemon telling a local HTTP receiver through
apprise's json:// URL, then going on without it."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from daemon_helpers import Daemon, make_image

from nst_batch.cli.main import main
from nst_batch.daemon.notices import drained, job_notice, summary_notice
from nst_batch.daemon.store import JobRecord
from nst_batch.results.report import JobStatus
from nst_batch.settings.config import NotifyConfig


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


def drop_pair(inbox: Path, name: str, sidecar: str | None = None, seed: int = 0) -> None:
    if sidecar is not None:
        (inbox / f"{name}.yaml").write_text(sidecar)
    make_image(inbox / f"{name}.content.png", (40, 30), "gradient", seed)
    make_image(inbox / f"{name}.style.png", (30, 40), "checker", seed)


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
