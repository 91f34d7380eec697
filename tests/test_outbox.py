"""Publishing a job's folder: one rename, never over someone else's folder, safe to repeat."""

import errno
import json

import pytest
import torch
from PIL import Image

from nst_batch.engine import LossRecord
from nst_batch.results import outbox as outbox_module
from nst_batch.results.outbox import SWEEP_MAX_RESULTS, publish
from nst_batch.results.report import JobReport, ResultReport, RunStatus, read_report
from nst_batch.results.result import loss_log_text, write_gif


def staged_job(outbox, job_id=7, label="cat"):
    staging = outbox / ".staging" / f"job-{job_id}"
    staging.mkdir(parents=True)
    (staging / f"{label}.png").write_bytes(b"png")
    (staging / f"{label}.losses.csv").write_text("iteration\n")
    (staging / f".{label}.run.json").write_text(json.dumps({"label": label, "seed": 3}))
    return staging


def test_publish_never_overwrites_and_is_recognised_when_repeated(tmp_path):
    outbox = tmp_path / "outbox"
    staging = staged_job(outbox)
    (outbox / "cat").mkdir()
    (outbox / "cat" / "mine.txt").write_text("a person's own folder")
    report = JobReport(id=7, results=(ResultReport(label="cat", status=RunStatus.DONE),))

    target = publish(staging, outbox, "cat", report)

    assert target == outbox / "cat-2"
    assert (outbox / "cat" / "mine.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["cat.png", "job.json", "losses.csv"]
    assert json.loads((target / "job.json").read_text())["results"] == [{"label": "cat", "status": "done", "seed": 3}]
    assert not staging.exists()
    assert publish(staging, outbox, "cat", report) == target  # a retry after a crash


def test_loss_log_columns_and_rows():
    history = [LossRecord(1, 0.5, 2.0, 0.0, 2.5, 0.1234), LossRecord(2, 0.25, 1.0, 0.0, 1.25, 0.2)]
    lines = loss_log_text(history).splitlines()
    assert lines == ["iteration,content,style,tv,total,elapsed_s,note", "1,0.5,2,0,2.5,0.123,", "2,0.25,1,0,1.25,0.200,"]


def test_gif_frames_of_growing_scales_share_the_last_size(tmp_path):
    frames = [torch.zeros(1, 3, 8, 16), torch.ones(1, 3, 16, 32)]
    write_gif(tmp_path / "p.gif", frames)
    gif = Image.open(tmp_path / "p.gif")
    assert gif.n_frames == 2 and gif.size == (32, 16)


def test_a_repair_and_an_early_stop_are_in_the_loss_logs_note_column():
    from nst_batch.engine import EarlyStop, Repair, Result
    from nst_batch.results.result import result_notes

    history = [LossRecord(i, 1.0, 2.0, 0.0, 3.0 if i != 2 else 3e9, 0.1 * i) for i in (1, 2, 3)]
    repair = Repair(2, 0, "blow-up: the loss rose to 3e+09", 1, "lbfgs", 0.1)
    stop = EarlyStop(3, 0, 1e-4, 100, 1e-3)
    result = Result(image=torch.zeros(1, 3, 2, 2), history=history, scale_starts=[0], early_stops=[stop], seed=1,
                    repairs=[repair])
    rows = loss_log_text(history, result_notes(result)).splitlines()
    assert rows[1].endswith(",") and "repair at iteration 2" in rows[2] and "early stop at iteration 3" in rows[3]


def sweep_job(outbox, count: int):
    staging = outbox / ".staging" / "job-9"
    staging.mkdir(parents=True)
    results = []
    for i in range(count):
        Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(staging / f"sw={i}.png")
        results.append(ResultReport(label=f"sw={i}", status=RunStatus.DONE, content="c.png", varying={"sw": i}))
    return staging, JobReport(id=9, name="sweep", results=tuple(results))


def test_a_sweep_gets_its_sheet_and_a_folder_of_thousands_none(tmp_path):
    outbox = tmp_path / "outbox"
    staging, report = sweep_job(outbox, 3)
    assert (publish(staging, outbox, "small", report) / "sweep.jpg").is_file()
    staging, report = sweep_job(outbox, SWEEP_MAX_RESULTS + 1)
    big = publish(staging, outbox, "big", report)
    assert not (big / "sweep.jpg").exists() and len(read_report(big / "job.json").results) == SWEEP_MAX_RESULTS + 1


def test_a_sweep_sheet_that_cannot_be_drawn_costs_nothing_but_a_full_disk_is_retried(tmp_path, monkeypatch):
    outbox = tmp_path / "outbox"
    staging, report = sweep_job(outbox, 3)

    def broken(path, entries):
        raise OSError("broken data stream when writing image file")  # what Pillow says of a sheet too large

    monkeypatch.setattr(outbox_module, "write_sweep_sheet", broken)
    folder = publish(staging, outbox, "sweep", report)
    assert (folder / "job.json").is_file() and not (folder / "sweep.jpg").exists()

    staging, report = sweep_job(outbox, 3)
    monkeypatch.setattr(outbox_module, "write_sweep_sheet", lambda path, entries: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        publish(staging, outbox, "again", report)
    assert staging.is_dir() and not (outbox / "again").exists()  # nothing published: tried again later
