"""What an older nst-batch left behind still means what it meant: a job database and a checkpoint
written by main at cd387ff (tests/fixtures/main-cd387ff, made by its make.py) are read by today's
code; so are the outbox and state that main left at 65ad0f0, just before the house rebuild
(tests/fixtures/main-65ad0f0). Its runs keep the loss definitions they were queued with, though the defaults changed
since (loss_normalization, lbfgs_max_step), and the stopped one resumes at its iteration."""

import json
import shutil
from pathlib import Path

import pytest
from daemon_helpers import Daemon, in_gallery, loss_rows

from nst_batch.daemon.checkpoint import load_checkpoint
from nst_batch.daemon.store import Store
from nst_batch.engine import StyleParams
from nst_batch.results.report import JobStatus, read_report

FIXTURE = Path(__file__).parent / "fixtures" / "main-cd387ff"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture
def legacy_state(tmp_path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(FIXTURE / "state", state)
    return state


def test_the_old_records_read_as_the_parameters_they_ran_with(legacy_state):
    store = Store(legacy_state)
    try:
        runs = store.queued_runs()
    finally:
        store.close()
    assert [r.label for r in runs] == ["style_weight=1e+06", "style_weight=1e+04"]
    for run in runs:
        assert run.params.loss_normalization == "none" and run.params.lbfgs_max_step == 0
    assert (runs[0].params.alpha, runs[0].params.beta) == (1.0, 1e6)  # the defaults of then
    assert runs[1].params.beta == 1e4
    assert StyleParams().loss_normalization == "network"  # what a new job gets


def test_the_old_checkpoint_resumes_the_run_it_belongs_to(legacy_state):
    store = Store(legacy_state)
    try:
        first, second = store.queued_runs()
    finally:
        store.close()
    state, frames = load_checkpoint(legacy_state / "checkpoints" / "run-1.pt", first.params)
    assert state is not None and state.iteration == 2 and state.repairs == [] and len(frames) == 0
    other = first.params.with_overrides({"loss_normalization": "network"})
    assert load_checkpoint(legacy_state / "checkpoints" / "run-1.pt", other)[0] is None  # another run now


def test_the_daemon_finishes_an_old_queue_with_the_old_meaning(daemon_factory, legacy_state):
    daemon: Daemon = daemon_factory(performance={"threads": 1, "autocast": "off"}, scheduler={"calibrate": False})
    shutil.copytree(legacy_state, daemon.state)
    daemon.start()
    job = daemon.wait_published("legacy", timeout=120)["legacy"]
    assert "resuming from iteration 2" in daemon.log()
    finals = {}
    for result in job["results"]:
        assert result["params"]["loss_normalization"] == "none" and result["params"]["lbfgs_max_step"] == 0
        header, rows = loss_rows(daemon.outbox / "legacy" / f"{result['label']}.losses.csv")
        assert [int(row[0]) for row in rows] == [1, 2, 3, 4, 5, 6]
        finals[result["label"]] = float(rows[-1][header.index("total")])
    # Adam in fp32 carries a rounding without growing it (test_engine_batch): 1e-3 is room for
    # another CPU. The loss normalization of today's default would give other numbers altogether.
    assert finals == pytest.approx(EXPECTED["final_total_by_that_code"], rel=1e-3)
    assert daemon.terminate()[0] == 0


# --- what main left at 65ad0f0, the last commit before the house rebuild ---------------------

REBUILD = Path(__file__).parent / "fixtures" / "main-65ad0f0"


@pytest.fixture
def before_rebuild(tmp_path) -> Path:
    """Its outbox (job "done", published) and state (job "stopped", checkpointed by SIGTERM)."""
    shutil.copytree(REBUILD, tmp_path / "site", ignore=shutil.ignore_patterns("make.py"))
    return tmp_path / "site"


def test_a_job_json_written_before_the_rebuild_reads_as_a_typed_report(before_rebuild):
    old = json.loads((before_rebuild / "outbox" / "done" / "job.json").read_text())
    report = read_report(before_rebuild / "outbox" / "done" / "job.json")
    assert (report.id, report.name, report.kind, report.status) == (1, "done", "pair", JobStatus.DONE)
    assert report.inputs.files == ("done.content.png", "done.style.png") and report.device == "cpu"
    [result] = report.results
    assert result.done and result.label == "done" and result.iterations == 4
    assert result.final_losses.total == old["results"][0]["final_losses"]["total"]
    assert result.params == old["results"][0]["params"] and result.pretrained_weights is False


def test_the_daemon_resumes_a_run_stopped_before_the_rebuild_and_the_gallery_shows_both(daemon_factory, before_rebuild):
    daemon: Daemon = daemon_factory(performance={"threads": 1, "autocast": "off"}, scheduler={"calibrate": False})
    shutil.copytree(before_rebuild / "state", daemon.state)
    shutil.copytree(before_rebuild / "outbox", daemon.outbox)
    stopped_at = Store(daemon.state)
    try:
        [run] = stopped_at.queued_runs()
    finally:
        stopped_at.close()
    checkpoint, _ = load_checkpoint(daemon.state / "checkpoints" / f"run-{run.id}.pt", run.params)
    assert checkpoint is not None and 0 < checkpoint.iteration < run.params.iterations
    daemon.start()
    job = daemon.wait_published("stopped", timeout=120)["stopped"]
    assert f"resuming from iteration {checkpoint.iteration}" in daemon.log()
    [result] = job["results"]
    assert result["iterations"] == 400 and result["status"] == "done"
    header, rows = loss_rows(daemon.outbox / "stopped" / "losses.csv")
    assert [int(row[0]) for row in rows] == list(range(1, 401))
    daemon.wait(lambda: in_gallery(daemon.outbox, "stopped") and in_gallery(daemon.outbox, "done"), 30, "both in the gallery")
    assert daemon.terminate()[0] == 0
