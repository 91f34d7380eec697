"""Inputs that travel as bytes (the ray executor, issue 17): the daemon packs the files a run reads
from its claimed folder and the style library; the actor on another node checks each against the
SHA-256 recorded at intake and writes it into a node-local folder, where the reading code
(``Runner``'s ``input_path``) finds it under the same name. No Ray here: bytes in, files out.

A claimed file is checked against the digest its job recorded when it was claimed, so a file
changed on the daemon's disk since, or damaged on the way, is refused (``InputError``: the run
fails with the reason, as for any unusable input). A style of the library has no recorded digest:
it is checked against the one the daemon took when it packed it, which catches damage on the way.
Only names inside the job's folder travel (a file, or a folder job's ``FOLDER/NAME``), and
``styles/NAME`` for the library: nothing can be written outside the node-local folder.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..util.atomicio import atomic_write
from ..util.errors import InputError
from ..util.names import unsafe_name
from .inbox import LIBRARY_PREFIX

if TYPE_CHECKING:
    from .store import JobRecord, RunRecord


@dataclass(frozen=True)
class Parcel:
    """A run's input files, as bytes, with the digest each must have (stage: on its way to an actor)."""

    job_id: int
    files: dict[str, bytes] = field(repr=False)  # ref (a claimed file's name, or styles/NAME) -> its bytes
    sha256: dict[str, str]  # ref -> the hex digest it must have

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_inputs(run: "RunRecord") -> list[str]:
    """The refs of the files a run reads: its content, its styles, and an init image of the library."""
    refs = [run.content, *run.styles]
    if (name := run.params.init_image_name) is not None:
        refs.append(LIBRARY_PREFIX + name)
    return list(dict.fromkeys(refs))


def pack(job: "JobRecord", refs: list[str], input_path: Callable[[int, str], Path]) -> Parcel:
    """The files ``refs`` of ``job``, read where the daemon keeps them (``Folders.input_path``)."""
    files, digests = {}, {}
    for ref in refs:
        check_ref(ref)
        data = input_path(job.id, ref).read_bytes()
        files[ref] = data
        recorded = None if ref.startswith(LIBRARY_PREFIX) else job.hashes.get(ref)
        digests[ref] = recorded if recorded is not None else sha256(data)
    return Parcel(job.id, files, digests)


def unpack(parcel: Parcel, root: Path) -> Path:
    """Check every file of ``parcel`` and write it under ``root`` (the node-local folder); the job's
    folder there. Nothing is written unless every file is what it must be."""
    for ref, data in parcel.files.items():
        check_ref(ref)
        expected = parcel.sha256.get(ref)
        if expected is None:
            raise InputError(f"{ref}: sent without its SHA-256; refused")
        got = sha256(data)
        if got != expected:
            raise InputError(
                f"{ref}: its bytes have SHA-256 {got[:16]}..., not the {expected[:16]}... recorded for it; "
                "the file changed or was damaged on its way"
            )
    folder = job_folder(root, parcel.job_id)
    for ref, data in parcel.files.items():
        target = folder / ref
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)
    return folder


def job_folder(root: Path, job_id: int) -> Path:
    return root / f"job-{job_id}"


def local_input_path(root: Path) -> Callable[[int, str], Path]:
    """``Runner``'s ``input_path`` on a node: where ``unpack`` put a job's files."""
    return lambda job_id, ref: job_folder(root, job_id) / check_ref(ref)


def check_ref(ref: str) -> str:
    """``ref`` if it names a file inside the job's folder (``NAME``, or ``FOLDER/NAME`` for a folder
    job's photo) or ``styles/NAME``; else InputError: nothing is written outside the node's folder."""
    library = ref.startswith(LIBRARY_PREFIX)
    parts = ref.removeprefix(LIBRARY_PREFIX).split("/")
    if (library and len(parts) != 1) or not all(_plain(part) for part in parts):
        raise InputError(f"{ref!r} is not a file name inside the job's folder (or styles/NAME); refused")
    return ref


def _plain(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "\\" not in name and "\0" not in name and not unsafe_name(name)
