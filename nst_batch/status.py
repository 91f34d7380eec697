"""`nst-batch status`: what the daemon is doing, read from the job database (works while it runs)."""

import json
import time
from typing import Any

from .config import Config
from .store import Store


def gather(config: Config) -> dict[str, Any]:
    db = config.state_dir / "jobs.sqlite3"
    if not db.exists():
        return {"jobs": {}, "runs": {}, "running": [], "recent_errors": [], "database": str(db), "started": False}
    store = Store(config.state_dir)
    try:
        now = time.time()
        running = []
        for run in store.running_runs():
            seconds = now - run.started if run.started else None
            per_iteration = seconds / run.iteration if seconds and run.iteration else None
            remaining = run.total_iterations - run.iteration
            running.append({
                "job_id": run.job_id,
                "label": run.label,
                "iteration": run.iteration,
                "total_iterations": run.total_iterations,
                "loss": run.loss,
                "eta_seconds": round(per_iteration * remaining, 1) if per_iteration else None,
            })
        jobs = {status: 0 for status in ("queued", "running", "done", "failed")} | store.counts()
        return {
            "jobs": jobs,
            "runs": store.run_counts(),
            "running": running,
            "recent_errors": [{"job_id": j.id, "name": j.name, "error": j.error} for j in store.recent_failures()],
            "database": str(db),
            "started": True,
        }
    finally:
        store.close()


def render(report: dict[str, Any]) -> str:
    if not report["started"]:
        return f"no jobs yet (no database at {report['database']})"
    jobs = report["jobs"]
    lines = [" ".join(f"{status}: {jobs.get(status, 0)}" for status in ("queued", "running", "done", "failed"))]
    for run in report["running"]:
        eta = f", ETA {_duration(run['eta_seconds'])}" if run["eta_seconds"] is not None else ""
        loss = f", loss {run['loss']:.4g}" if run["loss"] is not None else ""
        lines.append(f"running job-{run['job_id']} {run['label']}: iteration {run['iteration']} of {run['total_iterations']}{loss}{eta}")
    for error in report["recent_errors"]:
        first_line = (error["error"] or "").splitlines()[0] if error["error"] else ""
        lines.append(f"failed job-{error['job_id']} {error['name']}: {first_line}")
    return "\n".join(lines)


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"
