"""Results per second through the real daemon, and where each result's time goes.

A folder job of N photos and one style is dropped into the inbox of a daemon serving in this
process (``Service.serve``, the real main loop, intake and workers); the daemon runs until the
job is published. Meanwhile the CPU time of the parts is summed, per thread:

- engine: ``stylize_batch`` (the optimization itself);
- run thread: the rest of the worker thread's time (reading inputs, checkpoints, the peak meter,
  handing the result on);
- finishing: writing and drawing each result, publishing the job, the gallery;
- dispatch: the main loop's choice of what starts next.

Results per second is measured from the store: the number of runs finished over the time from
the first run's start to the last run's end.

    .venv/bin/python benchmarks/throughput.py --photos 200 --size 24 --iterations 1
    .venv/bin/python benchmarks/throughput.py --photos 20 --size 256 --iterations 20
    .venv/bin/python benchmarks/throughput.py ... --json docs/results/throughput_NAME.json

``--gpu-engine-s 3.0`` sets the engine time per result of the projection for a GPU (512 px x 300
L-BFGS iterations on an H200, the project's target): the measured work outside the engine is set
beside it.
"""

import argparse
import collections
import functools
import json
import platform
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nst_batch.daemon import dispatch, finishing, runner, service  # noqa: E402

try:
    from nst_batch.daemon import publisher  # noqa: E402
except ImportError:  # before the publisher thread: results were written on the run's thread
    publisher = None
from nst_batch.results import gallery  # noqa: E402
from nst_batch.settings.config import Config  # noqa: E402

CPU = collections.Counter()  # part -> thread CPU seconds
_inside = threading.local()


def timed(part: str, function):
    """``function``, its calling thread's CPU time added to ``part`` (not counted twice when nested)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if getattr(_inside, "part", None) is not None:
            return function(*args, **kwargs)
        _inside.part = part
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent = time.thread_time() - began
            CPU[part] += spent
            if threading.current_thread().name.startswith("run-"):
                CPU[f"{part} on the run thread"] += spent
            _inside.part = None

    return wrapper


def instrument() -> None:
    """Timers around the parts, wherever this version of nst-batch has them (the benchmark also
    runs on commits from before the publisher, for side-by-side figures)."""
    runner.stylize_batch = timed("engine", runner.stylize_batch)
    runner.Runner.run_batch = timed_run_thread(runner.Runner.run_batch)
    for module in (publisher, runner, finishing):
        for name, part in (("write_run", "finishing"), ("publish", "finishing")):
            if module is not None and hasattr(module, name):
                setattr(module, name, timed(part, getattr(module, name)))
    gallery.rebuild = timed("finishing", gallery.rebuild)
    finishing.Finisher.settle = timed("settling", finishing.Finisher.settle)
    dispatch.Dispatcher.dispatch = timed("dispatch", dispatch.Dispatcher.dispatch)


def timed_run_thread(function):
    """The worker thread's whole run_batch; the engine's and finishing's parts are taken out after."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            CPU["run thread (all)"] += time.thread_time() - began

    return wrapper


def photos(folder: Path, count: int, side: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side]
    for i in range(count):
        base = np.stack([x * 255 // side, y * 255 // side, (x + y + i * 7) % 256], -1)
        noise = rng.integers(0, 40, (side, side, 3))
        Image.fromarray(((base + noise) % 256).astype(np.uint8), "RGB").save(folder / f"p{i:05d}.png")
    Image.fromarray(rng.integers(0, 256, (side, side, 3)).astype(np.uint8), "RGB").save(folder / "style.png")


def stop_when_jobs_end(daemon: service.Service, db_path: Path) -> None:
    """Stop the daemon once there are jobs and every one is done or failed (for a thread)."""
    while not db_path.exists():
        time.sleep(0.1)
    with closing(sqlite3.connect(db_path, timeout=10)) as db:
        while True:
            rows = db.execute("SELECT status FROM jobs").fetchall()
            if rows and all(status in ("done", "failed") for (status,) in rows):
                break
            time.sleep(0.2)
    daemon.request_stop()


def serve(site: Path, args: argparse.Namespace) -> dict:
    config = Config.model_validate({
        "inbox": site / "inbox", "outbox": site / "outbox", "state_dir": site / "state", "styles_dir": None,
        "device": args.device, "settle_seconds": 0.5, "model": {"weights": "random"},
        "defaults": {"image_size": args.size, "iterations": args.iterations, "seed": 0, "early_stop_tol": 0},
        "scheduler": {"calibrate": False}, "performance": {"threads": args.threads},
    })
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with service.Service(config) as daemon:

        def drop() -> None:
            while not (site / "inbox").exists():
                time.sleep(0.05)
            time.sleep(1.0)  # serving by then
            photos(site / "scratch" / "photos", args.photos, max(args.size, 32))
            (site / "scratch" / "photos").rename(site / "inbox" / "photos")

        threading.Thread(target=drop, daemon=True).start()
        threading.Thread(target=stop_when_jobs_end, args=(daemon, site / "state" / "jobs.sqlite3"), daemon=True).start()
        wall = time.monotonic()
        daemon.serve()
        wall = time.monotonic() - wall
    with closing(sqlite3.connect(site / "state" / "jobs.sqlite3")) as db:
        first, last, count, engine_s = db.execute(
            "SELECT MIN(started), MAX(finished), COUNT(*), SUM(seconds) FROM runs WHERE status='done'"
        ).fetchone()
    return {"results": count, "span_s": last - first, "wall_s": wall, "engine_wall_s": engine_s}


def report(measured: dict, args: argparse.Namespace) -> dict:
    n = measured["results"]
    engine = CPU["engine"]
    on_run_thread = CPU["run thread (all)"] - engine  # reading, checkpoints, peak meter, and writing if it is there
    per_result = {
        "engine_cpu_s": engine / n,
        "run_thread_outside_engine_cpu_s": on_run_thread / n,
        "finishing_cpu_s": CPU["finishing"] / n,
        "of_which_on_the_run_thread_s": CPU["finishing on the run thread"] / n,
        "dispatch_cpu_s": CPU["dispatch"] / n,
        "settling_cpu_s": CPU["settling"] / n,
    }
    # Outside the engine: the run thread's own work, finishing wherever it runs, dispatch.
    outside = (on_run_thread - CPU["finishing on the run thread"] + CPU["finishing"] + CPU["dispatch"] + CPU["settling"]) / n
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}",
        "workload": {"photos": args.photos, "image_size": args.size, "iterations": args.iterations, "device": args.device,
                     "threads": args.threads},
        "results": n,
        "results_per_s": round(n / measured["span_s"], 3),
        "wall_s": round(measured["wall_s"], 2),
        "engine_wall_s_per_result": round(measured["engine_wall_s"] / n, 4),
        "per_result": {k: round(v, 4) for k, v in per_result.items()},
        "outside_engine_cpu_s_per_result": round(outside, 4),
        "gpu_projection": {
            "engine_s_per_result": args.gpu_engine_s,
            "run_path_s_per_result": round(on_run_thread / n, 4),
            "device_idle_share": round((on_run_thread / n) / (args.gpu_engine_s + on_run_thread / n), 4),
            "note": "the device waits only for the run thread's work outside the engine; finishing runs beside it",
        },
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpu-engine-s", type=float, default=3.0)
    parser.add_argument("--threads", type=int, help="the engine's CPU threads (performance.threads); default: the daemon's")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    instrument()
    with tempfile.TemporaryDirectory() as tmp:
        measured = serve(Path(tmp), args)
    figures = report(measured, args)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
