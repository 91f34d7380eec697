"""Inputs as bytes (``daemon.shipping``): packed where the daemon keeps them, checked against the
SHA-256 recorded at intake, written into a node-local folder. No Ray."""

import hashlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from nst_batch.daemon.shipping import Parcel, check_ref, local_input_path, pack, run_inputs, unpack
from nst_batch.engine.params import StyleParams
from nst_batch.util.errors import InputError


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def site(tmp_path):
    """A claimed job's folder and a style library, as ``Folders.input_path`` reads them."""
    claimed, library = tmp_path / "state" / "jobs" / "7", tmp_path / "styles"
    claimed.mkdir(parents=True)
    library.mkdir()
    (claimed / "cat.content.jpg").write_bytes(b"content bytes")
    (claimed / "cat.style.png").write_bytes(b"style bytes")
    (library / "starry.jpg").write_bytes(b"library bytes")
    job = SimpleNamespace(id=7, hashes={"cat.content.jpg": digest(b"content bytes"), "cat.style.png": digest(b"style bytes")})

    def input_path(job_id: int, ref: str) -> Path:
        assert job_id == 7
        return library / ref.removeprefix("styles/") if ref.startswith("styles/") else claimed / ref

    return SimpleNamespace(job=job, input_path=input_path, claimed=claimed, node=tmp_path / "node")


def test_a_run_reads_its_content_styles_and_init_image():
    run = SimpleNamespace(content="a.jpg", styles=("b.png", "styles/c.jpg"), params=StyleParams(init="d.png"))
    assert run_inputs(run) == ["a.jpg", "b.png", "styles/c.jpg", "styles/d.png"]
    plain = SimpleNamespace(content="a.jpg", styles=("a.jpg",), params=StyleParams())
    assert run_inputs(plain) == ["a.jpg"]  # once each


def test_files_arrive_on_the_node_as_they_were(site):
    refs = ["cat.content.jpg", "cat.style.png", "styles/starry.jpg"]
    parcel = pack(site.job, refs, site.input_path)
    assert parcel.size == len(b"content bytes") + len(b"style bytes") + len(b"library bytes")
    assert parcel.sha256["cat.content.jpg"] == site.job.hashes["cat.content.jpg"]  # the recorded one
    assert parcel.sha256["styles/starry.jpg"] == digest(b"library bytes")  # the library's: taken when packed
    folder = unpack(parcel, site.node)
    read = local_input_path(site.node)
    assert folder == site.node / "job-7"
    for ref in refs:
        assert read(7, ref).read_bytes() == site.input_path(7, ref).read_bytes()
    assert read(7, "styles/starry.jpg") == site.node / "job-7" / "styles" / "starry.jpg"
    assert not [p for p in folder.rglob("*.tmp")]  # written atomically


def test_a_file_changed_since_intake_is_refused_and_nothing_is_written(site):
    (site.claimed / "cat.style.png").write_bytes(b"other bytes")
    parcel = pack(site.job, ["cat.content.jpg", "cat.style.png"], site.input_path)
    with pytest.raises(InputError, match=r"cat\.style\.png: its bytes have SHA-256 .* not the .* recorded"):
        unpack(parcel, site.node)
    assert not site.node.exists()


def test_a_folder_jobs_photo_travels_in_its_folder(site):
    data = b"photo"
    folder = unpack(Parcel(7, {"photos/p1.png": data}, {"photos/p1.png": digest(data)}), site.node)
    assert (folder / "photos" / "p1.png").read_bytes() == data
    assert local_input_path(site.node)(7, "photos/p1.png") == folder / "photos" / "p1.png"


def test_bytes_damaged_on_the_way_are_refused(site):
    parcel = pack(site.job, ["cat.content.jpg", "styles/starry.jpg"], site.input_path)
    for ref in parcel.files:
        damaged = replace(parcel, files={**parcel.files, ref: parcel.files[ref] + b"\0"})
        with pytest.raises(InputError, match="damaged on its way"):
            unpack(damaged, site.node)
    assert not site.node.exists()


def test_a_file_without_its_digest_is_refused(site):
    with pytest.raises(InputError, match="without its SHA-256"):
        unpack(Parcel(7, {"a.jpg": b"x"}, {}), site.node)


@pytest.mark.parametrize("ref", ["", ".", "..", "../x", "a/../b", "a//b", "a/", "styles/../x", "styles/", "styles/a/b",
                                 "/etc/passwd", "a\\b", "a\nb", "a\0b"])
def test_only_names_inside_the_jobs_folder_travel(site, ref):
    with pytest.raises(InputError, match="not a file name inside the job's folder"):
        check_ref(ref)
    with pytest.raises(InputError):
        unpack(Parcel(7, {ref: b"x"}, {ref: digest(b"x")}), site.node)
    with pytest.raises(InputError):
        local_input_path(site.node)(7, ref)
    assert not site.node.exists()
