"""Moving inputs out of the inbox: repeatable, and working across filesystems."""

import errno
import os

import pytest

from nst_batch.claims import Folders, dispose_failure, move_in
from nst_batch.config import Config


@pytest.fixture()
def folders(tmp_path):
    config = Config(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state", styles_dir=None)
    result = Folders(config)
    result.create()
    return result


def test_claim_across_filesystems_copies_then_removes(folders, monkeypatch):
    (folders.inbox / "cat.content.png").write_bytes(b"content")
    real_rename = os.rename

    def rename(source, destination):
        if "inbox" in str(source):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    assert move_in(folders, 1, ["cat.content.png"]) == []
    assert (folders.job_dir(1) / "cat.content.png").read_bytes() == b"content"
    assert not (folders.inbox / "cat.content.png").exists()
    assert not [p for p in folders.job_dir(1).iterdir() if p.name.startswith(".")]


def test_repeating_a_claim_finishes_it(folders):
    (folders.inbox / "trip").mkdir()
    (folders.inbox / "trip" / "style.jpg").write_bytes(b"s")
    (folders.inbox / "trip" / "a.jpg").write_bytes(b"a")
    files = ["trip/a.jpg", "trip/style.jpg", "trip/gone.jpg"]
    (folders.job_dir(2) / "trip").mkdir(parents=True)
    (folders.job_dir(2) / "trip" / "a.jpg").write_bytes(b"a")  # copied before a crash, source still there

    assert move_in(folders, 2, files) == ["trip/gone.jpg"]
    assert sorted(p.name for p in (folders.job_dir(2) / "trip").iterdir()) == ["a.jpg", "style.jpg"]
    assert not (folders.inbox / "trip").exists()  # the emptied folder is removed


def test_failed_inputs_never_overwrite_each_other(folders):
    for job_id in (3, 4):
        folders.job_dir(job_id).mkdir(parents=True)
        (folders.job_dir(job_id) / "x.png").write_bytes(bytes([job_id]))
    first = dispose_failure(folders, 3, "cat", "bad sidecar")
    second = dispose_failure(folders, 4, "cat", "not an image")
    assert (first.name, second.name) == ("cat", "cat-2")
    assert (second / "error.txt").read_text() == "not an image\n"
    assert (first / "x.png").read_bytes() == b"\x03"
