"""Publishing a job: its staging folder, with job.json and its sweep sheet, renamed into the
outbox in one step, under the job's name (or ``NAME-2``... when someone else's folder has it)."""

import os
from pathlib import Path

from loguru import logger

from ..util.atomicio import atomic_write, fsync_dir, is_temp_name
from ..util.errors import disk_full
from ..util.names import numbered
from .plots import sweep_entries, write_sweep_sheet
from .report import JobReport, read_report, read_summary

SWEEP_MAX_RESULTS = 256
# a job with one result names its files plainly: losses.csv, not cat.losses.csv
SINGLE_RESULT_NAMES = ("losses.csv", "progress.gif", "losses.png", "compare.jpg")


def publish(staging: Path, outbox: Path, name: str, report: JobReport) -> Path:
    """Write job.json (and, for a job of several results, sweep.jpg) into the staging folder and
    rename it into the outbox in one step; return where it went.

    The folder is ``outbox/NAME``, or ``NAME-2``... if someone else's folder has that name.
    Safe to repeat after a crash: a folder whose job.json has this job's id is ours already.
    A job with one result gets the plain names ``losses.csv`` and ``progress.gif``.
    """
    if report.id is None:
        raise ValueError("a job report without an id cannot be published: it could not be told apart")
    target, done = _destination(outbox, name, report.id)
    if done:
        return target
    if len(report.results) == 1:
        label = report.results[0].label
        for kind in SINGLE_RESULT_NAMES:
            old, new = staging / f"{label}.{kind}", staging / kind
            if old.exists() and not new.exists():  # a result may itself be called losses.png
                os.replace(old, new)
    summaries = sorted(staging.glob(".*.run.json"))
    # A job.json from an attempt that crashed after removing some summaries holds theirs.
    earlier = read_report(staging / "job.json")
    written = [*(earlier.results if earlier else ()), *filter(None, map(read_summary, summaries))]
    report = report.with_summaries(written)
    if len(report.results) > 1:
        _draw_sweep(staging, report)
    atomic_write(staging / "job.json", report.text())
    for path in summaries:
        path.unlink()
    for path in staging.iterdir():  # a write a crash interrupted (its run was written again since)
        if is_temp_name(path.name):
            path.unlink()
    os.rename(staging, target)
    fsync_dir(outbox)
    return target


def _draw_sweep(staging: Path, report: JobReport) -> None:
    """sweep.jpg: the results of a many-result job side by side, labelled with what varies; none
    for more than SWEEP_MAX_RESULTS (a folder of 5000 photos), whose sheet no one could read."""
    log = logger.bind(job=f"job-{report.id}")
    if (staging / "sweep.jpg").exists():  # a result may itself be called sweep.jpg
        return
    if len(report.results) > SWEEP_MAX_RESULTS:
        log.info(f"{report.name}: no sweep.jpg for {len(report.results)} results (at most {SWEEP_MAX_RESULTS})")
        return
    try:
        entries = sweep_entries(staging, report.results)
        if entries:
            write_sweep_sheet(staging / "sweep.jpg", entries)
    except Exception as error:  # a picture that cannot be drawn must not cost the job; a full disk is retried
        if disk_full(error):
            raise
        log.opt(exception=error).error(f"{report.name}: could not draw sweep.jpg")


def _destination(outbox: Path, name: str, job_id: int) -> tuple[Path, bool]:
    """(where the job's folder goes, whether it is already there)."""
    for candidate in (outbox / n for n in numbered(name)):
        if _published_by(candidate) == job_id:
            return candidate, True
        if not os.path.lexists(candidate):
            return candidate, False
    raise AssertionError("numbered() never ends")


def _published_by(folder: Path) -> int | None:
    report = read_report(folder / "job.json")
    return report.id if report else None
