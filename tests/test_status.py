"""`nst-batch status`: the report from the job database, as a table, as JSON, and watched."""

import io
import json
import re
import time

import pytest

from nst_batch.cli import status
from nst_batch.cli.main import main
from nst_batch.daemon.store import DeviceRecord, DeviceState, RunSpec, Store
from nst_batch.engine import StyleParams
from nst_batch.settings.config import load_config
from nst_batch.util.text import format_duration

ANSI = re.compile(r"\x1b\[")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def config(tmp_path):
    return load_config(None, [f"state_dir={tmp_path / 'state'}"])


@pytest.fixture
def busy(config):
    """A database with a queued, a running (120 of 300 done in 60 s) and a failed job."""
    store = Store(config.state_dir)
    spec = RunSpec("cat", "cat.content.png", ("cat.style.png",), StyleParams(), {})
    for name in ("cat", "queued", "typo"):
        job = store.begin_claim(name, "pair", [], None, {})
        store.queue(job, [spec], 0, name, {})
    [run] = store.runs(1)
    store.start_run(run)
    store.db.execute("UPDATE runs SET started=? WHERE id=?", (time.time() - 60, run.id))
    store.progress(run.id, 120, 300, 1234.5678)
    store.set_job_status(3, "failed", "typo.yaml: unknown key 'iteratons' (did you mean 'iterations'?)\nsecond line")
    store.close()
    return config


def test_gather_reports_counts_progress_eta_and_failures(busy):
    report = status.gather(busy)
    assert report["started"] and report["jobs"] == {"queued": 1, "running": 1, "done": 0, "failed": 1}
    [running] = report["running"]
    assert (running["job_id"], running["job_name"], running["label"]) == (1, "cat", "cat")
    assert (running["iteration"], running["total_iterations"], running["loss"]) == (120, 300, 1234.5678)
    assert 80 <= running["eta_seconds"] <= 100  # 0.5 s per iteration, 180 to go
    assert 59 <= running["elapsed_seconds"] <= 70
    [error] = report["recent_errors"]
    assert error["name"] == "typo" and error["error"].startswith("typo.yaml") and error["when"] > time.time() - 60


def test_the_json_keeps_its_fields(busy):
    report = json.loads(status.as_json(status.gather(busy)))
    assert {"jobs", "runs", "running", "recent_errors", "database", "started"} <= set(report)
    assert {"job_id", "label", "iteration", "total_iterations", "loss", "eta_seconds"} <= set(report["running"][0])
    assert {"job_id", "name", "error"} <= set(report["recent_errors"][0])


def test_plain_table_when_piped(busy):
    text = status.render(status.gather(busy))
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert lines[0].split() == ["jobs", "queued", "1", "running", "1", "done", "0", "failed", "1"]
    [row] = [line for line in lines if line.startswith("run-1  job-1 cat")]
    assert "iteration 120/300 (40%)" in row and "1235" in row and re.search(r"\b1 min 3\d s\b", row)
    header = lines[lines.index(row) - 1]
    assert header.split() == ["RUN", "JOB", "RESULT", "PROGRESS", "LOSS", "ELAPSED", "ETA"]
    assert header.index("PROGRESS") == row.index("iteration")  # columns line up
    [failure] = [line for line in lines if line.startswith("job-3")]
    assert "typo" in failure and "unknown key 'iteratons'" in failure and "second line" not in text
    waiting = lines[lines.index("WAITING") + 1 :]
    assert waiting[0].split() == ["JOB", "NAME", "PRIORITY", "RUNS", "LEFT"]
    assert [line.split()[:2] for line in waiting[1:3]] == [["job-1", "cat"], ["job-2", "queued"]]


def test_on_a_terminal_colours_and_lines_cut_to_its_width(busy, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "50")
    text = status.show(status.gather(busy), False, Terminal())
    assert ANSI.search(text)
    plain = ANSI.sub("", re.sub(r"\x1b\[[0-9;]*m", "", text))
    assert max(len(line) for line in plain.splitlines()) <= 50
    assert any(line.endswith("...") for line in plain.splitlines())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not ANSI.search(status.show(status.gather(busy), False, Terminal()))
    assert not ANSI.search(status.show(status.gather(busy), False, io.StringIO()))


def test_no_database_yet(config):
    assert status.render(status.gather(config)).startswith("no jobs yet")


def test_watch_piped_appends_reports(busy):
    out, naps = io.StringIO(), []
    assert status.watch(lambda: status.gather(busy), 3.0, out, refreshes=2, sleep=naps.append) == 0
    text = out.getvalue()
    assert naps == [3.0] and text.count("--- ") == 2 and text.count("iteration 120/300") == 2
    assert not ANSI.search(text)


def test_watch_on_a_terminal_redraws_and_json_is_one_object_per_line(busy, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal = Terminal()
    status.watch(lambda: status.gather(busy), 1.0, terminal, refreshes=2, sleep=lambda s: None)
    assert terminal.getvalue().count("\x1b[H\x1b[2J") == 2 and "Ctrl-C" in terminal.getvalue()
    out = io.StringIO()
    status.watch(lambda: status.gather(busy), 1.0, out, as_json_text=True, refreshes=3, sleep=lambda s: None)
    reports = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(reports) == 3 and all(r["jobs"]["running"] == 1 for r in reports)


def test_ctrl_c_ends_watch_quietly(busy):
    def interrupted(seconds):
        raise KeyboardInterrupt

    assert status.watch(lambda: status.gather(busy), 1.0, io.StringIO(), sleep=interrupted) == 0


def test_cli_status_json_and_a_bad_watch_interval(busy, tmp_path, capsys):
    state = f"state_dir={busy.state_dir}"
    assert main(["status", "--set", state, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"]["failed"] == 1
    assert main(["status", "--set", state]) == 0
    assert "iteration 120/300" in capsys.readouterr().out
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit) as exit_:
            main(["status", "--set", state, "--watch", bad])
        assert exit_.value.code == 2
        assert "--watch" in capsys.readouterr().err


def test_format_duration():
    assert [format_duration(s) for s in (0, 0.3, 42.4, 185, 7800)] == ["0 s", "1 s", "42 s", "3 min 5 s", "2 h 10 min"]


def test_under_ray_each_device_shows_its_load_and_each_run_where_it_runs(tmp_path):
    config = load_config(None, [f"state_dir={tmp_path / 'state'}", "executor=ray", "device=cpu", "ray.devices=3"])
    store = Store(config.state_dir)
    spec = RunSpec("cat", "cat.content.png", ("cat.style.png",), StyleParams(), {})
    for name in ("cat", "dog"):
        store.queue(store.begin_claim(name, "pair", [], None, {}), [spec], 0, name, {})
    for job_id in (1, 2):
        [run] = store.runs(job_id)
        store.start_run(run, "node-a", "gpu:1")
    store.set_devices([
        DeviceRecord("node-a", "gpu:0", DeviceState.READY, 2**30),
        DeviceRecord("node-a", "gpu:1", DeviceState.READY, 3 * 2**30),
        DeviceRecord("-", "actor 2", DeviceState.STARTING),
    ])
    store.close()
    report = status.gather(config)
    assert [(d["device"], d["state"], d["running"]) for d in report["devices"]] == [
        ("actor 2", "starting", 0), ("gpu:0", "ready", 0), ("gpu:1", "ready", 2),
    ]
    assert {(r["node"], r["device"]) for r in report["running"]} == {("node-a", "gpu:1")}
    text = status.render(report)
    assert re.search(r"node-a\s+gpu:1\s+ready\s+2\s+3\.0 GiB", text)
    assert re.search(r"run-1\s+job-1 cat\s+cat\s+node-a gpu:1", text)


def test_the_threads_executor_shows_no_devices_section(busy):
    report = status.gather(busy)
    assert report["devices"] == [] and "DEVICES" not in status.render(report)
    assert "ON" not in status.render(report).split()
