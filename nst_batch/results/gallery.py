"""The morning gallery: ``outbox/index.html``, rebuilt after each job.

Plain HTML and inline CSS, no script, no server, no network: it works opened straight from disk
(file://). Every link is relative, every name is escaped. Jobs are newest first, 100 to a page
(``index.html``, ``index-2.html``, ...), and images load lazily. Pages rather than one long page:
the newest night is what people open it for, a page stays small to write atomically after every
job, and a browser never lays out a thousand cards at once.

Each job's folder gets its thumbnails once (``thumb.jpg``, and ``thumbs/LABEL.jpg`` for the first
few results of a many-result job); a rebuild afterwards reads only job.json files and folder
listings, never a full image again. Writing into a published folder is safe: each thumbnail
appears in one atomic rename.
"""

import html
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from loguru import logger

from ..util.atomicio import atomic_write, is_temp_name
from ..util.text import distinct, format_duration
from .plots import find_result_image, write_thumbnail
from .report import JobReport, JobStatus, ResultReport, RunStatus, read_report

PAGE_SIZE = 100
THUMB = "thumb.jpg"  # the job's picture: compare.jpg, sweep.jpg or its first result, small
THUMBS = "thumbs"  # LABEL.jpg for the first results of a job with several
THUMB_SIDE = 512  # compare.jpg is a row of three or more pictures: 512 keeps each one legible
RESULT_THUMB_SIDE = 192
RESULTS_SHOWN = 8
THUMBNAIL_BUDGET_S = 5.0  # at most this long making thumbnails in one rebuild
NIGHT_S = 24 * 3600
KEY_PARAMS = (
    "image_size", "iterations", "optimizer", "style_weight", "content_weight", "tv_weight", "scales", "backbone",
    "pooling", "init", "preserve_colors",
)
_PAGE_NAME = re.compile(r"index-(\d+)\.html")


@dataclass(frozen=True)
class Job:
    """A published job: its folder's name in the outbox, its job.json and the folder's file names."""

    folder: str
    report: JobReport
    names: frozenset[str]

    @property
    def finished(self) -> float:
        return self.report.finished

    @property
    def results(self) -> tuple[ResultReport, ...]:
        return self.report.results

    def has(self, name: str) -> bool:
        return name in self.names


def rebuild(
    outbox: Path,
    failed: Sequence[Mapping[str, Any]] = (),
    page_size: int = PAGE_SIZE,
    now: float | None = None,
    thumbnail_budget_s: float | None = THUMBNAIL_BUDGET_S,
    cancelled: Sequence[Mapping[str, Any]] = (),
    paused: str | None = None,
    running: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write ``outbox/index.html`` (and ``index-2.html``...) from every published job.json.

    ``failed``: jobs that failed, newest first, as dicts with ``name``, ``error``, ``when``
    (epoch seconds) and optionally ``id``. One whose ``id`` is a published job (some of its
    results failed) is shown on that job's card, not twice. Returns the first page's path.

    Missing thumbnails are made newest job first for at most ``thumbnail_budget_s`` seconds
    (None: no limit); the rest show a placeholder until a later rebuild. A thousand old
    folders seen for the first time therefore never hold the caller (the daemon's main loop,
    which feeds the watchdog) for long.

    ``cancelled``: cancelled jobs, as ``failed``. ``paused``: why no run starts
    (`nst-batch pause`), shown at the top; None when runs start. ``running``: the running runs,
    as dicts with ``run_id``, ``job``, ``label``, ``iteration``, ``total`` and ``preview`` (an
    outbox-relative path of its latest preview JPEG, or None).
    """
    outbox = Path(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    now = time.time() if now is None else now
    deadline = None if thumbnail_budget_s is None else time.monotonic() + thumbnail_budget_s
    jobs = [ensure_thumbnails(outbox, job, deadline) for job in collect(outbox)]
    pages = render_pages(jobs, failed, page_size, now, cancelled, paused, running)
    for number in range(len(pages), 0, -1):  # the first page last: its links lead to pages already there
        atomic_write(outbox / page_name(number), pages[number - 1])
    for stale in outbox.glob("index-*.html"):
        match = _PAGE_NAME.fullmatch(stale.name)
        if match and int(match.group(1)) > len(pages):
            stale.unlink(missing_ok=True)
    return outbox / "index.html"


def collect(outbox: Path) -> list[Job]:
    """Every published job, newest first; hidden folders, links and unreadable job.json are skipped."""
    jobs = []
    try:
        entries = list(os.scandir(outbox))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        report = read_report(Path(entry.path, "job.json"))
        if report is None:
            logger.debug(f"gallery: skipping {entry.name}: no readable job.json")
            continue
        try:
            names = frozenset(n for n in os.listdir(entry.path) if not is_temp_name(n))
        except OSError as error:
            logger.debug(f"gallery: skipping {entry.name}: {error}")
            continue
        jobs.append(Job(entry.name, report, names))
    jobs.sort(key=lambda job: (job.finished, job.report.id or 0, job.folder), reverse=True)
    return jobs


def ensure_thumbnails(outbox: Path, job: Job, deadline: float | None = None) -> Job:
    """Make the job's missing thumbnails (once; a later rebuild finds them) unless the
    ``time.monotonic()`` deadline has passed. A picture that cannot be read leaves its
    thumbnail out; the gallery shows a placeholder."""
    if deadline is not None and time.monotonic() >= deadline:
        return job
    folder = outbox / job.folder
    names = set(job.names)
    if THUMB not in names:
        source = _main_picture(job)
        if source is not None and _thumbnail(folder / source, folder / THUMB, THUMB_SIDE):
            names.add(THUMB)
    shown = _shown_results(job)
    if len(job.results) > 1 and shown:
        have = set(_listdir(folder / THUMBS)) if THUMBS in names else set()
        for result in shown:
            thumb = f"{result.label}.jpg"
            image = find_result_image(folder, result.label, lambda p: p.name in names)
            if thumb not in have and image is not None:
                (folder / THUMBS).mkdir(exist_ok=True)
                names.add(THUMBS)
                if _thumbnail(image, folder / THUMBS / thumb, RESULT_THUMB_SIDE):
                    have.add(thumb)
        names |= {f"{THUMBS}/{name}" for name in have}
    return replace(job, names=frozenset(names))


def failed_jobs(records: Sequence[Any]) -> list[dict[str, Any]]:
    """``rebuild``'s ``failed`` from the store's job records (``Store.recent_failures``)."""
    return [{"id": r.id, "name": r.name, "error": r.error, "when": r.updated} for r in records]


def page_name(number: int) -> str:
    return "index.html" if number == 1 else f"index-{number}.html"


# --- rendering (pure: jobs in, HTML out) --------------------------------------------------------


def render_pages(
    jobs: Sequence[Job], failed: Sequence[Mapping[str, Any]], page_size: int, now: float,
    cancelled: Sequence[Mapping[str, Any]] = (), paused: str | None = None, running: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    published_ids = {job.report.id for job in jobs if job.report.id is not None}
    unpublished = [f for f in failed if f.get("id") is None or f.get("id") not in published_ids]
    summary = _summary(jobs, failed, now)
    count = max(1, math.ceil(len(jobs) / page_size))
    pages = []
    for number in range(1, count + 1):
        chunk = jobs[(number - 1) * page_size : number * page_size]
        body = [summary]
        if paused:
            body.append(f'<p class="paused"><b>Paused</b>: {_esc(paused)}. `nst-batch resume` goes on.</p>')
        if number == 1:
            body.append(_running(running))
            body.append(_failures(unpublished))
            body.append(_cancelled(cancelled))
        elif unpublished:
            body.append(f'<p class="note"><a href="index.html#failed">{len(unpublished)} failed job(s)</a> on the first page</p>')
        body.append(_nav(number, count))
        body.append('<main class="jobs">' + "".join(_card(job, eager=number == 1 and i < 8) for i, job in enumerate(chunk)) + "</main>")
        if not jobs:
            body.append('<p class="empty">No results yet: the outbox fills as jobs finish.</p>')
        body.append(_nav(number, count))
        title = "nst-batch outbox" + (f" (page {number} of {count})" if count > 1 else "")
        pages.append(_document(title, now, "\n".join(body)))
    return pages


def _summary(jobs: Sequence[Job], failed: Sequence[Mapping[str, Any]], now: float) -> str:
    since = now - NIGHT_S
    night = [job for job in jobs if job.finished >= since]
    done = [job for job in night if job.report.status != JobStatus.FAILED]
    partial = [job for job in night if job.report.status == JobStatus.FAILED]
    partial_ids = {job.report.id for job in partial}
    failures = [f for f in failed if _float(f.get("when")) >= since and (f.get("id") is None or f.get("id") not in partial_ids)]
    results = sum(len(_done(job.results)) for job in night)
    seconds = sum(_job_seconds(job) for job in night)
    items = [
        ("done", len(done), "ok"),
        ("with failed results", len(partial), "warn"),
        ("failed", len(failures), "bad"),
        ("results", results, ""),
    ]
    counts = "".join(f'<li class="{cls}"><b>{n}</b> {label}</li>' for label, n, cls in items if n or label in ("done", "failed"))
    return (
        '<header><h1>nst-batch outbox</h1>'
        f'<p class="generated">updated {_esc(_when(now))}</p>'
        f'<section class="summary"><h2>Last 24 hours</h2><ul>{counts}'
        f'<li><b>{_esc(format_duration(seconds))}</b> of computing</li></ul>'
        f'<p class="note">{len(jobs)} published job(s) in this outbox.</p></section></header>'
    )


def _failures(failed: Sequence[Mapping[str, Any]]) -> str:
    if not failed:
        return ""
    rows = []
    for f in failed:
        error = str(f.get("error") or "no reason recorded")
        first, _, rest = error.partition("\n")
        more = f"<details><summary>more</summary><pre>{_esc(rest)}</pre></details>" if rest.strip() else ""
        rows.append(
            f'<tr><td class="when">{_esc(_when(_float(f.get("when"))))}</td><td class="name">{_esc(f.get("name", "?"))}</td>'
            f'<td class="reason">{_esc(first)}{more}</td></tr>'
        )
    return (
        f'<section id="failed" class="failed"><h2>Failed ({len(failed)})</h2><p class="note">Their inputs and error.txt '
        f'are in the state folder\'s failed/NAME/.</p><table><thead><tr><th>when</th><th>job</th><th>reason</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table></section>'
    )


def _running(running: Sequence[Mapping[str, Any]]) -> str:
    """The runs in progress, each with a preview of where it is: a look, not a result."""
    if not running:
        return ""
    cards = []
    for r in running:
        total = r.get("total") or 0
        progress = f"iteration {r.get('iteration', 0)}" + (f" of {total}" if total else "")
        preview = r.get("preview")
        picture = (
            f'<img src="{_href(*str(preview).split("/"))}" alt="preview of {_esc(r.get("label"))}">'
            if preview else '<div class="thumb missing">no preview yet</div>'
        )
        cards.append(
            f'<figure class="preview">{picture}<figcaption><b>{_esc(r.get("job"))}</b> {_esc(r.get("label"))}'
            f' (run-{_esc(r.get("run_id"))}): {_esc(progress)}; preview, not a result</figcaption></figure>'
        )
    return (
        f'<section id="running" class="running"><h2>Running ({len(running)})</h2><p class="note">Where each run is now; '
        f'the previews are refreshed at most every 30 s and go when the run ends.</p>{"".join(cards)}</section>'
    )


def _cancelled(cancelled: Sequence[Mapping[str, Any]]) -> str:
    if not cancelled:
        return ""
    rows = "".join(
        f'<tr><td class="when">{_esc(_when(_float(c.get("when"))))}</td><td class="name">{_esc(c.get("name", "?"))}</td>'
        f'<td>job-{_esc(c.get("id", "?"))}</td></tr>'
        for c in cancelled
    )
    return (
        f'<section id="cancelled" class="failed"><h2>Cancelled ({len(cancelled)})</h2><p class="note">Their inputs are '
        f'in the state folder\'s cancelled/NAME/; `nst-batch retry job-N` queues one again.</p><table><thead><tr>'
        f'<th>when</th><th>job</th><th>id</th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


def _nav(number: int, count: int) -> str:
    if count == 1:
        return ""
    links = []
    if number > 1:
        links.append(f'<a href="{page_name(number - 1)}" rel="prev">&larr; newer</a>')
    for n in range(1, count + 1):
        links.append(f"<b>{n}</b>" if n == number else f'<a href="{page_name(n)}">{n}</a>')
    if number < count:
        links.append(f'<a href="{page_name(number + 1)}" rel="next">older &rarr;</a>')
    return '<nav class="pages">' + " ".join(links) + "</nav>"


def _card(job: Job, eager: bool) -> str:
    report, results = job.report, job.results
    name = report.name or job.folder
    done = _done(results)
    failed = [r for r in results if r.status == RunStatus.FAILED]
    loading = "eager" if eager else "lazy"
    main = _main_picture(job)
    if job.has(THUMB):
        picture = (
            f'<a class="thumb" href="{_href(job.folder, main or THUMB)}">'
            f'<img src="{_href(job.folder, THUMB)}" loading="{loading}" decoding="async" alt="{_esc(name)}"></a>'
        )
    else:
        picture = '<div class="thumb missing">no picture</div>'
    badges = []
    if failed:
        badges.append(f'<span class="badge bad">{len(failed)} of {len(results)} failed</span>')
    cancelled = [r for r in results if r.status == RunStatus.CANCELLED]
    if cancelled:
        badges.append(f'<span class="badge warn">{len(cancelled)} of {len(results)} cancelled</span>')
    if any(r.pretrained_weights is False for r in results):
        badges.append('<span class="badge warn">random weights</span>')
    facts = [f"finished {_when(job.finished)}", f"took {format_duration(_job_seconds(job))}"]
    if len(results) > 1:
        facts.append(f"{len(done)} results")
    places = sorted({r.where for r in results if r.where is not None})
    if places:  # the ray executor's nodes and devices
        facts.append(f"on {', '.join(places)}")
    elif report.device:
        facts.append(f"on {report.device}")
    lines = [
        f'<h3><a href="{_href(job.folder)}/">{_esc(name)}</a> {"".join(badges)}</h3>',
        f'<p class="facts">{_esc(" · ".join(facts))}</p>',
        _inputs(results),
        _params(results),
    ]
    if len(results) == 1 and done:
        lines.append(_losses(done[0]))
        if done[0].seed is not None:
            lines.append(f'<p class="seed">seed {_esc(done[0].seed)}</p>')
    result_image = find_result_image(Path(), done[0].label, lambda p: p.name in job.names) if len(results) == 1 and done else None
    links = [(result_image.name, "result")] if result_image is not None else []
    links += [(f, label) for f, label in (("compare.jpg", "compare"), ("sweep.jpg", "sweep sheet"), ("progress.gif", "progress GIF"),
                                         ("losses.csv", "losses.csv"), ("job.json", "job.json")) if job.has(f)]
    if links:
        lines.append('<p class="links">' + " · ".join(f'<a href="{_href(job.folder, f)}">{label}</a>' for f, label in links) + "</p>")
    if job.has("losses.png"):
        lines.append(
            f'<details class="plot"><summary>loss plot</summary><a href="{_href(job.folder, "losses.png")}">'
            f'<img src="{_href(job.folder, "losses.png")}" loading="lazy" alt="losses of {_esc(name)}"></a></details>'
        )
    if len(results) > 1:
        lines.append(_strip(job))
    notes = []
    for r in results:
        label = f"{r.label}: " if len(results) > 1 else ""
        if r.status == RunStatus.FAILED:
            notes.append(f'<li class="bad">{_esc(label)}{_esc(r.error or "failed")}</li>')
        if r.warning:
            notes.append(f'<li class="warn">{_esc(label)}{_esc(r.warning)}</li>')
        for repair in r.repairs or ():
            notes.append(f'<li class="warn">{_esc(label)}{_esc(repair)}</li>')
        for stop in r.early_stop or ():
            notes.append(f"<li>{_esc(label)}{_esc(stop)}</li>")
    if notes:
        lines.append(f'<ul class="notes">{"".join(notes)}</ul>')
    return f'<article class="job" id="{_esc(job.folder)}">{picture}<div class="meta">{"".join(lines)}</div></article>'


def _inputs(results: Sequence[ResultReport]) -> str:
    contents = distinct(r.content for r in results if r.content)
    styles = distinct(" + ".join(r.styles) for r in results if r.styles)
    parts = []
    if contents:
        parts.append("content " + _some(contents))
    if styles:
        parts.append("style " + _some(styles))
    return f'<p class="inputs">{_esc(" · ".join(parts))}</p>' if parts else ""


def _params(results: Sequence[ResultReport]) -> str:
    if not results:
        return ""
    params = results[0].params
    varying = distinct(k for r in results for k in r.varying)
    chips = [f"{k} {_value(params[k])}" for k in KEY_PARAMS if k in params and k not in varying]
    chips += [f"{k} {' | '.join(distinct(_value(r.varying.get(k)) for r in results))}" for k in varying]
    return '<p class="params">' + "".join(f"<span>{_esc(c)}</span>" for c in chips) + "</p>" if chips else ""


def _losses(result: ResultReport) -> str:
    final = result.final_losses
    if final is None or final.total is None:
        return ""
    parts = ", ".join(f"{k} {_value(getattr(final, k))}" for k in ("content", "style", "tv") if getattr(final, k) is not None)
    return f'<p class="losses">final loss <b>{_esc(_value(final.total))}</b> ({_esc(parts)})</p>'


def _strip(job: Job) -> str:
    shown = _shown_results(job)
    cells = []
    for result in shown:
        label = result.label
        image = find_result_image(Path(job.folder), label, lambda p: p.name in job.names)
        thumb = f"{THUMBS}/{label}.jpg"
        final = result.final_losses
        loss = f" · loss {_value(final.total)}" if final is not None and final.total is not None else ""
        picture = (
            f'<img src="{_href(job.folder, THUMBS, label + ".jpg")}" loading="lazy" decoding="async" alt="{_esc(label)}">'
            if job.has(thumb) else '<span class="missing">no picture</span>'
        )
        extras = [(f"{label}.compare.jpg", "compare"), (f"{label}.losses.png", "plot")]
        plot_link = "".join(f' <a href="{_href(job.folder, f)}">{text}</a>' for f, text in extras if job.has(f))
        target = _href(job.folder, image.name) if image is not None else _href(job.folder) + "/"
        cells.append(f'<li><a href="{target}">{picture}</a><span>{_esc(label)}{_esc(loss)}</span>{plot_link}</li>')
    more = len(_done(job.results)) - len(shown)
    tail = f'<li class="more"><a href="{_href(job.folder)}/">+{more} more</a></li>' if more > 0 else ""
    return f'<ul class="strip">{"".join(cells)}{tail}</ul>'


def _document(title: str, now: float, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="nst-batch">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
{body}
<footer>generated by nst-batch at {_esc(_when(now))}; rebuilt after every job</footer>
</body>
</html>
"""


_CSS = """
:root { color-scheme: light; --ink: #222; --muted: #666; --line: #ddd; --bad: #b00020; --warn: #a05a00; --ok: #1b7a2f; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1400px; padding: 16px 24px; font: 14px/1.45 system-ui, sans-serif; color: var(--ink); background: #fafafa; }
h1 { font-size: 22px; margin: 0; } h2 { font-size: 16px; margin: 0 0 6px; } h3 { font-size: 16px; margin: 0 0 4px; overflow-wrap: anywhere; }
a { color: #0b57d0; } .note, .generated, .facts, footer { color: var(--muted); }
.summary ul { list-style: none; padding: 0; margin: 4px 0; display: flex; flex-wrap: wrap; gap: 8px 20px; }
.summary b { font-size: 20px; } .ok b { color: var(--ok); } .bad, .bad b { color: var(--bad); } .warn, .warn b { color: var(--warn); }
header { display: flex; flex-wrap: wrap; gap: 8px 48px; align-items: baseline; margin-bottom: 12px; }
.running figure.preview { display: inline-block; margin: 0 12px 12px 0; max-width: 260px; vertical-align: top; }
.running figure.preview img { max-width: 256px; max-height: 256px; display: block; }
.paused { background: #fff4d6; border: 1px solid #e0b040; padding: 6px 10px; }
.failed table { border-collapse: collapse; width: 100%; background: #fff; } .failed { margin: 12px 0; }
.failed td, .failed th { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
.failed .reason { color: var(--bad); overflow-wrap: anywhere; } .failed .when { white-space: nowrap; }
pre { white-space: pre-wrap; margin: 4px 0; }
.jobs { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 14px; }
.job { display: flex; gap: 12px; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px; min-width: 0; }
.thumb { flex: 0 0 240px; height: 180px; display: flex; align-items: center; justify-content: center; background: #f0f0f0; }
.thumb img { max-width: 240px; max-height: 180px; object-fit: contain; }
.missing { color: var(--muted); font-size: 12px; }
.meta { min-width: 0; flex: 1; } .meta p { margin: 2px 0; overflow-wrap: anywhere; }
.params span { display: inline-block; background: #eef2f7; border-radius: 3px; padding: 0 5px; margin: 1px 3px 1px 0; font-size: 12px; }
.badge { font-size: 11px; border-radius: 3px; padding: 1px 5px; border: 1px solid currentColor; vertical-align: middle; }
.plot img { max-width: 100%; }
.strip { list-style: none; padding: 0; margin: 6px 0 0; display: flex; flex-wrap: wrap; gap: 6px; }
.strip li { width: 104px; font-size: 11px; overflow-wrap: anywhere; }
.strip img { width: 100px; height: 75px; object-fit: contain; background: #f0f0f0; display: block; }
.notes { margin: 4px 0 0; padding-left: 18px; font-size: 12px; }
.pages { margin: 12px 0; display: flex; flex-wrap: wrap; gap: 8px; }
.empty { color: var(--muted); font-size: 16px; }
footer { margin-top: 24px; font-size: 12px; }
""".strip()


# --- helpers ------------------------------------------------------------------------------------


def _main_picture(job: Job) -> str | None:
    """The file the job's thumbnail is made from, by name in its folder."""
    if len(job.results) <= 1 and job.has("compare.jpg"):
        return "compare.jpg"
    if job.has("sweep.jpg"):
        return "sweep.jpg"
    for result in _done(job.results):
        image = find_result_image(Path(), result.label, lambda p: p.name in job.names)
        if image is not None:
            return image.name
    return None


def _done(results: Sequence[ResultReport]) -> list[ResultReport]:
    return [r for r in results if r.done]


def _shown_results(job: Job) -> list[ResultReport]:
    return _done(job.results)[:RESULTS_SHOWN]


def _thumbnail(source: Path, target: Path, side: int) -> bool:
    try:
        write_thumbnail(source, target, side)
        return True
    except Exception as error:  # a damaged result costs its thumbnail, never the gallery
        logger.warning(f"gallery: no thumbnail for {source}: {error}")
        return False


def _job_seconds(job: Job) -> float:
    seconds = [r.seconds for r in job.results if r.seconds is not None]
    if seconds:
        return float(sum(seconds))
    created = job.report.created
    return max(0.0, job.finished - created) if created and job.finished else 0.0


def _href(*parts: str) -> str:
    """A relative URL of path segments: every character that means something in a URL is encoded,
    so a folder named ``a:b`` or ``50%#1`` stays a path."""
    return _esc("/".join(quote(part, safe="") for part in parts))


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _when(timestamp: float) -> str:
    return time.strftime("%a %d %b %H:%M", time.localtime(timestamp)) if timestamp else "unknown"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    return str(value)


def _some(values: Sequence[str], shown: int = 3) -> str:
    return ", ".join(values[:shown]) + (f" and {len(values) - shown} more" if len(values) > shown else "")


def _listdir(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if not is_temp_name(n)]
    except OSError:
        return []


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
