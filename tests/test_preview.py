"""The running run's preview: small, not too often, written off the run's thread, gone at the end."""


import torch
from daemon_helpers import wait_for
from PIL import Image

from nst_batch.daemon.preview import Previews, preview_size


def test_a_preview_is_at_most_512_px_and_keeps_the_aspect():
    assert preview_size(2048, 1024) == (512, 256)
    assert preview_size(300, 200) == (300, 200)
    assert preview_size(100, 4000) == (13, 512)


def test_previews_are_taken_at_most_every_period_each_run_on_its_own_clock_and_removed_at_the_end(tmp_path):
    shown = []
    previews = Previews(tmp_path / "outbox", written=lambda: shown.append(1), every_s=30, first_s=0)
    (tmp_path / "outbox" / ".running").mkdir(parents=True)
    (tmp_path / "outbox" / ".running" / "run-9.jpg").write_bytes(b"left by a crash")
    previews.start()
    assert list(previews.folder.iterdir()) == []
    image = torch.rand(1, 3, 512, 384)  # the default image_size
    try:
        # At a run's first iteration the clock starts (first_s: 0 here); then one per 30 s.
        assert [previews.offer(1, lambda: image.clone()) for _ in range(4)] == [False, True, False, False]
        wait_for(lambda: previews.path(1).exists() and len(shown) == 1, 10, "the first preview")
        for run_id in range(2, 7):  # the run's thread hands the picture on; another thread writes it
            previews.offer(run_id, lambda: image.clone())  # its first iteration
            assert previews.offer(run_id, lambda: image.clone())
            wait_for(lambda id=run_id: previews.path(id).exists(), 10, "the preview")
        with Image.open(previews.path(1)) as picture:
            assert picture.format == "JPEG" and picture.size == (384, 512)
        assert previews.remove(1) and not previews.path(1).exists()
        assert not previews.remove(1)
    finally:
        previews.stop()
