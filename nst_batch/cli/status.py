"""`nst-batch status`: what the daemon is doing, read from the job database (works while it runs).

``gather`` reads the record into plain data; ``render`` turns it into a table, coloured and cut
to the terminal's width on a terminal, plain text when piped; ``watch`` repeats both.
"""

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from ..daemon.preview import FOLDER as PREVIEWS
from ..daemon.preview import preview_name
from ..daemon.store import Pause, Store
from ..results.report import JobStatus
from ..settings.config import Config
from ..util.text import format_duration

STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE, JobStatus.FAILED)  # shown even when none
QUEUED_SHOWN = 20  # waiting jobs listed, unless --all
_CLEAR = "\x1b[H\x1b[2J"
_STYLES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


def gather(config: Config, queued_limit: int | None = QUEUED_SHOWN) -> dict[str, Any]:
    """The report; ``queued_limit``: how many waiting jobs to list (None: all)."""
    db = config.state_dir / "jobs.sqlite3"
    if not db.exists():
        return {"jobs": {}, "runs": {}, "running": [], "recent_errors": [], "database": str(db), "started": False,
                "paused": None, "queued": [], "queued_more": 0, "devices": []}
    store = Store(config.state_dir)
    try:
        now = time.time()
        running = []
        for run in store.running_runs():
            seconds = now - run.started if run.started else None
            per_iteration = seconds / run.iteration if seconds and run.iteration else None
            remaining = max(0, run.total_iterations - run.iteration)
            running.append({
                "run_id": run.id,
                "job_id": run.job_id,
                "job_name": store.job(run.job_id).name,
                "label": run.label,
                "iteration": run.iteration,
                "total_iterations": run.total_iterations,
                "loss": run.loss,
                "elapsed_seconds": round(seconds, 1) if seconds is not None else None,
                "eta_seconds": round(per_iteration * remaining, 1) if per_iteration else None,
                "preview": str(preview) if (preview := config.outbox / PREVIEWS / preview_name(run.id)).exists() else None,
                "node": run.node if config.executor == "ray" else None,
                "device": run.device if config.executor == "ray" else None,
            })
        jobs = {status: 0 for status in STATUSES} | store.counts()
        waiting = store.queued_jobs(None if queued_limit is None else queued_limit + 1)
        queued = [
            {"job_id": job.id, "name": job.name, "status": job.status, "priority": job.priority, "runs_left": left}
            for job, left in waiting[:queued_limit]
        ]
        shown_all = queued_limit is None or len(waiting) <= queued_limit
        waiting_total = sum(jobs.get(s, 0) for s in (JobStatus.CLAIMING, JobStatus.QUEUED, JobStatus.RUNNING))
        pause = store.pause()
        load = Counter((run["node"], run["device"]) for run in running)
        devices = [
            {"node": d.node, "device": d.name, "state": d.state.value, "budget_bytes": d.budget_bytes,
             "running": load.get((d.node, d.name), 0)}
            for d in (store.devices() if config.executor == "ray" else [])
        ]
        return {
            "devices": devices,
            "paused": None if pause == Pause.OFF else pause.value,
            "queued": queued,
            "queued_more": 0 if shown_all else waiting_total - len(queued),
            "jobs": jobs,
            "runs": store.run_counts(),
            "running": running,
            "recent_errors": [
                {"job_id": j.id, "name": j.name, "error": j.error, "when": j.updated} for j in store.recent_failures()
            ],
            "database": str(db),
            "started": True,
        }
    finally:
        store.close()


def render(report: dict[str, Any], color: bool = False, width: int | None = None) -> str:
    """The report as a table. ``color``: ANSI bold and colours (for a terminal). ``width``: cut
    every line to this many columns (a terminal's width); None leaves lines whole."""
    paint = _painter(color)
    if not report["started"]:
        return f"no jobs yet (no database at {report['database']})"
    jobs, runs = report["jobs"], report.get("runs") or {}
    colours = {JobStatus.RUNNING: "cyan", JobStatus.DONE: "green", JobStatus.FAILED: "red"}
    counts = "   ".join(
        paint(f"{status} {jobs.get(status, 0)}", colours.get(status) if jobs.get(status, 0) else None) for status in STATUSES
    )
    others = "".join(f"   {s} {jobs[s]}" for s in (JobStatus.CANCELLING, JobStatus.CANCELLED) if jobs.get(s))
    lines = [f"{paint('jobs', 'bold')}  {counts}{others}"]
    if runs:
        lines.append(paint("runs  " + "   ".join(f"{s} {runs.get(s, 0)}" for s in STATUSES), "dim"))
    if report.get("paused"):
        how = "running runs checkpoint and wait" if report["paused"] == Pause.NOW else "running runs finish"
        lines.append(paint(f"PAUSED: no new run starts, {how}; `nst-batch resume` goes on", "yellow"))
    if report.get("devices"):
        lines += ["", paint("DEVICES", "bold")]
        rows = [("NODE", "DEVICE", "STATE", "RUNS", "BUDGET")] + [
            (d["node"], d["device"], d["state"], str(d["running"]),
             f"{d['budget_bytes'] / 2**30:.1f} GiB" if d["budget_bytes"] else "-")
            for d in report["devices"]
        ]
        table = _table(rows)
        lines.append(paint(_cut(table[0], width), "dim"))
        lines += [_cut(row, width) for row in table[1:]]
    if report["running"]:
        lines += ["", paint("RUNNING", "bold")]
        placed = any(run.get("node") for run in report["running"])
        header = ("RUN", "JOB", "RESULT", *(("ON",) if placed else ()), "PROGRESS", "LOSS", "ELAPSED", "ETA")
        rows = [
            (
                f"run-{run['run_id']}" if run.get("run_id") is not None else "-",
                f"job-{run['job_id']} {run.get('job_name') or ''}".strip(),
                run["label"],
                *((f"{run.get('node') or '-'} {run.get('device') or ''}".strip(),) if placed else ()),
                _progress(run["iteration"], run["total_iterations"]),
                f"{run['loss']:.4g}" if run["loss"] is not None else "-",
                format_duration(run["elapsed_seconds"]) if run.get("elapsed_seconds") is not None else "-",
                format_duration(run["eta_seconds"]) if run["eta_seconds"] is not None else "-",
            )
            for run in report["running"]
        ]
        table = _table([header, *rows])
        lines.append(paint(_cut(table[0], width), "dim"))
        lines += [_cut(row, width) for row in table[1:]]
    if report.get("queued"):
        lines += ["", paint("WAITING", "bold")]
        rows = [("JOB", "NAME", "PRIORITY", "RUNS LEFT")] + [
            (f"job-{job['job_id']}", job["name"], str(job["priority"]), f"{job['runs_left']} ({job['status']})")
            for job in report["queued"]
        ]
        table = _table(rows)
        lines.append(paint(_cut(table[0], width), "dim"))
        lines += [_cut(row, width) for row in table[1:]]
        if report.get("queued_more"):
            lines.append(paint(f"... and {report['queued_more']} more (`nst-batch status --all` lists them)", "dim"))
    if report["recent_errors"]:
        lines += ["", paint("RECENT FAILURES", "bold")]
        rows = []
        for error in report["recent_errors"]:
            reason = (error["error"] or "").strip().splitlines()
            when = time.strftime("%a %H:%M", time.localtime(error["when"])) if error.get("when") else ""
            rows.append((f"job-{error['job_id']}", error["name"], when, reason[0] if reason else "no reason recorded"))
        for row in _table(rows):
            lines.append(paint(_cut(row, width), "red"))
    return "\n".join(lines)


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


def show(report: dict[str, Any], as_json_text: bool, stream: TextIO) -> str:
    """The report as ``stream`` should get it: JSON, or a table coloured only on a terminal."""
    if as_json_text:
        return as_json(report)
    tty = _is_tty(stream)
    return render(report, color=tty and _colour_allowed(), width=shutil.get_terminal_size().columns if tty else None)


def watch(
    read: Callable[[], dict[str, Any]],
    interval: float,
    stream: TextIO,
    as_json_text: bool = False,
    refreshes: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show the report every ``interval`` seconds until Ctrl-C (or ``refreshes`` times).

    On a terminal the screen is cleared and redrawn. Piped, each report is appended: a table
    under a "--- time ---" line, or with ``as_json_text`` one JSON object per line (JSON Lines),
    so ``status --watch --json | tee`` makes a log.
    """
    tty = _is_tty(stream)
    shown = 0
    try:
        while refreshes is None or shown < refreshes:
            report = read()
            if as_json_text:
                stream.write(json.dumps(report, sort_keys=True) + "\n")
            elif tty:
                stamp = time.strftime("%H:%M:%S")
                footer = f"\n\nrefreshed {stamp}, every {interval:g} s; Ctrl-C to quit"
                stream.write(_CLEAR + show(report, False, stream) + footer + "\n")
            else:
                stream.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n{render(report)}\n")
            stream.flush()
            shown += 1
            if refreshes is None or shown < refreshes:
                sleep(interval)
    except KeyboardInterrupt:  # the way out of --watch: not an error
        stream.write("\n")
    return 0


def _progress(iteration: int, total: int) -> str:
    if not total:
        return f"iteration {iteration}"
    return f"iteration {iteration}/{total} ({100 * iteration // total}%)"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + str(row[-1]) for row in rows]


def _cut(line: str, width: int | None) -> str:
    line = line.rstrip()
    if width is None or len(line) <= width:
        return line
    return line[: max(1, width - 3)] + "..."


def _painter(color: bool) -> Callable[[str, str | None], str]:
    def paint(text: str, style: str | None) -> str:
        if not color or style is None:
            return text
        return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"

    return paint


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _colour_allowed() -> bool:
    """https://no-color.org: NO_COLOR turns colours off; so does a dumb terminal."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
