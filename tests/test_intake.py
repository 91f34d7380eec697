"""Claiming a submission: what is queued, and what is refused at once with its reason."""

import pytest
from PIL import Image

from nst_batch.claims import Folders
from nst_batch.config import Config
from nst_batch.inbox import Submission
from nst_batch.intake import Intake
from nst_batch.store import Store


@pytest.fixture()
def intake(tmp_path):
    config = Config(
        inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state",
        styles_dir=tmp_path / "styles",
    )
    folders = Folders(config)
    folders.create()
    config.styles_dir.mkdir()
    for name in ("cat.content.png", "cat.style.png"):
        Image.new("RGB", (20, 10), "red").save(config.inbox / name)
    Image.new("RGB", (20, 10), "blue").save(config.styles_dir / "start.png")
    store = Store(folders.state)
    yield Intake(config, folders, store, watcher=None)
    store.close()


def claim_with_sidecar(intake, text):
    (intake.config.inbox / "cat.yaml").write_text(text)
    files = ("cat.content.png", "cat.style.png", "cat.yaml")
    job_id = intake.claim(Submission("cat", "pair", files, ("cat.content.png",), ("cat.style.png",), "cat.yaml"))
    return intake.store.job(job_id)


def test_init_names_a_style_library_file(intake):
    job = claim_with_sidecar(intake, "init: start.png\n")
    assert job.status == "queued"
    assert intake.store.runs(job.id)[0].params["init"] == "start.png"


@pytest.mark.parametrize(
    ("init", "reason"), [("../../etc/passwd", "without a folder"), ("missing.png", "missing.png does not exist")]
)
def test_init_outside_the_library_is_refused_with_a_reason(intake, init, reason):
    job = claim_with_sidecar(intake, f"init: {init}\n")
    assert job.status == "failed" and reason in job.error
    failed = intake.folders.failed / "cat"
    assert reason in (failed / "error.txt").read_text()
    assert sorted(p.name for p in failed.iterdir()) == ["cat.content.png", "cat.style.png", "cat.yaml", "error.txt"]


def test_sweep_with_three_contents_names_each_result(intake):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 10), "green").save(intake.config.inbox / name)
    (intake.config.inbox / "night.yaml").write_text("sweep:\n  tv_weight: [0, 0.001]\n")
    files = ("night.yaml", "a.png", "b.png", "cat.style.png")
    job_id = intake.claim(Submission("night", "sidecar", files, ("a.png", "b.png"), ("cat.style.png",), "night.yaml"))
    labels = [run.label for run in intake.store.runs(job_id)]
    assert labels == ["a_tv_weight=0", "a_tv_weight=0.001", "b_tv_weight=0", "b_tv_weight=0.001"]
