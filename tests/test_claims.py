"""Moving inputs out of the inbox: repeatable, and working across filesystems."""

import errno
import os

import pytest

from nst_batch.daemon.claims import dispose_failure, dispose_success, move_in
from nst_batch.daemon.folders import Folders
from nst_batch.settings.config import Config
from nst_batch.util.errors import InputError


@pytest.fixture()
def folders(tmp_path):
    config = Config(
        inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state", styles_dir=tmp_path / "styles"
    )
    result = Folders(config)
    result.create()
    return result


def claimed(folders, job_id, **files):
    folders.job_dir(job_id).mkdir(parents=True)
    for name, data in files.items():
        (folders.job_dir(job_id) / name).write_bytes(data)


@pytest.fixture()
def inbox_on_another_filesystem(monkeypatch):
    """rename(2) out of the inbox fails as it does between two mounts."""
    real_rename = os.rename

    def rename(source, destination):
        if "inbox" in str(source):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)


def test_claim_across_filesystems_copies_then_removes(folders, inbox_on_another_filesystem):
    (folders.inbox / "cat.content.png").write_bytes(b"content")
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


def test_a_folder_entry_moves_whole_even_across_filesystems(folders, inbox_on_another_filesystem):
    (folders.inbox / "trip" / "raw").mkdir(parents=True)
    (folders.inbox / "trip" / "raw" / "IMG.jpg").write_bytes(b"i")
    assert move_in(folders, 1, ["trip/raw/"]) == []
    assert (folders.job_dir(1) / "trip" / "raw" / "IMG.jpg").read_bytes() == b"i"
    assert list(folders.inbox.iterdir()) == []
    assert [p.name for p in (folders.job_dir(1) / "trip").iterdir()] == ["raw"]  # no temporary copy left


def test_an_emptied_job_folder_goes_with_its_litter_but_not_with_a_file_being_written(folders):
    for folder, extra in (("trip", ".DS_Store"), ("busy", "next.jpg.part")):
        (folders.inbox / folder).mkdir()
        (folders.inbox / folder / "style.jpg").write_bytes(b"s")
        (folders.inbox / folder / extra).write_bytes(b"x")
    move_in(folders, 1, ["trip/style.jpg"])
    move_in(folders, 2, ["busy/style.jpg"])
    assert [p.name for p in folders.inbox.iterdir()] == ["busy"]
    assert [p.name for p in (folders.inbox / "busy").iterdir()] == ["next.jpg.part"]


def test_error_txt_is_written_before_the_rename_so_that_a_second_call_finishes_the_job(folders, monkeypatch):
    claimed(folders, 5, **{"x.png": b"x"})
    real_rename = os.rename

    def crash(source, destination):
        raise OSError(errno.EIO, "crash")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError):
        dispose_failure(folders, 5, "cat", "bad sidecar")
    assert (folders.job_dir(5) / "error.txt").read_text() == "bad sidecar\n"
    assert list(folders.failed.iterdir()) == []  # no reservation left behind
    monkeypatch.setattr(os, "rename", real_rename)
    folder = dispose_failure(folders, 5, "cat", "bad sidecar")
    assert folder == folders.failed / "cat"
    assert sorted(p.name for p in folder.iterdir()) == ["error.txt", "x.png"]


def test_disposing_again_after_the_rename_does_nothing(folders):
    claimed(folders, 6, **{"x.png": b"x"})
    assert dispose_failure(folders, 6, "cat", "bad") == folders.failed / "cat"
    assert dispose_failure(folders, 6, "cat", "bad") is None  # a crash before the store recorded it
    assert [p.name for p in folders.failed.iterdir()] == ["cat"]


@pytest.mark.parametrize("dispose", ["failure", "success"])
def test_a_name_another_thread_reserved_meanwhile_is_never_renamed_onto(folders, monkeypatch, dispose):
    claimed(folders, 7, **{"x.png": b"x"})
    parent = folders.failed if dispose == "failure" else folders.archive
    (parent / "cat").mkdir()  # the other thread's reservation, made after any check for it
    monkeypatch.setattr(os.path, "lexists", lambda path: False)
    if dispose == "failure":
        folder = dispose_failure(folders, 7, "cat", "bad")
    else:
        folder = dispose_success(folders, 7, "cat", "archive")
    assert folder == parent / "cat-2" and (folder / "x.png").exists()
    assert list((parent / "cat").iterdir()) == []


def test_input_path_is_the_claimed_folder_or_a_file_of_the_style_library(folders, tmp_path):
    folders.styles.mkdir()
    (folders.styles / "starry.png").write_bytes(b"s")
    (tmp_path / "secret.png").write_bytes(b"s")
    (folders.styles / "link.png").symlink_to(tmp_path / "secret.png")
    assert folders.input_path(3, "trip/a.jpg") == folders.job_dir(3) / "trip" / "a.jpg"
    assert folders.input_path(3, "styles/starry.png") == folders.styles / "starry.png"
    for ref in ("styles/link.png", "styles/../secret.png"):
        with pytest.raises(InputError, match="not a file inside the style library"):
            folders.input_path(3, ref)
    folders.styles = None
    with pytest.raises(InputError, match="styles_dir is not set"):
        folders.input_path(3, "styles/starry.png")
