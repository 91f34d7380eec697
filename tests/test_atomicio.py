"""Atomic writes: the target holds the old content or the new, and no temp file is left."""

import os
import stat

import pytest

from nst_batch.util import atomicio
from nst_batch.util.atomicio import atomic_path, atomic_write, is_temp_name


def test_atomic_write_bytes_and_text(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.txt", "grüße\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "grüße\n".encode()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.bin", "b.txt"]


def test_atomic_write_replaces_existing_content(tmp_path):
    (tmp_path / "state.json").write_text("old")
    atomic_write(tmp_path / "state.json", "new")
    assert (tmp_path / "state.json").read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_write_keeps_old_content_and_no_temp(tmp_path, monkeypatch, failing):
    (tmp_path / "state.json").write_text("old")

    def boom(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicio.os, failing, boom)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "state.json", "new")
    monkeypatch.undo()
    assert (tmp_path / "state.json").read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]


def test_atomic_path_yields_a_hidden_temp_in_the_same_folder(tmp_path):
    with atomic_path(tmp_path / "out.png") as temp:
        assert temp.parent == tmp_path
        assert is_temp_name(temp.name)
        temp.write_bytes(b"pixels")
        assert not (tmp_path / "out.png").exists()  # nobody sees it before it is complete
    assert (tmp_path / "out.png").read_bytes() == b"pixels"
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"]


def test_atomic_path_error_keeps_old_content_and_no_temp(tmp_path):
    (tmp_path / "out.png").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.png") as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("encoder crashed")
    assert (tmp_path / "out.png").read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"]


def test_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.txt") as temp:
            temp.write_text("y")
    finally:
        os.umask(previous)
    for name in ("a.txt", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_temp_names_are_recognised():
    assert is_temp_name(".out.png.1a2b3c4d.tmp")
    assert not is_temp_name("out.png")
    assert not is_temp_name(".hidden.png")
