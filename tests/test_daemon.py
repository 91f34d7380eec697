"""The daemon end to end: `nst-batch serve` as a subprocess with a real observer on a temporary
inbox, random weights and tiny images. Each daemon start costs seconds, so each test tells a
whole story: what people drop, what comes out, what `nst-batch status` says."""

import hashlib
import re
import time
from pathlib import Path

import pytest
import torch
from daemon_helpers import Daemon, drop_pair, image_bytes, in_gallery, loss_rows, make_image, write_slowly
from PIL import Image

from nst_batch.cli import status
from nst_batch.engine.images import FRAME_LONG_SIDE
from nst_batch.results.reel import REEL_CAPACITY
from nst_batch.settings.config import load_config

pytestmark = pytest.mark.slow

LOSS_HEADER = ["iteration", "content", "style", "tv", "total", "elapsed_s", "note"]


def assert_losses(path: Path, iterations: int) -> list[list[str]]:
    header, rows = loss_rows(path)
    assert header == LOSS_HEADER
    assert [int(row[0]) for row in rows] == list(range(1, iterations + 1))
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_drops_become_results_or_reasons_while_the_daemon_keeps_running(daemon_factory) -> None:
    daemon: Daemon = daemon_factory(settle_seconds=1.5)  # well over the copiers' pauses below
    make_image(daemon.styles / "starry.png", (36, 36), "noise")
    daemon.start()
    inbox = daemon.inbox

    # A pair; a pair whose sidecar overrides the config's 3 iterations; a 2 x 2 sweep; a folder
    # of three contents copied in one file after another, with pauses shorter than settle_seconds.
    drop_pair(inbox, "plain")
    originals = {n: sha256(inbox / n) for n in ("plain.content.png", "plain.style.png")}
    drop_pair(inbox, "tuned", "iterations: 4\nstyle_weight: 1000\n")
    drop_pair(inbox, "sweep", "sweep:\n  iterations: [2, 3]\n  style_weight: [1000, 100000]\n")
    make_image(inbox / "trio" / "style.png", (32, 32), "checker")
    for i, content in enumerate(("alpha", "beta", "gamma")):
        time.sleep(0.6)  # the copier's pace (longer than the intake's 0.5 s poll), not a wait
        make_image(inbox / "trio" / f"{content}.png", (40, 30), "gradient", seed=i)

    # A sidecar alone, naming a file in the inbox and one in the style library.
    (inbox / "night.yaml").write_text("content: me.png\nstyle: starry.png\niterations: 2\n")
    make_image(inbox / "me.png", (40, 30), "gradient", seed=5)

    # Inputs that cannot run: an unknown sidecar key, a wrongly typed value, text named .png,
    # a sidecar naming files outside the inbox, a link to a file outside.
    secret = make_image(daemon.root / "secret.png")
    (inbox / "evil.yaml").write_text("content: ../secret.png\nstyle: /etc/passwd\n")
    make_image(inbox / "link.style.png")
    (inbox / "link.content.png").symlink_to(secret)
    drop_pair(inbox, "typo", "iteratons: 4\n")
    drop_pair(inbox, "wrongtype", "iterations: lots\n")
    make_image(inbox / "fake.style.png")
    (inbox / "fake.content.png").write_text("this is a text file, not an image\n")

    # A content image copied slowly: never claimed while it is being written.
    make_image(inbox / "slow.style.png", (30, 40), "checker")

    def still_in_the_inbox() -> None:
        assert (inbox / "slow.content.png").exists() and daemon.job_status("slow") is None

    write_slowly(inbox / "slow.content.png", image_bytes((48, 36)), chunks=8, pause=0.35, between=still_in_the_inbox)

    reasons = daemon.wait_failed("typo", "wrongtype", "fake", "evil", "link")
    assert "iteratons" in reasons["typo"] and "unknown key" in reasons["typo"] and "iterations" in reasons["typo"]
    assert "iterations" in reasons["wrongtype"] and "whole number" in reasons["wrongtype"]
    assert "fake.content.png" in reasons["fake"]
    assert "'../secret.png' is not a file name" in reasons["evil"] and "'/etc/passwd'" in reasons["evil"]
    assert sorted(p.name for p in (daemon.state / "failed" / "evil").iterdir()) == ["error.txt", "evil.yaml"]
    assert "link.content.png is a symbolic link" in reasons["link"]
    assert secret.is_file() and not secret.is_symlink()
    assert sorted(p.name for p in (daemon.state / "failed" / "typo").iterdir()) == [
        "error.txt", "typo.content.png", "typo.style.png", "typo.yaml"
    ]
    assert daemon.alive()
    drop_pair(inbox, "after", seed=3)  # the failures did not stop the daemon

    done = daemon.wait_published("plain", "tuned", "trio", "sweep", "night", "slow", "after", timeout=150)

    # A pair: the image, losses.csv and job.json; the inputs archived.
    plain = daemon.outbox / "plain"
    daemon.wait(lambda: in_gallery(daemon.outbox, "plain"), 30, "the gallery to show plain")
    assert sorted(p.name for p in plain.iterdir()) == [
        "compare.jpg", "job.json", "log.txt", "losses.csv", "losses.png", "plain.png", "thumb.jpg"
    ]
    gallery = (daemon.outbox / "index.html").read_text()
    assert 'href="plain/' in gallery and "plain/thumb.jpg" in gallery
    assert_losses(plain / "losses.csv", 3)
    record = done["plain"]
    assert (record["name"], record["status"], record["device"]) == ("plain", "done", "cpu")
    assert {"nst-batch", "torch", "torchvision", "python"} <= set(record["versions"])
    assert record["inputs"]["sha256"] == originals
    [result] = record["results"]
    assert "random" in result["weights"].lower() and result["pretrained_weights"] is False
    assert "weights" not in record  # per result: a sweep may change the backbone
    assert result["params"]["iterations"] == 3 and result["params"]["image_size"] == 32
    assert result["content"] == "plain.content.png" and result["styles"] == ["plain.style.png"]
    archived = daemon.state / "archive" / "plain"
    assert {n: sha256(archived / n) for n in originals} == originals

    # The sidecar's values win over the config's defaults.
    assert_losses(daemon.outbox / "tuned" / "losses.csv", 4)
    assert done["tuned"]["results"][0]["params"]["style_weight"] == 1000
    assert (daemon.state / "archive" / "tuned" / "tuned.yaml").exists()

    # A folder: one result per content, named by the content.
    trio = daemon.outbox / "trio"
    results = {p.name for p in trio.glob("*.png") if not p.name.endswith(".losses.png")}
    assert results == {"alpha.png", "beta.png", "gamma.png"}
    assert (trio / "sweep.jpg").exists()  # three contents side by side
    assert sorted(r["label"] for r in done["trio"]["results"]) == ["alpha", "beta", "gamma"]
    for label in ("alpha", "beta", "gamma"):
        assert_losses(trio / f"{label}.losses.csv", 3)

    # A sweep: one result per combination, named by the values that vary.
    sweep = daemon.outbox / "sweep"
    labels = sorted(r["label"] for r in done["sweep"]["results"])
    assert labels == sorted(f"iterations={i}_style_weight={w}" for i in (2, 3) for w in ("1000", "100000"))
    for label in labels:
        assert (sweep / f"{label}.png").exists()
        assert_losses(sweep / f"{label}.losses.csv", int(re.search(r"iterations=(\d)", label).group(1)))
        assert (sweep / f"{label}.losses.png").exists() and (sweep / f"{label}.compare.jpg").exists()
    assert Image.open(sweep / "sweep.jpg").size[0] > 2 * Image.open(sweep / f"{labels[0]}.png").size[0]

    # The library's style is used, never claimed.
    assert_losses(daemon.outbox / "night" / "losses.csv", 2)
    assert done["night"]["results"][0]["styles"] == ["styles/starry.png"]
    assert sorted(p.name for p in (daemon.state / "archive" / "night").iterdir()) == ["me.png", "night.yaml"]
    assert (daemon.styles / "starry.png").exists()

    assert_losses(daemon.outbox / "slow" / "losses.csv", 3)
    archived_slow = (daemon.state / "archive" / "slow" / "slow.content.png").read_bytes()
    assert archived_slow == image_bytes((48, 36))
    assert list(inbox.iterdir()) == []

    report = daemon.status_cli()
    assert report["jobs"] == {"queued": 0, "running": 0, "done": 7, "failed": 5}
    assert report["running"] == []
    errors = {e["name"]: e["error"] for e in report["recent_errors"]}
    assert set(errors) == {"typo", "wrongtype", "fake", "evil", "link"}
    assert "iteratons" in errors["typo"] and "fake.content.png" in errors["fake"]

    assert daemon.alive()
    exit_status, seconds = daemon.terminate()
    assert exit_status == 0 and seconds < 8  # idle, nothing to wait for


def test_sigterm_checkpoints_and_the_restart_resumes_and_finds_what_was_dropped_meanwhile(daemon_factory) -> None:
    iterations = 60
    daemon: Daemon = daemon_factory(defaults={"image_size": 64, "iterations": iterations}, checkpoint_every=5)
    daemon.start()
    drop_pair(daemon.inbox, "long", "gif: true\n")  # a frame every iteration

    def iteration() -> int:
        rows = daemon.query("SELECT iteration FROM runs WHERE status='running'")
        return rows[0]["iteration"] if rows else 0

    daemon.wait(lambda: iteration() > 10, 90, "the run to pass iteration 10")
    report = status.gather(load_config(daemon.config))
    assert report["jobs"]["running"] == 1
    [running] = report["running"]
    assert running["label"] == "long" and running["total_iterations"] == iterations
    assert 10 < running["iteration"] < iterations

    exit_status, seconds = daemon.terminate(timeout=30)
    assert exit_status == 0
    stopped = re.search(r"long: stopped at iteration (\d+); checkpoint saved", daemon.log())
    assert stopped, daemon.tail()
    stopped_at = int(stopped.group(1))
    assert 10 < stopped_at < iterations
    [run] = daemon.query("SELECT * FROM runs")
    assert (run["status"], run["attempts"]) == ("queued", 0)  # a stop is not a failed attempt
    assert (daemon.state / "checkpoints" / f"run-{run['id']}.pt").exists()
    assert not (daemon.outbox / "long").exists()

    # Dropped while the daemon was down: found by the scan at start, not by an event.
    drop_pair(daemon.inbox, "meanwhile", "iterations: 3\nimage_size: 32\n")

    daemon.start()
    done = daemon.wait_published("long", "meanwhile", timeout=150)
    assert f"long: resuming from iteration {stopped_at}" in daemon.log()
    rows = assert_losses(daemon.outbox / "long" / "losses.csv", iterations)
    elapsed = [float(row[LOSS_HEADER.index("elapsed_s")]) for row in rows]
    assert elapsed == sorted(elapsed)  # the clock continued too
    with Image.open(daemon.outbox / "long" / "progress.gif") as gif:
        assert gif.n_frames >= iterations  # the frames from before the stop came back with the checkpoint
    assert [r["attempts"] for r in done["long"]["results"]] == [1]
    assert_losses(daemon.outbox / "meanwhile" / "losses.csv", 3)
    assert list((daemon.state / "checkpoints").iterdir()) == []

    report = daemon.status_cli()
    assert report["jobs"] == {"queued": 0, "running": 0, "done": 2, "failed": 0}
    assert daemon.terminate()[0] == 0


def test_a_sidecar_asking_for_every_frame_of_a_long_run_keeps_at_most_the_reels_bound(daemon_factory) -> None:
    """frame_every: 1 on 1200 iterations (of a 16 px image, through relu1_1 alone, so they are cheap):
    the checkpoints and the GIF hold at most REEL_CAPACITY frames, evenly spaced, whatever was offered."""
    iterations = 1200
    daemon: Daemon = daemon_factory(scheduler={"calibrate": False})
    daemon.start()
    drop_pair(daemon.inbox, "every", (
        f"gif: true\nframe_every: 1\niterations: {iterations}\nimage_size: 16\nearly_stop_tol: 0\n"
        "content_layers: relu1_1\nstyle_layers: relu1_1\n"
    ))
    seen: dict[int, dict] = {}  # the reels of the checkpoints saved while it ran, by iteration

    def past_the_bound() -> bool:
        for path in (daemon.state / "checkpoints").glob("run-*.pt"):
            try:
                saved = torch.load(path, weights_only=True)
            except (OSError, RuntimeError, EOFError):  # gone (the run ended) while being read
                continue
            seen[saved["run"]["iteration"]] = {"frames": saved["frames"], **saved["reel"]}
        return any(s["offered"] > REEL_CAPACITY for s in seen.values()) or daemon.published("every") is not None

    daemon.wait(past_the_bound, 120, "a checkpoint with more frames offered than the reel keeps")
    done = daemon.wait_published("every", timeout=120)["every"]
    assert [r["iterations"] for r in done["results"]] == [iterations]
    assert max(seen, default=0) > REEL_CAPACITY, f"no checkpoint seen past the bound (at iterations {sorted(seen)})"
    for iteration, s in seen.items():
        assert s["offered"] == iteration  # every frame asked for was offered...
        assert len(s["frames"]) <= REEL_CAPACITY  # ...and at most the bound kept
        assert len(s["frames"]) == -(-s["offered"] // s["stride"])  # the first, then every stride-th
        assert all(f.dtype == torch.uint8 and max(f.shape[-2:]) <= FRAME_LONG_SIDE for f in s["frames"])
    with Image.open(daemon.outbox / "every" / "progress.gif") as gif:
        # the frames kept (1200 offered: every 8th, 150) and the result
        assert REEL_CAPACITY // 2 <= gif.n_frames <= REEL_CAPACITY + 1
    assert daemon.terminate()[0] == 0
