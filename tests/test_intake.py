"""Claiming a submission: what is queued, and what is refused at once with its reason."""

import errno
import os

import pytest
from PIL import Image

from nst_batch.daemon import intake as intake_module
from nst_batch.daemon.claims import dispose_failure, take_back
from nst_batch.daemon.folders import Folders
from nst_batch.daemon.inbox import SidecarRefs, Submission
from nst_batch.daemon.intake import Intake, Scan, sidecar_refs
from nst_batch.daemon.store import Store
from nst_batch.daemon.watcher import InboxWatcher
from nst_batch.engine import StyleParams
from nst_batch.results.result import gif_frame_every
from nst_batch.settings.config import Config


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
    assert intake.store.runs(job.id)[0].params.init == "start.png"


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


# ---- claims that go wrong, and recovery ----


def pair_submission():
    return Submission("cat", "pair", ("cat.content.png", "cat.style.png"), ("cat.content.png",), ("cat.style.png",))


def scanning(intake):
    intake.watcher = InboxWatcher(intake.config.inbox, settle_seconds=0)
    return intake


def test_an_inbox_that_cannot_be_changed_fails_the_job_once_and_leaves_no_claim(intake, monkeypatch):
    real_rename = os.rename

    def read_only_inbox(source, destination):
        if str(intake.config.inbox) in str(source):
            raise PermissionError(errno.EACCES, "Permission denied", str(source))
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", read_only_inbox)
    scanning(intake).tick()
    [job] = intake.store.all_jobs()
    assert job.status == "failed" and "PermissionError" in job.error and "still in the inbox" in job.error
    assert [p.name for p in (intake.folders.failed / "cat").iterdir()] == ["error.txt"]
    scan = intake.tick()
    assert len(intake.store.all_jobs()) == 1  # the files left behind are not claimed again every tick
    assert scan == Scan(claimed=0, waiting=False)
    for name in ("cat.content.png", "cat.style.png"):
        os.utime(intake.config.inbox / name, ns=(1, 1))  # dropped again: tried again
    intake.tick()
    assert len(intake.store.all_jobs()) == 2


def test_a_retry_that_fails_again_leaves_files_of_its_name_in_the_inbox_to_be_claimed_as_new(intake):
    job = claim_with_sidecar(intake, "init: missing.png\n")
    assert job.status == "failed"
    take_back(intake.folders, job.id, intake.folders.failed / "cat")  # `nst-batch retry`, as the daemon does it
    intake.store.reclaim(job.id, {})
    for name in ("cat.content.png", "cat.style.png"):  # meanwhile, a new submission of the same name
        Image.new("RGB", (20, 10), "green").save(intake.config.inbox / name)
    scanning(intake).tick()
    retried, new = intake.store.all_jobs()
    assert retried.status == "failed" and "missing.png" in retried.error and "inbox" not in retried.error
    assert (new.name, new.status) == ("cat", "queued")


def test_a_retry_whose_files_went_from_its_folder_says_so(intake):
    job = claim_with_sidecar(intake, "init: missing.png\n")
    take_back(intake.folders, job.id, intake.folders.failed / "cat")
    (intake.folders.job_dir(job.id) / "cat.style.png").unlink()
    intake.store.reclaim(job.id, {})
    scanning(intake).tick()
    job = intake.store.job(job.id)
    assert job.status == "failed" and job.error.startswith("cat.style.png went from ") and "inbox" not in job.error


def test_an_unreadable_input_fails_the_job_with_its_files_in_failed(intake, monkeypatch):
    def unreadable(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(intake_module, "_sha256", unreadable)
    job = intake.store.job(intake.claim(pair_submission()))
    assert job.status == "failed" and "Permission denied" in job.error
    failed = intake.folders.failed / "cat"
    assert sorted(p.name for p in failed.iterdir()) == ["cat.content.png", "cat.style.png", "error.txt"]
    assert intake.store.jobs("claiming") == []


def test_a_claim_left_claiming_is_finished_at_the_next_tick(intake):
    job_id = intake.store.begin_claim("cat", "pair", pair_submission().files, None,
                                      {"contents": ["cat.content.png"], "styles": ["cat.style.png"], "problem": None})
    scanning(intake).tick()
    assert intake.store.job(job_id).status == "queued"
    assert len(intake.store.all_jobs()) == 1  # the recovered claim, not a second job for the same files


def test_a_failure_interrupted_after_its_rename_is_finished_without_a_second_folder(intake):
    job_id = intake.store.begin_claim("cat", "pair", pair_submission().files, None, {"problem": "bad"})
    intake.store.record_error(job_id, "bad")
    for name in pair_submission().files:
        intake.folders.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        os.rename(intake.config.inbox / name, intake.folders.job_dir(job_id) / name)
    dispose_failure(intake.folders, job_id, "cat", "bad")  # then the daemon died
    scanning(intake).tick()
    job = intake.store.job(job_id)
    assert (job.status, job.error) == ("failed", "bad")
    assert [p.name for p in intake.folders.failed.iterdir()] == ["cat"]


def test_claiming_never_lists_every_job(intake, monkeypatch):
    monkeypatch.setattr(intake.store, "all_jobs", lambda: pytest.fail("all_jobs grows without bound"))
    (intake.folders.outbox / "cat").mkdir()
    job = intake.store.job(intake.claim(pair_submission()))
    assert (job.status, job.outbox_name) == ("queued", "cat-2")


def test_a_gif_keeps_frames_at_the_rate_nst_batch_run_uses(intake):
    job = claim_with_sidecar(intake, "gif: true\niterations: 100\nscales: 2\n")
    frame_every = intake.store.runs(job.id)[0].params.frame_every
    assert frame_every == gif_frame_every(StyleParams(iterations=100, scales=2)) == 4  # 200 iterations, ~50 frames


# ---- what a tick sees ----


def test_a_tick_says_whether_files_still_wait_and_ignored_files_do_not_count(intake):
    for name in ("cat.content.png", "cat.style.png"):
        (intake.config.inbox / name).unlink()
    (intake.config.inbox / ".DS_Store").write_bytes(b"x")
    assert scanning(intake).tick() == Scan(claimed=0, waiting=False)
    Image.new("RGB", (20, 10), "red").save(intake.config.inbox / "dog.content.png")
    assert intake.tick() == Scan(claimed=0, waiting=True)  # a half pair waits for its partner
    Image.new("RGB", (20, 10), "red").save(intake.config.inbox / "dog.style.png")
    assert intake.tick() == Scan(claimed=1, waiting=False)


def test_a_sidecar_that_is_a_symbolic_link_is_never_read(intake, tmp_path):
    outside = tmp_path / "outside.yaml"
    outside.write_text("content: cat.content.png\nstyle: cat.style.png\n")
    (intake.config.inbox / "night.yaml").symlink_to(outside)
    refs = sidecar_refs(intake.config.inbox, "night.yaml")
    assert refs.content is None and refs.problem == "night.yaml is a symbolic link: copy the file itself into the inbox"


@pytest.mark.parametrize(
    ("text", "content", "style"),
    [
        ("content: a.png\nstyle: [b.png, c.png]\n", ("a.png",), ("b.png", "c.png")),
        ("iterations: 5\n", None, None),
        ("style: b.png\n", None, ("b.png",)),
    ],
)
def test_a_sidecar_names_files_as_the_sidecar_model_reads_them(intake, text, content, style):
    (intake.config.inbox / "night.yaml").write_text(text)
    assert sidecar_refs(intake.config.inbox, "night.yaml") == SidecarRefs(content=content, style=style)


@pytest.mark.parametrize("text", ["content: 12\nstyle: b.png\n", "content: {a: 1}\nstyle: b.png\n", "content: [a.png, [b]]\n"])
def test_a_sidecar_naming_files_with_the_wrong_type_is_a_problem_not_a_name(intake, text):
    (intake.config.inbox / "night.yaml").write_text(text)
    refs = sidecar_refs(intake.config.inbox, "night.yaml")
    assert refs.content is None and "night.yaml" in refs.problem and "content" in refs.problem
