"""Bad input, end to end: one `nst-batch serve` is fed every kind of broken, odd and hostile file
at once. Each one either works or ends in failed/NAME/ with a reason that names what is wrong;
the daemon keeps running; and nothing outside its folders is read, written or moved, which an
inotify watch on a folder of bait outside proves.

The rules behind each case are unit-tested (test_imagefile, test_config, test_inbox,
test_intake); this file proves the daemon applies them, and survives them all together."""

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import Daemon, image_bytes, make_image
from PIL import Image
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

pytestmark = pytest.mark.slow

PAIR_TIMEOUT = 15
TINY = {"image_size": 32, "iterations": 2, "style_layers": "relu1_1,relu2_1", "content_layers": "relu2_1"}


# --- files that are odd, broken or lying ------------------------------------------------


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def picture(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.frombytes("RGB", size, image_bytes_raw(size)).convert(mode)


def truncated(data: bytes) -> bytes:
    """The first 60 %: the header is whole, the pixels stop half way."""
    return data[: len(data) * 6 // 10]


def image_bytes_raw(size: tuple[int, int]) -> bytes:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 6 % 256, y * 8 % 256, (x + y) * 3 % 256], -1).astype(np.uint8).tobytes()


def sixteen_bit() -> bytes:
    array = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    return encoded(Image.fromarray(array), "PNG")


def rotated_jpeg() -> bytes:
    """40 x 24 as stored, EXIF orientation 6: upright it is 24 wide and 40 tall."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.frombytes("RGB", (40, 24), image_bytes_raw((40, 24))), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "green", "blue")]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def huge_header() -> bytes:
    """A PNG whose header claims 50000 x 50000 pixels, with next to no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


WORKS = {  # content images that must work: name -> (suffix, bytes)
    "grey": (".png", lambda: encoded(picture("L"), "PNG")),
    "alpha": (".png", lambda: encoded(picture("RGBA"), "PNG")),
    "palette": (".png", lambda: encoded(picture("P"), "PNG")),
    "cmyk": (".jpg", lambda: encoded(picture("CMYK"), "JPEG")),
    "deep": (".png", sixteen_bit),
    "rotated": (".jpg", rotated_jpeg),
    "disguised": (".png", lambda: encoded(picture(), "JPEG")),  # a JPEG named .png
    "my cat": (".png", lambda: encoded(picture(), "PNG")),
    "café ☕": (".png", lambda: encoded(picture(), "PNG")),
}

BROKEN = {  # content images that must fail: name -> (suffix, bytes, what the reason must say)
    "empty": (".png", lambda: b"", "empty (0 bytes)"),
    "truncjpg": (".jpg", lambda: truncated(encoded(picture(size=(64, 48)), "JPEG")), "truncated or corrupt"),
    "truncpng": (".png", lambda: truncated(image_bytes((40, 30), "noise")), "truncated or corrupt"),
    "text": (".png", lambda: b"this is a text file, not an image\n", "not an image"),
    "huge": (".png", huge_header, "2500.0 megapixels; the limit is 50.0 megapixels"),
    "anim": (".png", animated_gif, "animated (3 frames)"),
}

SIDECARS = {  # a good pair with this sidecar: name -> (sidecar text, what the reason must say)
    "syntax": ("iterations: [1, 2\n", "line 2, column 1"),
    "negative": ("style_weight: -1\n", "style_weight: must be >= 0"),
    "nan": ("style_weight: .nan\n", "style_weight: must be a finite number"),
    "infinite": ("content_weight: .inf\n", "content_weight: must be a finite number"),
    "zero": ("iterations: 0\n", "iterations: must be >= 1"),
    "laughs": (
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
        "aliases (*name) are not allowed",
    ),
    "big": ("# padding\n" * 1_000_000, "limited to 1.0 MB"),
    "escape": ("name: ../../escaped\n", "name: must be a single folder name"),
}


# --- the bait outside the daemon's folders ----------------------------------------------


class Touches(FileSystemEventHandler):
    """Every event in the bait folder: an open (a read), a write, a move, a deletion."""

    def __init__(self) -> None:
        self.events: list[FileSystemEvent] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.events.append(event)


def bait(outside: Path) -> dict[str, bytes]:
    make_image(outside / "secret.png")
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "evil.yaml").write_text("iterations: 1\n")
    (outside / "dir").mkdir()
    (outside / "dir" / "photo.png").write_bytes(encoded(picture(), "PNG"))
    return {str(p.relative_to(outside)): p.read_bytes() for p in outside.rglob("*") if p.is_file()}


def drop_pair(inbox: Path, name: str, content: bytes, suffix: str = ".png", sidecar: str | None = None) -> None:
    if sidecar is not None:
        (inbox / f"{name}.yaml").write_text(sidecar)
    (inbox / f"{name}.content{suffix}").write_bytes(content)
    make_image(inbox / f"{name}.style.png", (30, 40), "noise")


def test_every_bad_input_works_or_fails_with_its_reason_and_nothing_outside_is_touched(daemon_factory) -> None:
    daemon: Daemon = daemon_factory(
        settle_seconds=0.5, pair_timeout=PAIR_TIMEOUT, defaults=TINY, scheduler={"calibrate": False}
    )
    outside = daemon.root / "outside"
    outside.mkdir()
    originals = bait(outside)
    daemon.styles.mkdir()
    (daemon.styles / "libsym.png").symlink_to(outside / "secret.png")
    touches = Touches()
    watch = Observer()
    watch.schedule(touches, str(outside), recursive=True)
    watch.start()
    pwned = daemon.root / "PWNED"
    inbox = daemon.inbox

    daemon.start()
    # A copy that stops half way and stays open: it must never start a job.
    stalled = open(inbox / "stall.content.png", "wb")
    try:
        stalled.write(truncated(image_bytes((48, 36), "noise")))
        stalled.flush()
        stalled_at = time.monotonic()
        make_image(inbox / "stall.style.png", (30, 40), "noise")

        for name, (suffix, content) in WORKS.items():
            drop_pair(inbox, name, content(), suffix)
        for name, (suffix, content, _) in BROKEN.items():
            drop_pair(inbox, name, content(), suffix)
        for name, (text, _) in SIDECARS.items():
            drop_pair(inbox, name, encoded(picture(), "PNG"), sidecar=text)
        attack = f"x: !!python/object/apply:os.system ['touch {pwned}']\n"
        drop_pair(inbox, "pyobj", encoded(picture(), "PNG"), sidecar=attack)

        # Paths that lead outside: as names in a sidecar, as links in the inbox and in the library.
        make_image(inbox / "me.png")
        (inbox / "dots.yaml").write_text("content: ../outside/passwd\nstyle: ../../outside/secret.png\n")
        (inbox / "absolute.yaml").write_text(f"content: {outside}/secret.png\nstyle: {outside}/dir/photo.png\n")
        (inbox / "libsym.yaml").write_text("content: me.png\nstyle: libsym.png\n")
        (inbox / "linkdir").symlink_to(outside / "dir")
        drop_pair(inbox, "lnk", encoded(picture(), "PNG"))
        (inbox / "lnk.yaml").symlink_to(outside / "evil.yaml")
        drop_pair(inbox, "new\nline", encoded(picture(), "PNG"))
        with open(os.fsencode(inbox) + b"/latin\xe9.png", "wb") as file:  # not UTF-8: an old Latin-1 name
            file.write(encoded(picture(), "PNG"))

        # Named pipes: opening one to read it would wait for ever for a writer.
        os.mkfifo(inbox / "pipe.content.png")
        make_image(inbox / "pipe.style.png")
        os.mkfifo(inbox / "fifo.yaml")

        # Settled long ago (four times settle_seconds), never closed: still in the inbox, no job.
        daemon.wait(lambda: daemon.failed_reason("text") and time.monotonic() - stalled_at > 2, 30, "a refusal")
        assert daemon.job_status("stall") is None and (inbox / "stall.content.png").exists()

        expected_failures = [*BROKEN, *SIDECARS, "pyobj", "dots", "absolute", "linkdir", "lnk", "pipe"]
        reasons = daemon.wait_failed(*expected_failures, timeout=90)
        done = daemon.wait_published(*WORKS, timeout=90)

        for name, (_, _, why) in BROKEN.items():
            assert why in reasons[name], (name, reasons[name])
            assert f"{name}.content" in reasons[name]
        for name, (_, why) in SIDECARS.items():
            assert why in reasons[name] and f"{name}.yaml" in reasons[name], (name, reasons[name])
        assert "the tag '!!python/object/apply:os.system' is not allowed" in reasons["pyobj"]
        assert "'../outside/passwd' is not a file name" in reasons["dots"]
        assert "'../../outside/secret.png' is not a file name" in reasons["dots"]
        assert f"{str(outside / 'secret.png')!r} is not a file name" in reasons["absolute"]
        assert "linkdir is not a file nst-batch reads" in reasons["linkdir"]
        assert "lnk.yaml is a symbolic link" in reasons["lnk"]
        assert "pipe.content.png is not a regular file" in reasons["pipe"]
        assert (daemon.state / "failed" / "linkdir" / "linkdir").is_symlink()  # moved as a link, never followed

        for name in WORKS:
            assert done[name]["status"] == "done" and (daemon.outbox / name / f"{name}.png").is_file()
        with Image.open(daemon.outbox / "rotated" / "rotated.png") as result:
            assert result.height > result.width  # EXIF orientation honoured

        # A control character in a name: refused, under a name a terminal can show.
        [newline] = [p for p in (daemon.state / "failed").iterdir() if p.name == "new_line"]
        explained = (newline / "error.txt").read_text()
        assert "rename it" in explained and "'new\\nline" in explained
        explained = (daemon.state / "failed" / "latin_" / "error.txt").read_text()
        assert "'latin\\udce9.png'" in explained and "not UTF-8" in explained

        # The library's link is never followed: to the daemon, libsym.png is a file that never came.
        reasons.update(daemon.wait_failed("libsym", "stall", "fifo", timeout=PAIR_TIMEOUT + 30))
        assert "fifo.yaml is not a regular file" in reasons["fifo"]
        assert "libsym.png never arrived in the inbox" in reasons["libsym"]
        assert "stall.content.png has been open for writing and unchanged for" in reasons["stall"]
        assert daemon.query("SELECT runs.id FROM runs JOIN jobs ON jobs.id = runs.job_id WHERE jobs.name='stall'") == []

        assert daemon.alive()
        drop_pair(inbox, "after", encoded(picture(), "PNG"))  # and it still works
        daemon.wait_published("after", timeout=60)
        assert list(inbox.iterdir()) == []
    finally:
        stalled.close()
        watch.stop()
        watch.join(10)

    assert not pwned.exists()
    assert {str(p.relative_to(outside)): p.read_bytes() for p in outside.rglob("*") if p.is_file()} == originals
    assert touches.events == [], touches.events
    assert (daemon.styles / "libsym.png").is_symlink()
    assert daemon.terminate()[0] == 0


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))


def test_ten_thousand_files_at_once_are_claimed_and_the_daemon_stays_responsive(daemon_factory) -> None:
    """A folder of 9 999 photos and a style, copied in at once: one job of 9 999 results. It is
    claimed whole within a deadline, memory stays bounded, and a job dropped after it with a
    higher priority still runs at once, while the big one's runs wait their turn."""
    daemon: Daemon = daemon_factory(settle_seconds=1, defaults=TINY, scheduler={"calibrate": False})
    daemon.start()
    before = rss_kib(daemon.process.pid)
    photo = encoded(picture(), "PNG")
    folder = daemon.root / "many"
    folder.mkdir()
    make_image(folder / "style.png", (30, 40), "noise")
    for i in range(9_999):
        (folder / f"IMG_{i:05d}.png").write_bytes(photo)
    folder.rename(daemon.inbox / "many")  # what a file manager does within one filesystem

    started = time.monotonic()
    daemon.wait(lambda: daemon.job_status("many") == "running", 120, "the big folder to be claimed and running")
    claimed_in = time.monotonic() - started
    assert len(daemon.query("SELECT id FROM runs")) == 9_999
    assert not (daemon.inbox / "many").exists()

    drop_pair(daemon.inbox, "urgent", photo, sidecar="priority: 5\n")
    urgent_dropped = time.monotonic()
    daemon.wait_published("urgent", timeout=60)
    urgent_in = time.monotonic() - urgent_dropped
    assert urgent_in < 15, f"a priority job waited {urgent_in:.0f} s behind a queue of 9 999"

    done = len(daemon.query("SELECT id FROM runs WHERE status='done'"))
    daemon.wait(lambda: len(daemon.query("SELECT id FROM runs WHERE status='done'")) >= done + 10, 60, "ten more runs")
    # What the main loop spends between one run's end and the next one's start may not grow with
    # the queue: 0.6 s per run behind 9 999 others would add hours to this job alone.
    runs = daemon.query("SELECT started, finished FROM runs WHERE status='done' AND job_id=1 ORDER BY started")
    gaps = sorted(later["started"] - earlier["finished"] for earlier, later in zip(runs, runs[1:]))
    assert gaps[len(gaps) // 2] < 0.25, gaps
    assert rss_kib(daemon.process.pid) - before < 300 * 1024
    exit_status, seconds = daemon.terminate()
    assert exit_status == 0 and seconds < 15, f"{seconds:.0f} s to stop"
    assert claimed_in < 60, f"{claimed_in:.0f} s to claim"
