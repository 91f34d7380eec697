"""The ray executor against the threads executor, through the real daemon on this machine.

A folder job of N photos and one style is served three times, side by side in one process run:
by the threads executor (``executor: threads``), and by the ray executor with a Ray of the
daemon's own on 127.0.0.1 and 1, then 2, CPU actors (``device: cpu``, ``ray.devices``). Each
time the figures come from the job database:

- results per second, from the first run's start to the last run's end (actor start-up, Ray's
  and the network's, is before the first start and not counted);
- the time of each run outside the engine: from its start to its record (its inputs read, or
  packed and sent; the engine; its result back and written) less the engine's own seconds. The
  Ray path's overhead per run is its median less the threads executor's median.

    .venv/bin/python benchmarks/ray_executor.py                                  # 16 photos, 64 px, 10 iterations
    .venv/bin/python benchmarks/ray_executor.py --photos 24 --size 128 --iterations 20 --json out.json

On a GPU machine (one GPU lent) use ``--device cuda --actors 1``: scaling needs more GPUs, the
overhead per run does not.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import cpu_name, photos, stop_when_jobs_end  # noqa: E402  (benchmarks/, this script's folder)

from nst_batch.daemon import service  # noqa: E402
from nst_batch.settings.config import Config  # noqa: E402


def serve(site: Path, args: argparse.Namespace, actors: int | None, token: Path) -> dict:
    settings = {
        "inbox": site / "inbox", "outbox": site / "outbox", "state_dir": site / "state", "styles_dir": None,
        "device": args.device, "settle_seconds": 0.5, "model": {"weights": "random"},
        "defaults": {"image_size": args.size, "iterations": args.iterations, "seed": 0, "early_stop_tol": 0},
        "scheduler": {"calibrate": False, "max_batch": 1},
    }
    if actors is not None:
        settings |= {"executor": "ray", "ray": {"devices": actors}}
        # Ray keeps the token it first read for the life of this process: each daemon gets that one.
        if token.exists():
            (site / "state").mkdir(parents=True)
            shutil.copy(token, site / "state" / token.name)
            (site / "state" / token.name).chmod(0o600)
    config = Config.model_validate(settings)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    photos(site / "inbox" / "photos", args.photos, args.size)  # found by the first scan
    with service.Service(config) as daemon:
        threading.Thread(target=stop_when_jobs_end, args=(daemon, site / "state" / "jobs.sqlite3"), daemon=True).start()
        daemon.serve()
    if actors is not None and not token.exists():
        shutil.copy(site / "state" / token.name, token)
    with closing(sqlite3.connect(site / "state" / "jobs.sqlite3")) as db:
        runs = db.execute("SELECT started, finished, seconds, node, device FROM runs WHERE status='done'").fetchall()
    first, last = min(r[0] for r in runs), max(r[1] for r in runs)
    outside = [finished - started - seconds for started, finished, seconds, _, _ in runs]
    return {
        "executor": "threads" if actors is None else f"ray, {actors} actor(s)",
        "results": len(runs),
        "results_per_s": round(len(runs) / (last - first), 3),
        "engine_s_per_result": round(statistics.median(r[2] for r in runs), 4),
        "outside_engine_s_per_result": round(statistics.median(outside), 4),
        "devices": sorted({f"{node} {device}" for *_, node, device in runs if node}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    measured = []
    with tempfile.TemporaryDirectory() as keep:
        for actors in (None, *args.actors):
            with tempfile.TemporaryDirectory() as tmp:
                measured.append(serve(Path(tmp), args, actors, Path(keep) / "ray-auth-token"))
    threads = measured[0]
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}",
        "workload": {"photos": args.photos, "image_size": args.size, "iterations": args.iterations, "device": args.device},
        "runs": measured,
        "ray_overhead_s_per_result": {
            m["executor"]: round(m["outside_engine_s_per_result"] - threads["outside_engine_s_per_result"], 4)
            for m in measured[1:]
        },
        "speedup_over_one_actor": {
            m["executor"]: round(m["results_per_s"] / measured[1]["results_per_s"], 3) for m in measured[1:]
        },
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
