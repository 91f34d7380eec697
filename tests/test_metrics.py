"""Metrics: the textfile node_exporter reads and the 127.0.0.1 port, from the real daemon; their
counts are `nst-batch status --json`'s."""

import socket
import time
import urllib.request

import pytest
from daemon_helpers import Daemon, drop_pair
from prometheus_client.parser import text_string_to_metric_families

from nst_batch.daemon.metrics import Metrics, iterations_per_second
from nst_batch.daemon.store import Store
from nst_batch.settings.config import MetricsConfig


def test_iterations_per_second_counts_each_runs_progress_between_two_looks():
    before = {1: (10, 100.0), 2: (0, 100.0)}
    now = {1: (30, 110.0), 2: (5, 105.0), 3: (50, 110.0)}  # run 3 is new: counted from its next look
    assert iterations_per_second(before, now) == pytest.approx(2.0 + 1.0)
    assert iterations_per_second({}, now) == 0.0


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_notification_failures_are_a_counter_that_follows_the_notifiers_count(tmp_path):
    failures = [0]
    store = Store(tmp_path / "state")
    textfile = tmp_path / "nst-batch.prom"
    metrics = Metrics(MetricsConfig(textfile=textfile), store, lambda: 1, notification_failures=lambda: failures[0])
    seen = []
    for count in (0, 3, 3, 7):
        failures[0] = count
        metrics.tick(force=True)
        text = textfile.read_text()
        assert "# TYPE nst_batch_notification_failures_total counter" in text
        seen.append(samples(text)[("nst_batch_notification_failures_total", ())])
    assert seen == [0, 3, 3, 7]
    store.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_the_metrics_file_parses_and_its_counts_match_status(daemon_factory):
    """Must show 6."""
    port = free_port()
    daemon: Daemon = daemon_factory(metrics={"textfile": "textfiles/nst-batch.prom", "port": port, "every_seconds": 1})
    daemon.start()
    drop_pair(daemon.inbox, "one")
    drop_pair(daemon.inbox, "two", "style_weight: 1000\n", seed=1)
    drop_pair(daemon.inbox, "bad", "iterations: 0\n", seed=2)
    daemon.wait_published("one", "two")
    daemon.wait_failed("bad")
    textfile = daemon.root / "textfiles" / "nst-batch.prom"
    written = time.time()
    daemon.wait(lambda: textfile.exists() and textfile.stat().st_mtime > written + 0.5, 10, "a fresh metrics file")

    values = samples(textfile.read_text())
    report = daemon.status_cli()
    for state, count in report["jobs"].items():
        assert values[("nst_batch_jobs", (("state", state),))] == count, state
    for state, count in report["runs"].items():
        assert values[("nst_batch_runs", (("state", state),))] == count, state
    assert values[("nst_batch_jobs", (("state", "done"),))] == 2 and values[("nst_batch_jobs", (("state", "failed"),))] == 1
    assert values[("nst_batch_runs_running", ())] == 0
    assert values[("nst_batch_queue_wait_seconds", ())] == 0
    assert values[("nst_batch_out_of_memory_retries_total", ())] == 0
    assert values[("nst_batch_memory_budget_bytes", ())] > 0
    for name in ("nst_batch_iterations_per_second", "nst_batch_memory_predicted_bytes", "nst_batch_repairs_total",
                 "nst_batch_memory_measured_peak_bytes", "nst_batch_notification_failures_total", "nst_batch_paused"):
        assert (name, ()) in values, name

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        served = samples(response.read().decode())
    assert served[("nst_batch_jobs", (("state", "done"),))] == 2
