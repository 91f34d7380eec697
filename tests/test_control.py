"""`nst-batch pause | resume | priority | cancel | retry` against the real daemon, the decisions
behind them, and output that survives a closed pipe."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from daemon_helpers import Daemon, drop_pair, make_image, wait_for

from nst_batch.cli.main import main
from nst_batch.daemon.control import cancel_refusal, parse_ref, pick, resolve
from nst_batch.daemon.halt import cancelled
from nst_batch.daemon.runner import Ending, Outcome
from nst_batch.daemon.service import Service
from nst_batch.daemon.store import Action, Pause, RunSpec, Store
from nst_batch.engine import StyleParams
from nst_batch.results.report import JobStatus, RunStatus, job_ending
from nst_batch.settings.config import Config
from nst_batch.util.errors import InputError


def cli(daemon: Daemon, capsys, *args: str) -> tuple[int, str, str]:
    """The command line in this process (torch is loaded already): exit status, stdout, stderr."""
    capsys.readouterr()
    status = main([*args, "--config", str(daemon.config)])
    out, err = capsys.readouterr()
    return status, out, err


def runs_of(daemon: Daemon, name: str) -> list:
    return daemon.query("SELECT runs.* FROM runs JOIN jobs ON jobs.id = runs.job_id WHERE jobs.name=?", name)


# --- the decisions (pure) --------------------------------------------------------------------


def test_references_are_ids_names_or_runs():
    assert parse_ref("job-5") == ("job", 5)
    assert parse_ref("5") == ("job", 5)
    assert parse_ref("run-12") == ("run", 12)
    assert parse_ref("cat") == ("name", "cat")
    assert parse_ref("job-cat") == ("name", "job-cat")


def test_a_job_ends_cancelled_failed_or_done():
    assert job_ending(JobStatus.CANCELLING, [RunStatus.DONE, RunStatus.CANCELLED]) == JobStatus.CANCELLED
    assert job_ending(JobStatus.RUNNING, [RunStatus.CANCELLED, RunStatus.CANCELLED]) == JobStatus.CANCELLED
    assert job_ending(JobStatus.RUNNING, [RunStatus.DONE, RunStatus.CANCELLED]) == JobStatus.DONE
    assert job_ending(JobStatus.RUNNING, [RunStatus.FAILED, RunStatus.CANCELLED]) == JobStatus.FAILED
    assert job_ending(JobStatus.RUNNING, [RunStatus.DONE, RunStatus.FAILED]) == JobStatus.FAILED


@pytest.fixture()
def store(tmp_path):
    store = Store(tmp_path / "state")
    yield store
    store.close()


def add_job(store: Store, name: str, status: JobStatus = JobStatus.QUEUED) -> int:
    job_id = store.begin_claim(name, "pair", [f"{name}.content.png"], None, {})
    store.queue(job_id, [RunSpec(name, f"{name}.content.png", ("s.png",), StyleParams(iterations=3), {})], 0, name, {})
    store.set_job_status(job_id, status)
    return job_id


def test_a_name_used_twice_is_refused_with_both_ids_and_an_unknown_one_is_said_plainly(store):
    first, second = add_job(store, "cat", JobStatus.DONE), add_job(store, "cat")
    with pytest.raises(InputError, match=f"'cat' is ambiguous: 2 jobs .*job-{first} \\(done\\), job-{second} \\(queued\\)"):
        resolve(store, "cat")
    assert resolve(store, f"job-{second}").job.id == second
    with pytest.raises(InputError, match="no job is named 'dog'"):
        pick("dog", store.jobs_named("dog"))
    with pytest.raises(InputError, match="no job 99"):
        resolve(store, "99")
    assert "done already" in cancel_refusal(resolve(store, f"job-{first}"))
    assert cancel_refusal(resolve(store, f"job-{second}")) is None


def test_commands_answer_in_one_line_and_refuse_with_exit_2(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("inbox: inbox\noutbox: outbox\nstate_dir: state\nstyles_dir: null\n")
    store = Store(tmp_path / "state")
    done, queued = add_job(store, "cat", JobStatus.DONE), add_job(store, "dog")
    add_job(store, "dog")
    store.close()

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([*args, "--config", str(config)])
        out, err = capsys.readouterr()
        return status, out, err

    assert run("pause") == (0, "paused: no new run starts; running runs finish (`nst-batch resume` goes on)\n", "")
    status, out, _ = run("status", "--json")
    assert '"paused": "after_runs"' in out
    assert run("resume")[1] == "resumed: queued runs start again\n"
    assert run("priority", f"job-{queued}", "7")[1] == f"job-{queued} dog: priority 0 -> 7\n"
    for args, message in [
        (("cancel", "nobody"), "no job is named 'nobody'"),
        (("cancel", "dog"), "'dog' is ambiguous"),
        (("cancel", "cat"), "is done already: nothing to cancel"),
        (("retry", f"job-{queued}"), "only a failed or cancelled job can be retried"),
        (("retry", "cat", "--param", "iterations=-1"), "iterations"),
        (("retry", "cat", "--param", "itterations=3"), "did you mean"),
        (("priority", "cat", "3"), "only a waiting job has a priority"),
    ]:
        status, out, err = run(*args)
        assert (status, out) == (2, ""), args
        assert err.startswith("nst-batch: error: ") and message in err and err.count("\n") == 1, err
    assert done  # the done job was left alone


# --- end to end, with the real daemon ---------------------------------------------------------


@pytest.mark.slow
def test_paused_queue_starts_nothing_even_after_a_restart_then_resumes_in_priority_order(daemon_factory, capsys):
    """Must show 1 and 4: three jobs queued while paused; none starts within 5 s (nor after a
    restart); `priority` moves the last ahead of the earlier ones; `resume` runs them all."""
    daemon: Daemon = daemon_factory()
    daemon.start()
    assert cli(daemon, capsys, "pause")[0] == 0
    for i, name in enumerate(("first", "second", "third")):
        drop_pair(daemon.inbox, name, seed=i)
    daemon.wait(lambda: len(daemon.query("SELECT id FROM jobs WHERE status='queued'")) == 3, 60, "three queued jobs")
    status, out, _ = cli(daemon, capsys, "priority", "third", "5")
    assert status == 0 and out.endswith("third: priority 0 -> 5\n")

    report = daemon.status_cli()
    assert report["paused"] == "after_runs"
    assert [job["name"] for job in report["queued"]] == ["third", "first", "second"]
    waited = time.monotonic()
    while time.monotonic() - waited < 5:
        assert not daemon.query("SELECT id FROM runs WHERE started IS NOT NULL"), "a run started while paused"
        time.sleep(0.2)
    daemon.wait(lambda: "Paused" in (daemon.outbox / "index.html").read_text(), 10, "the gallery to say it is paused")

    assert daemon.terminate()[0] == 0
    daemon.start()
    assert "paused: no new run starts" in daemon.log()
    time.sleep(1.5)  # a restarted daemon would have started the first run by now
    assert not daemon.query("SELECT id FROM runs WHERE started IS NOT NULL"), "a run started after the restart"

    status, out, _ = cli(daemon, capsys, "resume")
    assert (status, out) == (0, "resumed: queued runs start again\n")
    daemon.wait_published("first", "second", "third", timeout=120)
    started = {row["label"]: row["started"] for row in daemon.query("SELECT label, started FROM runs")}
    assert started["third"] < started["first"] < started["second"]
    assert daemon.status_cli()["paused"] is None


@pytest.mark.slow
def test_cancel_stops_a_running_job_within_2_s_and_a_failed_job_is_retried_with_a_corrected_parameter(
    daemon_factory, capsys
):
    """Must show 2 and 3. A long run is cancelled: it stops within 2 s, nothing of it reaches the
    outbox, no checkpoint stays, its inputs are in cancelled/. A job whose sidecar is bad fails;
    retried with the value corrected, it ends done, its inputs out of failed/."""
    daemon: Daemon = daemon_factory(checkpoint_every=5)
    daemon.start()
    drop_pair(daemon.inbox, "long", "iterations: 5000\nearly_stop_tol: 0\n")
    drop_pair(daemon.inbox, "bad", "iterations: 0\n", seed=1)
    daemon.wait_failed("bad")

    daemon.wait(lambda: any(r["iteration"] >= 10 for r in runs_of(daemon, "long")), 90, "long to pass iteration 10")
    [run] = runs_of(daemon, "long")
    assert (daemon.state / "checkpoints" / f"run-{run['id']}.pt").exists()  # it had checkpoints

    # A look at it meanwhile: its preview, linked from the gallery's "running" section and from status.
    preview = daemon.outbox / ".running" / f"run-{run['id']}.jpg"
    daemon.wait(lambda: preview.exists(), 30, "the running run's preview")
    assert [r["preview"] for r in daemon.status_cli()["running"]] == [str(preview)]
    daemon.wait(lambda: f".running/run-{run['id']}.jpg" in (daemon.outbox / "index.html").read_text(), 10,
                "the gallery's running section")
    assert "Running (1)" in (daemon.outbox / "index.html").read_text()

    status, out, _ = cli(daemon, capsys, "cancel", "long")
    assert status == 0 and "long: cancelled, its running run stops now" in out
    daemon.wait(lambda: daemon.job_status("long") == "cancelled", 10, "long to be cancelled")
    [request] = daemon.query("SELECT created FROM requests")
    [run] = runs_of(daemon, "long")
    stopped_s = run["finished"] - request["created"]
    assert run["status"] == "cancelled" and stopped_s < 2.0
    assert run["iteration"] < 5000
    assert sorted(p.name for p in (daemon.state / "cancelled" / "long").iterdir()) == [
        "cancelled.txt", "log.txt", "long.content.png", "long.style.png", "long.yaml",
    ]
    assert "nst-batch retry" in (daemon.state / "cancelled" / "long" / "cancelled.txt").read_text()
    assert not (daemon.outbox / "long").exists() and not list((daemon.outbox / ".staging").iterdir())
    assert not list((daemon.state / "checkpoints").iterdir())
    assert not (daemon.state / "jobs" / str(run["job_id"])).exists()
    assert not preview.exists()  # the preview went with the run

    # a new submission of the same name waits in the inbox for its pair: the retry leaves it there
    make_image(daemon.inbox / "bad.content.png", seed=5)
    status, out, _ = cli(daemon, capsys, "retry", "bad", "--param", "iterations=3")
    assert status == 0 and "bad: queued again from failed/bad with iterations=3" in out
    published = daemon.wait_published("bad")["bad"]
    assert (daemon.inbox / "bad.content.png").exists()
    assert published["status"] == "done" and [r["attempts"] for r in published["results"]] == [1]
    assert not (daemon.state / "failed" / "bad").exists()
    report = daemon.status_cli()
    assert report["jobs"]["cancelled"] == 1 and report["jobs"]["done"] == 1 and report["jobs"]["failed"] == 0
    gallery = (daemon.outbox / "index.html").read_text()
    assert "Cancelled (1)" in gallery and "long" in gallery

    # the daemon's own refusal (its inputs were removed by hand) is one line on stderr and exit 2
    for item in (daemon.state / "cancelled" / "long").iterdir():
        item.unlink()
    (daemon.state / "cancelled" / "long").rmdir()
    status, out, err = cli(daemon, capsys, "retry", "long")
    assert status == 2 and not out and "its inputs are not in cancelled/long any more" in err


# --- pipes ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_closed_pipe_ends_status_quietly_with_large_output_and_with_watch(tmp_path):
    """`nst-batch status --all | head -3` on a queue of 5000 jobs, and the same with --watch."""
    config = tmp_path / "config.yaml"
    config.write_text("inbox: inbox\noutbox: outbox\nstate_dir: state\nstyles_dir: null\n")
    store = Store(tmp_path / "state")
    with store._transaction() as db:
        db.executemany(
            "INSERT INTO jobs (name, kind, status, files, created, updated) VALUES (?, 'pair', 'queued', '[]', 0, 0)",
            [(f"photo-{i:05d}",) for i in range(5000)],
        )
    store.set_pause(Pause.OFF)
    store.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "nst_batch", "status", "--all", *extra, "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        for extra in ([], ["--watch", "0.2"])
    ]
    for process in processes:
        lines = [process.stdout.readline() for _ in range(3)]
        assert b"jobs" in b"".join(lines)
        process.stdout.close()  # what head does after its three lines
    for process in processes:
        assert process.wait(30) == 0
        assert process.stderr.read() == b""


# --- the main loop in this process, with a runner that only waits to be stopped ---------------


class WaitingRunner:
    """Each run 'computes' until its work's stop flag is set; then it ends as the runner would:
    cancelled, or stopped (checkpointed) for a pause --now. With ``finish`` set, runs end done."""

    device = torch.device("cpu")

    def __init__(self):
        self.started: list[str] = []
        self.finish = threading.Event()

    def network(self, backbone):
        return None, None

    def batch_key(self, run):
        return None

    def run_batch(self, runs, stop, store):
        self.started.extend(run.label for _, run in runs)
        while not stop.is_set() and not self.finish.is_set():
            time.sleep(0.01)
        if self.finish.is_set() and not stop.is_set():
            return [Outcome(Ending.DONE)] * len(runs)
        return [Outcome(Ending.CANCELLED if cancelled(stop, run.id) else Ending.STOPPED) for _, run in runs]


def test_pause_now_stops_the_running_run_to_resume_later_and_cancel_of_a_queued_job_moves_its_inputs(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    config = Config(
        inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state", styles_dir=None,
        scheduler={"calibrate": False}, performance={"threads": 1},
    )
    runner = WaitingRunner()
    service = Service(config, runner=runner)
    ids = {}
    for name in ("busy", "later"):
        ids[name] = service.store.begin_claim(name, "pair", [f"{name}.content.png"], None, {})
        service.folders.job_dir(ids[name]).mkdir(parents=True)
        (service.folders.job_dir(ids[name]) / f"{name}.content.png").write_bytes(b"c")
        service.store.queue(ids[name], [RunSpec(name, f"{name}.content.png", ("s.png",), StyleParams(), {})], 0, name, {})
    problems = []

    def drive() -> None:  # beside the main loop, which stays on this thread (its store was made here)
        other = Store(config.state_dir)
        try:
            wait_for(lambda: runner.started == ["busy"], 20, "busy to start")
            other.set_pause(Pause.NOW)
            wait_for(lambda: other.runs(ids["busy"])[0].status == RunStatus.QUEUED, 5, "busy to checkpoint and wait")
            assert other.runs(ids["busy"])[0].attempts == 0  # a pause is not a failed attempt
            request = other.ask(Action.CANCEL, ids["later"])
            wait_for(lambda: other.request(request).answer, 5, "the daemon's answer")
            assert other.request(request).answer == f"job-{ids['later']} later: cancelled; its inputs go to cancelled/"
            wait_for(lambda: other.job(ids["later"]).status == JobStatus.CANCELLED, 5, "later to be cancelled")
            assert sorted(p.name for p in (service.folders.cancelled / "later").iterdir()) == [
                "cancelled.txt", "later.content.png",
            ]
            time.sleep(1.0)
            assert runner.started == ["busy"]  # paused: nothing started again
            runner.finish.set()
            other.set_pause(Pause.OFF)
            wait_for(lambda: other.job(ids["busy"]).status == JobStatus.DONE, 10, "busy to run again and end")
            assert runner.started == ["busy", "busy"]
        except BaseException as error:  # pytest.fail raises a BaseException
            problems.append(error)
        finally:
            other.close()
            service.request_stop()

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        assert service.serve() == 0
    finally:
        service.request_stop()
        driver.join(30)
        service.store.close()
    assert not problems, problems[0]
