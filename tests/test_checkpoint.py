"""A run's checkpoint on disk: state and progress frames come back; a damaged or unsaveable one
costs only time."""

import json

import pytest
import torch

from nst_batch.daemon.checkpoint import CHECKPOINT_SHARE, checkpoint_due, load_checkpoint, save_checkpoint
from nst_batch.engine import StyleParams, stylize
from nst_batch.engine.images import FRAME_LONG_SIDE
from nst_batch.results.reel import REEL_CAPACITY, FrameReel, frame_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STOPPED = StyleParams(image_size=24, iterations=5, seed=3, frame_every=1)
PARAMS = STOPPED


@pytest.fixture
def stopped(vgg19_random, tiny_images):
    """An L-BFGS run stopped at iteration 2, with its frames so far."""
    reel = FrameReel()

    def on_progress(progress) -> bool:
        reel.offer(progress.frame)
        return progress.iteration == 2

    result = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], STOPPED, callback=on_progress)
    assert result.interrupted
    return result, reel


def test_state_and_frames_come_back_as_saved(tmp_path, stopped):
    result, frames = stopped
    path = tmp_path / "run-1.pt"
    assert save_checkpoint(path, result.state, frames, PARAMS)
    state, kept = load_checkpoint(path, PARAMS)
    assert (state.iteration, state.seed) == (2, 3) and torch.equal(state.image, result.state.image)
    assert len(kept) == 2 and all(torch.equal(a, b) for a, b in zip(kept.frames, frames.frames, strict=True))
    assert kept.frames[0].dtype == torch.uint8 and kept.placement() == frames.placement()
    # the frames are still the plain list an older nst-batch reads back
    saved = torch.load(path, weights_only=True)["frames"]
    assert isinstance(saved, list) and len(saved) == 2


def test_a_frame_keeps_what_the_gif_keeps_in_a_quarter_of_the_memory(tiny_images):
    image = tiny_images.gradient
    back = frame_bytes(image).float() / 255  # as the GIF reads it back
    assert frame_bytes(image).element_size() * 4 == image.element_size()
    assert (back - image).abs().max() <= 0.5 / 255 + 1e-6  # 8 bits a channel, as in a GIF


def test_a_checkpoint_saved_before_frames_were_kept_still_resumes(tmp_path, stopped):
    result, _ = stopped
    path = tmp_path / "run-1.pt"
    torch.save(result.state.to_dict(), path)
    state, frames = load_checkpoint(path, PARAMS)
    assert state.iteration == 2 and len(frames) == 0


def test_a_damaged_checkpoint_is_dropped_and_the_run_starts_afresh(tmp_path):
    path = tmp_path / "run-1.pt"
    path.write_bytes(b"not a checkpoint")
    assert _nothing(load_checkpoint(path, PARAMS))
    assert not path.exists()
    assert _nothing(load_checkpoint(tmp_path / "run-2.pt", PARAMS))


def test_a_checkpoint_saved_with_other_parameters_is_dropped(tmp_path, stopped):
    """The too_big policy may shrink a queued run: its state, for the old size, cannot resume it."""
    result, frames = stopped
    path = tmp_path / "run-1.pt"
    assert save_checkpoint(path, result.state, frames, PARAMS)
    smaller = StyleParams(image_size=16, iterations=5, seed=3, frame_every=1)
    assert _nothing(load_checkpoint(path, smaller))
    assert not path.exists()


def test_a_checkpoint_saved_whole_resumes_a_run_the_policy_tiles_since(tmp_path, stopped):
    """Tiles change how an iteration is computed, not what: the state goes on."""
    result, frames = stopped
    path = tmp_path / "run-1.pt"
    assert save_checkpoint(path, result.state, frames, PARAMS)
    state, _ = load_checkpoint(path, PARAMS.with_overrides({"tile": 16}))
    assert state is not None and state.iteration == 2


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one(tmp_path, stopped, monkeypatch):
    result, frames = stopped
    path = tmp_path / "run-1.pt"
    first = FrameReel()
    first.offer(frames.frames[0])
    assert save_checkpoint(path, result.state, first, PARAMS)

    def refused(*args, **kwargs):  # torch reports a full disk without an errno
        raise RuntimeError("PytorchStreamWriter failed writing file data")

    monkeypatch.setattr(torch, "save", refused)
    assert not save_checkpoint(path, result.state, frames, PARAMS)
    _, kept = load_checkpoint(path, PARAMS)
    assert len(kept) == 1


def test_an_older_checkpoint_with_every_frame_at_full_size_loads_downsized_and_thinned(tmp_path, stopped):
    """Before the reel, a checkpoint kept every frame at the image's size: 600 of them, 520 px wide here."""
    result, _ = stopped
    path = tmp_path / "run-1.pt"
    frames = [frame_bytes(torch.full((1, 3, 8, 520), (i % 256) / 255)) for i in range(600)]
    torch.save({"run": result.state.to_dict(), "frames": frames, "params": json.dumps(PARAMS.stored())}, path)
    state, reel = load_checkpoint(path, PARAMS)
    assert state.iteration == 2
    assert REEL_CAPACITY // 2 <= len(reel) <= REEL_CAPACITY and reel.placement() == {"offered": 600, "stride": 4}
    assert all(f.shape == (1, 3, 8, FRAME_LONG_SIDE) and f.dtype == torch.uint8 for f in reel.frames)
    assert [int(f[0, 0, 0, 0]) for f in reel.frames] == [i % 256 for i in range(0, 600, 4)]  # evenly, in order


def test_a_resumed_reel_keeps_what_one_never_interrupted_keeps(tmp_path, stopped):
    result, _ = stopped
    path = tmp_path / "run-1.pt"
    frames = [frame_bytes(torch.full((1, 3, 2, 2), (i % 256) / 255)) for i in range(1000)]
    uninterrupted = FrameReel()
    for frame in frames[:700]:
        uninterrupted.offer(frame)
    assert save_checkpoint(path, result.state, uninterrupted, PARAMS)
    _, resumed = load_checkpoint(path, PARAMS)
    for frame in frames[700:]:
        uninterrupted.offer(frame)
        resumed.offer(frame)
    assert len(resumed) <= REEL_CAPACITY and resumed.placement() == uninterrupted.placement()
    assert all(torch.equal(a, b) for a, b in zip(resumed.frames, uninterrupted.frames, strict=True))


def test_a_checkpoint_is_due_every_n_iterations_while_saving_is_cheap():
    assert [checkpoint_due(since, 25, spent_s=0.0, elapsed_s=10.0) for since in (1, 24, 25, 40)] == [
        False, False, True, True
    ]


def test_checkpoints_that_take_long_to_write_come_less_often():
    """On a fast GPU, 25 iterations of a batch take 0.2 s and its L-BFGS checkpoints seconds."""
    every, iteration_s, save_s = 25, 0.008, 1.5
    elapsed = spent = 0.0
    since, saves = 0, 0
    for _ in range(10_000):  # one run: 80 s of iterations
        elapsed += iteration_s
        since += 1
        if checkpoint_due(since, every, spent, elapsed):
            elapsed += save_s
            spent += save_s
            since, saves = 0, saves + 1
    assert spent <= CHECKPOINT_SHARE * elapsed + save_s  # one save over the share, at most
    assert 2 <= saves < 10_000 // every  # still checkpointed, but far less often than every 25


def test_the_runs_of_a_batch_due_together_save_in_turns():
    spent, elapsed = 0.0, 100.0
    due = []
    for _ in range(8):  # eight members reach iteration 25 in the same pass
        due.append(checkpoint_due(25, 25, spent, elapsed))
        if due[-1]:
            spent += 2.0
    assert due == [True, True, True, False, False, False, False, False]


def _nothing(loaded) -> bool:
    """(None, an empty reel): start afresh."""
    state, reel = loaded
    return state is None and len(reel) == 0 and reel.offered == 0
