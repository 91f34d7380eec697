"""A soak: hundreds of tiny jobs in a row through one `nst-batch serve` process. What it holds
(resident memory, open files, threads) must be the same after the last job as after the first
ones: a daemon that leaks a file handle, a log sink, a thread or a few megabytes per job dies
after a few weeks, and no shorter test would notice."""

import os
from pathlib import Path

import pytest
from daemon_helpers import Daemon, make_image

pytestmark = pytest.mark.slow

WARM_UP = 40
BATCHES = 4
BATCH = 40  # 200 jobs in all
# Layers up to relu2_1 at 16 px, one iteration: the daemon's work per job, hardly any engine.
TINY = {"image_size": 16, "iterations": 1, "style_layers": "relu1_1,relu2_1", "content_layers": "relu2_1"}


def holdings(pid: int) -> dict[str, int]:
    """Resident memory (KiB), open file descriptors and threads of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": len(os.listdir(f"/proc/{pid}/task"))}


def drop(daemon: Daemon, first: int, count: int) -> None:
    for i in range(first, first + count):
        make_image(daemon.inbox / f"s{i:04d}.content.png", (20, 16), "gradient", seed=i)
        make_image(daemon.inbox / f"s{i:04d}.style.png", (16, 20), "noise", seed=i)


def wait_idle(daemon: Daemon, done: int) -> None:
    """Every job so far done (its run's thread has ended by then)."""
    daemon.wait(lambda: len(daemon.query("SELECT id FROM jobs WHERE status='done'")) == done, 120, f"{done} jobs done")


def test_hundreds_of_jobs_leave_memory_files_and_threads_flat(daemon_factory) -> None:
    daemon: Daemon = daemon_factory(
        settle_seconds=0.2, on_success="delete", defaults=TINY, scheduler={"calibrate": False}
    )
    daemon.start()
    pid = daemon.process.pid

    drop(daemon, 0, WARM_UP)
    wait_idle(daemon, WARM_UP)
    before = holdings(pid)
    samples = [before]
    for batch in range(BATCHES):
        drop(daemon, WARM_UP + batch * BATCH, BATCH)
        wait_idle(daemon, WARM_UP + (batch + 1) * BATCH)
        samples.append(holdings(pid))
    after = samples[-1]

    total = WARM_UP + BATCHES * BATCH
    assert len(daemon.query("SELECT id FROM jobs WHERE status='done'")) == total
    assert len([p for p in daemon.outbox.iterdir() if p.is_dir() and not p.name.startswith(".")]) == total
    assert after["fds"] <= before["fds"] + 2, samples
    assert after["threads"] <= before["threads"] + 1, samples
    # Flat, not merely bounded (measured: under 1 MiB from the first sample to the last). A leak of
    # 100 KiB per job would add 8 MiB over the last two batches.
    assert after["rss_kib"] - before["rss_kib"] < 20 * 1024, samples
    assert after["rss_kib"] - samples[-3]["rss_kib"] < 8 * 1024, samples
    assert daemon.alive()
    assert daemon.terminate()[0] == 0
