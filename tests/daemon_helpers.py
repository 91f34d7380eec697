"""Helpers for the end-to-end tests: tiny images, waiting on a condition with a deadline, and
`nst-batch serve` as a real subprocess on a temporary folder."""

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml
from PIL import Image

T = TypeVar("T")

# A few tiny iterations on a CPU.
TEST_DEFAULTS = {"image_size": 32, "iterations": 3, "seed": 0}


def _pixels(size: tuple[int, int], pattern: str, seed: int) -> Image.Image:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    if pattern == "gradient":
        array = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y + seed * 40) % 256], -1)
    elif pattern == "checker":
        cells = ((x // 4 + y // 4 + seed) % 2) * 255
        array = np.stack([cells, 255 - cells, np.full_like(cells, 128)], -1)
    elif pattern == "noise":
        array = np.random.default_rng(seed).integers(0, 256, (height, width, 3))
    else:
        raise ValueError(pattern)
    return Image.fromarray(array.astype(np.uint8), "RGB")


def make_image(path: Path, size: tuple[int, int] = (40, 30), pattern: str = "gradient", seed: int = 0) -> Path:
    """A small RGB PNG: ``gradient``, ``checker`` or ``noise``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _pixels(size, pattern, seed).save(path, format="PNG")
    return path


def drop_pair(inbox: Path, name: str, sidecar: str | None = None, seed: int = 0) -> None:
    """A content and style pair in the inbox, with a sidecar when given."""
    if sidecar is not None:
        (inbox / f"{name}.yaml").write_text(sidecar)
    make_image(inbox / f"{name}.content.png", (40, 30), "gradient", seed)
    make_image(inbox / f"{name}.style.png", (30, 40), "checker", seed)


def image_bytes(size: tuple[int, int] = (40, 30), pattern: str = "noise", seed: int = 0) -> bytes:
    """A PNG's bytes, for writing it in pieces."""
    buffer = io.BytesIO()
    _pixels(size, pattern, seed).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_for(condition: Callable[[], T], timeout: float, what: str, explain: Callable[[], str] = lambda: "") -> T:
    """Poll ``condition`` until it returns something truthy; fail saying ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{explain()}")
        time.sleep(0.05)


def serve_until(service, condition: Callable[[sqlite3.Connection], Any], timeout: float, what: str = "its condition") -> None:
    """The daemon's real main loop (``Service.serve``) in this (the main) thread, stopped once
    ``condition(db)`` holds, a connection to its job database given; failing after ``timeout``, or
    when the condition raises."""
    met, failed = [], []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        with closing(sqlite3.connect(service.folders.state / "jobs.sqlite3", timeout=10)) as db:
            db.row_factory = sqlite3.Row
            while not service.stop.is_set():
                try:
                    if condition(db):
                        met.append(True)
                except Exception as error:  # the daemon stops, and the test fails with it
                    failed.append(error)
                if met or failed or time.monotonic() > deadline:
                    service.request_stop()
                    return
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, name="until?", daemon=True)
    watcher.start()
    assert service.serve() == 0
    watcher.join()
    if failed:
        raise failed[0]
    assert met, f"timed out after {timeout:g} s waiting for {what}"


def serve_until_settled(service, timeout: float = 120) -> None:
    """The daemon's real main loop, stopped once every job has ended (or after ``timeout``, failing)."""
    unsettled = "SELECT COUNT(*) FROM jobs WHERE status IN ('claiming', 'queued', 'running')"
    serve_until(service, lambda db: not db.execute(unsettled).fetchone()[0], timeout, "the jobs to end")


def in_gallery(outbox: Path, name: str) -> bool:
    """Whether outbox/index.html shows the job's thumbnail: the gallery, made after the job is
    recorded done, has finished with its folder."""
    try:
        return f"{name}/thumb.jpg" in (outbox / "index.html").read_text()
    except OSError:
        return False


class Daemon:
    """One temporary installation: a config with its folders, and the daemon serving it."""

    def __init__(self, root: Path, **settings: Any):
        self.root = root
        self.inbox, self.outbox, self.state, self.styles = (root / n for n in ("inbox", "outbox", "state", "styles"))
        self.inbox.mkdir(parents=True, exist_ok=True)
        config = {
            "inbox": "inbox", "outbox": "outbox", "state_dir": "state", "styles_dir": "styles",
            "device": "cpu", "settle_seconds": 1, "pair_timeout": 120, "checkpoint_every": 5,
            "model": {"weights": "random"}, "defaults": dict(TEST_DEFAULTS),
            # One CPU thread (the daemon sets its own count, whatever OMP_NUM_THREADS says): on two
            # shared cores, threads spinning against other processes make each iteration far slower.
            "performance": {"threads": 1},
        }
        for key, value in settings.items():
            if isinstance(value, dict):
                config[key] = {**config.get(key, {}), **value}
            else:
                config[key] = value
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.env: dict[str, str] = {}  # extra environment of the daemon process
        self.command = [sys.executable, "-m", "nst_batch"]  # what runs `serve --config CONFIG`
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []

    # --- the process ---------------------------------------------------------------------

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "the daemon is already running"
        log = self.root / f"daemon-{len(self.logs) + 1}.log"
        self.logs.append(log)
        # Two shared CPU cores: OpenMP threads spinning against other processes make every
        # iteration ten times slower, so the daemon gets one.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **self.env}
        env.pop("JOURNAL_STREAM", None)
        env.pop("NOTIFY_SOCKET", None)
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [*self.command, "serve", "--config", str(self.config)],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT,
            )
        self.wait(lambda: "nst-batch serving" in self.log(), 60, "the daemon to start serving")

    def terminate(self, timeout: float = 30) -> tuple[int, float]:
        """SIGTERM; the exit status and how long it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {timeout:g} s of SIGTERM\n{self.tail()}")
        return status, time.monotonic() - started

    def crash(self) -> None:
        """kill -9: no handler runs, nothing is flushed or cleaned up."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def kill(self) -> None:
        """Teardown: whatever happened, no daemon outlives its test."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self, index: int = -1) -> str:
        return self.logs[index].read_text(errors="replace") if self.logs else ""

    def tail(self, lines: int = 40) -> str:
        return "--- daemon log (tail) ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def wait(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        """``wait_for``, failing at once with the log if the daemon died meanwhile."""

        def check() -> T:
            value = condition()
            if not value and self.process is not None and self.process.poll() is not None:
                pytest.fail(f"the daemon exited ({self.process.returncode}) while waiting for {what}\n{self.tail()}")
            return value

        return wait_for(check, timeout, what, self.tail)

    # --- what it did ---------------------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        path = self.state / "jobs.sqlite3"
        if not path.exists():
            return []
        with closing(sqlite3.connect(path, timeout=10)) as db:
            db.row_factory = sqlite3.Row
            return db.execute(sql, args).fetchall()

    def job_status(self, name: str) -> str | None:
        rows = self.query("SELECT status FROM jobs WHERE name=? ORDER BY id DESC LIMIT 1", name)
        return rows[0]["status"] if rows else None

    def published(self, name: str) -> dict | None:
        """The job.json of ``outbox/NAME``, once it is there."""
        try:
            return json.loads((self.outbox / name / "job.json").read_text())
        except (OSError, ValueError):
            return None

    def wait_published(self, *names: str, timeout: float = 90) -> dict[str, dict]:
        self.wait(lambda: all(self.published(n) for n in names), timeout, f"results of {', '.join(names)}")
        return {n: self.published(n) for n in names}

    def failed_reason(self, name: str) -> str | None:
        path = self.state / "failed" / name / "error.txt"
        return path.read_text() if path.exists() and self.job_status(name) == "failed" else None

    def wait_failed(self, *names: str, timeout: float = 60) -> dict[str, str]:
        self.wait(lambda: all(self.failed_reason(n) for n in names), timeout, f"{', '.join(names)} in failed/")
        return {n: self.failed_reason(n) for n in names}

    def status_cli(self) -> dict:
        """What `nst-batch status --json` says."""
        completed = subprocess.run(
            [sys.executable, "-m", "nst_batch", "status", "--json", "--config", str(self.config)],
            capture_output=True, text=True, timeout=60, cwd=self.root,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``daemon_factory(**config)`` -> a Daemon on ``tmp_path`` (not started); killed at teardown."""
    made: list[Daemon] = []

    def make(**settings: Any) -> Daemon:
        daemon = Daemon(tmp_path / f"site{len(made) + 1}", **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


def loss_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a losses.csv."""
    lines = path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


def write_slowly(path: Path, data: bytes, chunks: int, pause: float, between: Callable[[], None]) -> None:
    """Write ``data`` through one open handle in ``chunks`` pieces, calling ``between`` after each."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as file:
        for start in range(0, len(data), step):
            file.write(data[start : start + step])
            file.flush()
            os.fsync(file.fileno())
            time.sleep(pause)
            between()
