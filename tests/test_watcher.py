"""When inbox files count as complete, and the observer's supervision."""

import logging
import time

import pytest

from nst_batch.daemon.watcher import InboxWatcher


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def entry(watcher, path):
    return next(e for e in watcher.snapshot() if e.path == path)


def test_a_file_counts_once_unchanged_for_settle_seconds(tmp_path):
    watcher = InboxWatcher(tmp_path, settle_seconds=0.3)
    (tmp_path / "a.png").write_bytes(b"1")
    assert not entry(watcher, "a.png").complete
    time.sleep(0.2)
    (tmp_path / "a.png").write_bytes(b"12")  # still growing: the clock starts again
    assert not entry(watcher, "a.png").complete
    time.sleep(0.35)
    assert entry(watcher, "a.png").complete


def test_a_close_event_after_the_last_write_completes_a_file_at_once(tmp_path):
    watcher = InboxWatcher(tmp_path, settle_seconds=60)
    (tmp_path / "a.png").write_bytes(b"data")
    assert not entry(watcher, "a.png").complete
    watcher.mark_finished(str(tmp_path / "a.png"))
    assert entry(watcher, "a.png").complete


def test_ignored_names_are_not_listed(tmp_path):
    for name in (".hidden.png", "x.part", "y.tmp", "z.png~", "ok.png"):
        (tmp_path / name).write_bytes(b"1")
    assert [e.path for e in InboxWatcher(tmp_path, 0).snapshot()] == ["ok.png"]


@pytest.mark.parametrize("kind", ["native", "polling"])
def test_a_dead_observer_is_restarted_and_events_wake_the_intake(tmp_path, kind):
    watcher = InboxWatcher(tmp_path, settle_seconds=0, observer=kind)
    watcher.start()
    try:
        watcher._observer.stop()  # what an unhandled error in the observer thread amounts to
        watcher._observer.join()
        watcher.ensure_alive()
        assert watcher._observer.is_alive()
        watcher.wake.clear()
        (tmp_path / "new.png").write_bytes(b"1")
        wait_for(watcher.wake.is_set)
    finally:
        watcher.stop()


def test_a_folder_it_does_not_look_into_is_reported_as_a_folder(tmp_path):
    (tmp_path / "trip" / "raw").mkdir(parents=True)
    (tmp_path / "trip" / "raw" / "IMG.jpg").write_bytes(b"1")
    (tmp_path / "trip" / "style.jpg").write_bytes(b"1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "litter").mkdir()
    (tmp_path / "litter" / ".DS_Store").write_bytes(b"1")
    paths = sorted(e.path for e in InboxWatcher(tmp_path, 0).snapshot())
    assert paths == ["empty/", "litter/", "trip/raw/", "trip/style.jpg"]


def test_a_subfolder_counts_once_its_job_folder_settled(tmp_path):
    watcher = InboxWatcher(tmp_path, settle_seconds=0.3)
    (tmp_path / "trip" / "raw").mkdir(parents=True)
    (tmp_path / "trip" / "style.jpg").write_bytes(b"1")
    assert not entry(watcher, "trip/raw/").complete
    time.sleep(0.35)
    assert entry(watcher, "trip/raw/").complete


def test_a_file_still_open_for_writing_is_never_complete_however_long_it_settles(tmp_path):
    watcher = InboxWatcher(tmp_path, settle_seconds=0.1)
    watcher.start()
    try:
        with open(tmp_path / "a.png", "wb") as file:
            file.write(b"half a picture")
            file.flush()
            wait_for(lambda: entry(watcher, "a.png").writing)
            time.sleep(0.3)
            stuck = entry(watcher, "a.png")
            assert not stuck.complete and stuck.writing and stuck.unchanged >= 0.3
        wait_for(lambda: entry(watcher, "a.png").complete)  # the close
        assert not entry(watcher, "a.png").writing
    finally:
        watcher.stop()


def test_without_close_events_settling_decides_alone(tmp_path):
    watcher = InboxWatcher(tmp_path, settle_seconds=0.1, observer="polling")
    watcher.start()
    try:
        watcher.wake.clear()
        with open(tmp_path / "a.png", "wb") as file:
            file.write(b"data")
            file.flush()
            wait_for(watcher.wake.is_set)  # the observer has seen it
            wait_for(lambda: entry(watcher, "a.png").complete)
            assert not entry(watcher, "a.png").writing
    finally:
        watcher.stop()


def test_when_watchdog_says_events_were_lost_what_they_said_about_writers_is_forgotten(tmp_path):
    watcher = InboxWatcher(tmp_path, settle_seconds=0.1)
    watcher.start()
    try:
        with open(tmp_path / "a.png", "wb") as file:
            file.write(b"data")
            file.flush()
            wait_for(lambda: entry(watcher, "a.png").writing)
            logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; filesystem events were lost")
            assert not entry(watcher, "a.png").writing
            wait_for(lambda: entry(watcher, "a.png").complete)  # by settling
    finally:
        watcher.stop()
    assert watcher._lost_events not in logging.getLogger("watchdog.observers.inotify_c").handlers
