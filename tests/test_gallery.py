"""The morning gallery: outbox/index.html from the published job folders."""

import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from nst_batch.results import gallery, plots

NOW = 1_750_000_000.0
MAGENTA = (240, 0, 240)


def publish_fake(outbox: Path, folder: str, job_id: int, name: str | None = None, finished: float = NOW - 600,
                 labels: tuple[str, ...] | None = None, colour=MAGENTA, failed_labels=(), compare=True, size=(32, 24)) -> Path:
    """A job folder as publisher.job_report and outbox.publish leave it (with the run summaries merged)."""
    name = name or folder
    labels = labels or (folder,)
    path = outbox / folder
    path.mkdir(parents=True)
    results = []
    for label in labels:
        failed = label in failed_labels
        if not failed:
            Image.new("RGB", size, colour).save(path / f"{label}.png")
        results.append({
            "label": label, "status": "failed" if failed else "done", "error": "out of memory: 9 GiB" if failed else None,
            "content": f"{label}.content.png", "styles": ["starry.jpg"], "varying": {"style_weight": float(label.split("=")[1])} if "=" in label else {},
            "attempts": 1, "warning": None,
            "params": {"image_size": 512, "iterations": 300, "style_weight": 1e6, "optimizer": "lbfgs", "tv_weight": 0.0},
            **({} if failed else {
                "seed": 1234, "iterations": 300, "seconds": 90.0, "scale_starts": [0], "early_stop": None,
                "final_losses": {"iteration": 300, "content": 1.5, "style": 20.25, "tv": 0.0, "total": 21.75, "elapsed_s": 90.0},
                "weights": "vgg19 imagenet", "pretrained_weights": True,
            }),
        })
    if compare and len(labels) == 1 and not failed_labels:
        plots.write_compare(path / "compare.jpg", Image.new("RGB", size, (0, 0, 0)), [Image.new("RGB", size, (255, 255, 0))],
                            path / f"{labels[0]}.png")
        (path / "losses.png").write_bytes((path / f"{labels[0]}.png").read_bytes())
    record = {
        "id": job_id, "name": name, "kind": "pair", "status": "failed" if failed_labels else "done",
        "inputs": {"files": [], "sha256": {}, "sidecar": None}, "created": finished - 200, "finished": finished,
        "device": "cpu", "versions": {"nst-batch": "0.1.0"}, "results": results,
    }
    (path / "job.json").write_text(json.dumps(record, indent=2))
    return path


class Page(HTMLParser):
    """The links, images and text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[str] = []
        self.images: list[dict[str, str]] = []
        self.cards: list[str] = []  # article ids, in order
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs)
        if tag == "article":
            self.cards.append(attrs["id"])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def local_target(outbox: Path, url: str) -> Path:
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc and not url.startswith("/"), f"not a relative link: {url}"
    return outbox / unquote(parts.path)


@pytest.fixture
def outbox(tmp_path) -> Path:
    box = tmp_path / "outbox"
    publish_fake(box, "cat", 1, finished=NOW - 3000)
    publish_fake(box, "dog-2", 2, name="dog", finished=NOW - 2000)
    publish_fake(box, 'a<b> & "c" café ☕ 50%#1', 3, finished=NOW - 1000)
    publish_fake(box, "sweep", 4, finished=NOW - 500, labels=("style_weight=1e+04", "style_weight=1e+05", "style_weight=1e+06"),
                 failed_labels=("style_weight=1e+06",))
    return box


FAILED = [
    {"id": 9, "name": "typo<script>alert(1)</script>", "error": "typo.yaml: unknown key 'iteratons'\ndid you mean 'iterations'?", "when": NOW - 100},
    {"id": 4, "name": "sweep", "error": "style_weight=1e+06: out of memory", "when": NOW - 500},  # published, partly failed
    {"id": 8, "name": "old", "error": "half pair", "when": NOW - 90_000},  # before the last 24 hours
]


def test_newest_first_with_counts_links_and_thumbnails(outbox):
    index = gallery.rebuild(outbox, FAILED, now=NOW)
    assert index == outbox / "index.html"
    page = read_page(index)
    assert page.cards == ["sweep", 'a<b> & "c" café ☕ 50%#1', "dog-2", "cat"]
    text = page.plain
    assert "3 done" in text and "1 with failed results" in text and "1 failed" in text and "5 results" in text
    assert "7 min 30 s of computing" in text  # 90 s for each of the 5 results that ran
    assert "dog" in text and "final loss 21.75" in text and "content cat.content.png" in text
    assert "image_size 512" in text and "style_weight 1e+04 | 1e+05 | 1e+06" in text
    # Every link and image is relative and leads to a file or folder that exists.
    for url in page.links + [img["src"] for img in page.images]:
        assert local_target(outbox, url).exists(), url
    assert "cat/" in page.links and "dog-2/" in page.links
    sources = [img["src"] for img in page.images]
    assert "cat/thumb.jpg" in sources and "sweep/thumb.jpg" in sources
    assert "sweep/thumbs/style_weight%3D1e%2B04.jpg" in sources  # each result of a many-result job
    assert all(img.get("loading") in ("lazy", "eager") for img in page.images)
    with Image.open(outbox / "cat" / "thumb.jpg") as thumb:
        assert max(thumb.size) <= gallery.THUMB_SIDE
    assert not list(outbox.rglob("*.tmp"))


def test_everything_is_escaped(outbox):
    html = gallery.rebuild(outbox, FAILED, now=NOW).read_text(encoding="utf-8")
    assert "<script>" not in html and "a<b>" not in html and '"c"' not in html
    assert "typo&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a&lt;b&gt; &amp; &quot;c&quot; café ☕ 50%#1" in html
    # The folder's link: %, #, <, & and quotes all percent-encoded, so it stays one path.
    assert 'href="a%3Cb%3E%20%26%20%22c%22%20caf%C3%A9%20%E2%98%95%2050%25%231/"' in html
    assert "iteratons" in html and "did you mean" in html


def test_failures_are_listed_once_with_their_reason(outbox):
    page = read_page(gallery.rebuild(outbox, FAILED, now=NOW))
    text = page.plain
    assert "Failed (2)" in text  # typo and old; the sweep is on its own card
    assert "typo.yaml: unknown key 'iteratons'" in text and "half pair" in text
    assert "style_weight=1e+06: out of memory: 9 GiB" in text  # the failed result, on the sweep's card
    assert "1 of 3 failed" in text


def test_unreadable_hidden_and_linked_folders_are_skipped(outbox):
    (outbox / ".staging" / "job-7").mkdir(parents=True)
    (outbox / ".staging" / "job-7" / "job.json").write_text(json.dumps({"id": 7, "name": "staged", "finished": NOW}))
    (outbox / "broken").mkdir()
    (outbox / "broken" / "job.json").write_text("{not json")
    (outbox / "list").mkdir()
    (outbox / "list" / "job.json").write_text("[1, 2]")
    (outbox / "no-json").mkdir()
    (outbox / "stray.txt").write_text("a person's note")
    os.symlink(outbox / "cat", outbox / "link")
    publish_fake(outbox, "weird", 12, finished=NOW - 10)
    weird = json.loads((outbox / "weird" / "job.json").read_text())
    weird.update(finished="yesterday", results=[{"label": 3}, "x", {"label": "weird", "final_losses": None}])
    (outbox / "weird" / "job.json").write_text(json.dumps(weird))

    page = read_page(gallery.rebuild(outbox, [], now=NOW))
    assert page.cards == ["sweep", 'a<b> & "c" café ☕ 50%#1', "dog-2", "cat", "weird"]  # no finish time: last
    assert not (outbox / "link" / "thumb.jpg").is_symlink() and not (outbox / ".staging" / "job-7" / "thumb.jpg").exists()


def test_thumbnails_are_made_once(outbox, monkeypatch):
    gallery.rebuild(outbox, [], now=NOW)
    made = []
    monkeypatch.setattr(gallery, "write_thumbnail", lambda src, dst, side: made.append(dst))
    gallery.rebuild(outbox, [], now=NOW)
    assert made == []
    publish_fake(outbox, "new", 20, finished=NOW)
    gallery.rebuild(outbox, [], now=NOW)
    assert made == [outbox / "new" / "thumb.jpg"]


def test_thumbnails_wait_for_a_later_rebuild_when_the_budget_is_spent(outbox):
    page = read_page(gallery.rebuild(outbox, [], now=NOW, thumbnail_budget_s=0))
    assert not [img for img in page.images if "thumb" in img["src"]] and page.plain.count("no picture") == 6  # 4 jobs, 2 sweep results
    assert not list(outbox.glob("*/thumb.jpg"))
    page = read_page(gallery.rebuild(outbox, [], now=NOW))
    assert len(list(outbox.glob("*/thumb.jpg"))) == 4 and "no picture" not in page.plain


def test_a_damaged_result_costs_its_thumbnail_not_the_gallery(tmp_path):
    box = tmp_path / "outbox"
    path = publish_fake(box, "bad", 1, compare=False)
    (path / "bad.png").write_bytes(b"not a png")
    page = read_page(gallery.rebuild(box, [], now=NOW))
    assert page.cards == ["bad"] and "no picture" in page.plain
    assert not (path / "thumb.jpg").exists()


def test_pages_of_newest_first_and_stale_pages_removed(tmp_path):
    box = tmp_path / "outbox"
    for i in range(7):
        publish_fake(box, f"job{i}", i + 1, finished=NOW - 1000 + i, compare=False)
    (box / "index-9.html").write_text("left from a bigger outbox")
    gallery.rebuild(box, FAILED[:1], page_size=3, now=NOW)
    pages = [read_page(box / name) for name in ("index.html", "index-2.html", "index-3.html")]
    assert [p.cards for p in pages] == [["job6", "job5", "job4"], ["job3", "job2", "job1"], ["job0"]]
    assert not (box / "index-9.html").exists() and not (box / "index-4.html").exists()
    assert "index-2.html" in pages[0].links and "index.html" in pages[1].links and "index-3.html" in pages[1].links
    assert "Failed (1)" in pages[0].plain and "Failed (1)" not in pages[1].plain
    assert "index.html#failed" in pages[1].links
    shutil.rmtree(box / "job0")
    gallery.rebuild(box, [], page_size=3, now=NOW)
    assert not (box / "index-3.html").exists()


def test_an_empty_outbox_gets_a_page_that_says_so(tmp_path):
    index = gallery.rebuild(tmp_path / "outbox", [], now=NOW)
    assert "No results yet" in read_page(index).plain


def test_a_thousand_jobs(tmp_path, capsys):
    """Not a timed assertion (machines differ): the times are printed. Tiny results, so the
    time is the gallery's own: thumbnails once, then job.json files and listings only."""
    box = tmp_path / "outbox"
    image = Image.new("RGB", (16, 12), MAGENTA)
    for i in range(1000):
        folder = box / f"job{i:04}"
        folder.mkdir(parents=True)
        image.save(folder / f"job{i:04}.png")
        record = {"id": i + 1, "name": f"job{i:04}", "status": "done", "created": NOW - 90_000 + i * 60,
                  "finished": NOW - 90_000 + i * 60 + 50, "results": [{"label": f"job{i:04}", "status": "done", "seconds": 50.0,
                  "content": "c.png", "styles": ["s.png"], "params": {"image_size": 64}}]}
        (folder / "job.json").write_text(json.dumps(record))
    started = time.perf_counter()
    gallery.rebuild(box, [], now=NOW, thumbnail_budget_s=None)
    first = time.perf_counter() - started
    started = time.perf_counter()
    gallery.rebuild(box, [], now=NOW)
    again = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n1000-job gallery: first rebuild {first:.2f} s (1000 thumbnails), then {again:.2f} s")
    assert len(list(box.glob("*/thumb.jpg"))) == 1000
    pages = sorted(p.name for p in box.glob("index*.html"))
    assert len(pages) == 10
    first_page = read_page(box / "index.html")
    assert first_page.cards[0] == "job0999" and len(first_page.cards) == 100
    assert sum(img.get("loading") == "lazy" for img in first_page.images) >= 90
    assert (box / "index.html").stat().st_size < 300_000


# --- in a real browser ---------------------------------------------------------------------------

CHROMIUM_HINT = "chromium not available: apt-get install chromium (Debian), then run the tests again"
# The probe's copy of the page loads every image eagerly, so the load event comes after all of
# them. (Waiting for lazy ones in an async handler raced with --dump-dom: about 1 run in 8 dumped
# before the handler had written its answer.)
_PROBE = """<script>
addEventListener('load', () => {
  const images = Array.from(document.images);
  const out = document.createElement('pre');
  out.id = 'nst-probe';
  out.textContent = JSON.stringify(images.map(i => [i.getAttribute('src'), i.naturalWidth]));
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when the tests run as root and it can be
    (NST_BATCH_NO_APT=1 forbids that), otherwise the browser test is skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("NST_BATCH_NO_APT") or getattr(os, "geteuid", lambda: 1)() != 0 or not shutil.which("apt-get"):
        pytest.skip(CHROMIUM_HINT)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=300).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=120)
            subprocess.run(install, env=env, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        pass
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"{CHROMIUM_HINT} (installing it here failed)")
    return found


def headless(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp_path)})


def test_the_gallery_in_a_headless_browser(outbox, tmp_path, chromium):
    index = gallery.rebuild(outbox, FAILED, now=NOW)
    shot = tmp_path / "shot.png"
    done = headless(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,900", index.as_uri())
    assert shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20, "the page looks blank"
    near = (np.abs(pixels - np.array(MAGENTA)).max(axis=2) < 40).sum()
    assert near > 2000, "the result thumbnails are not on the screen"

    # Every image of the page, lazy ones included, loads from disk: a copy of the page with a
    # probe script reports each image's natural width.
    probe = outbox / ".probe.html"
    eager = index.read_text(encoding="utf-8").replace('loading="lazy"', 'loading="eager"')
    probe.write_text(eager.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    done = headless(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="nst-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    import html

    widths = json.loads(html.unescape(found.group(1)))
    expected = [img["src"] for img in read_page(index).images]
    assert [src for src, _ in widths] == expected and len(expected) >= 9
    assert [src for src, width in widths if not width] == [], "images that did not load"


def test_failed_jobs_from_store_records(tmp_path):
    from nst_batch.daemon.store import Store

    store = Store(tmp_path / "state")
    job = store.begin_claim("half", "pair", [], None, {})
    store.set_job_status(job, "failed", "no style image after 600 s")
    [failure] = gallery.failed_jobs(store.recent_failures(limit=200))
    store.close()
    assert failure["id"] == job and failure["name"] == "half" and failure["error"] == "no style image after 600 s"
    assert abs(failure["when"] - time.time()) < 60


def test_a_results_repairs_are_shown_with_it(outbox):
    folder = publish_fake(outbox, "cat-repaired", 99)
    record = json.loads((folder / "job.json").read_text())
    record["results"][0]["repairs"] = ["repair at iteration 6 (scale 1): blow-up: the loss rose to 1.7e+06"]
    (folder / "job.json").write_text(json.dumps(record))
    page = gallery.rebuild(outbox, [], now=NOW).read_text()
    assert "repair at iteration 6 (scale 1): blow-up" in page


def test_the_first_page_shows_the_running_runs_previews_the_cancelled_jobs_and_a_pause(tmp_path):
    running = [
        {"run_id": 12, "job": "cat", "label": "cat", "iteration": 40, "total": 300, "preview": ".running/run-12.jpg"},
        {"run_id": 13, "job": "dog", "label": "dog", "iteration": 0, "total": 300, "preview": None},
    ]
    cancelled = [{"id": 7, "name": "<owl>", "error": None, "when": 0.0}]
    [page] = gallery.render_pages([], [], 100, time.time(), cancelled, "no new run starts", running)
    assert "Running (2)" in page and 'src=".running/run-12.jpg"' in page and "no preview yet" in page
    assert "iteration 40 of 300; preview, not a result" in page
    assert "Cancelled (1)" in page and "&lt;owl&gt;" in page and "job-7" in page
    assert "<b>Paused</b>: no new run starts" in page
    [quiet] = gallery.render_pages([], [], 100, time.time())
    assert "Running" not in quiet and "Cancelled" not in quiet and "Paused" not in quiet


def test_a_job_made_by_the_ray_executor_says_on_which_nodes_and_devices(tmp_path):
    outbox = tmp_path / "outbox"
    path = publish_fake(outbox, "spread", 1, labels=("style_weight=1e4", "style_weight=1e5"))
    record = json.loads((path / "job.json").read_text())
    for result, device in zip(record["results"], ("gpu:0", "gpu:1")):
        result.update(node="node-a", device=device)
    (path / "job.json").write_text(json.dumps(record))
    publish_fake(outbox, "here", 2)
    text = read_page(gallery.rebuild(outbox, [], now=NOW)).plain
    assert "on node-a gpu:0, node-a gpu:1" in text
    assert "on cpu" in text  # a job of the threads executor names its device, as before
