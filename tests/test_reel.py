"""The progress frames a run keeps: bounded in number, evenly thinned, in order, as bytes and at
most FRAME_LONG_SIDE pixels, whatever the run offers."""

import pytest
import torch

from nst_batch.engine.images import FRAME_LONG_SIDE
from nst_batch.results.reel import REEL_CAPACITY, FrameReel, frame_bytes


def numbered(index: int) -> torch.Tensor:
    """A 1 x 1 8-bit frame that says which one it was (up to 65535)."""
    return torch.tensor([index // 256, index % 256, 0], dtype=torch.uint8).view(1, 3, 1, 1)


def number(frame: torch.Tensor) -> int:
    return int(frame[0, 0, 0, 0]) * 256 + int(frame[0, 1, 0, 0])


def numbers(reel: FrameReel) -> list[int]:
    return [number(frame) for frame in reel.frames]


def test_a_reel_keeps_every_frame_until_it_is_full():
    reel = FrameReel(capacity=8)
    for index in range(8):
        reel.offer(numbered(index))
    assert numbers(reel) == list(range(8)) and reel.stride == 1


def test_a_full_reel_drops_every_other_frame_and_keeps_them_evenly_spaced_in_order():
    reel = FrameReel(capacity=8)
    for index in range(100):
        reel.offer(numbered(index))
        kept = numbers(reel)
        assert len(kept) <= 8  # never over, not even for a moment
        assert kept == list(range(0, index + 1, reel.stride))  # the first, then every stride-th: even, in order
        if index >= 8:
            assert len(kept) >= 4  # thinned by half, never further
    assert reel.stride == 16 and numbers(reel) == [0, 16, 32, 48, 64, 80, 96] and reel.offered == 100


def test_an_odd_capacity_is_never_exceeded_either():
    reel = FrameReel(capacity=5)
    for index in range(40):
        reel.offer(numbered(index))
        assert len(reel) <= 5 and numbers(reel) == list(range(0, index + 1, reel.stride))


def test_every_frame_of_a_long_run_keeps_at_most_the_capacity():
    reel = FrameReel()
    for index in range(10_000):  # frame_every: 1, 10 000 iterations
        reel.offer(numbered(index))
    assert REEL_CAPACITY == 256
    assert REEL_CAPACITY // 2 <= len(reel) <= REEL_CAPACITY
    assert numbers(reel) == list(range(0, 10_000, 64))  # 157 frames, every 64th iteration


def test_frames_are_kept_as_bytes_at_most_frame_long_side_on_their_long_side():
    reel = FrameReel()
    small = torch.rand(1, 3, 24, 20)
    reel.offer(small)  # as the engine gives them: already small enough
    reel.offer(torch.rand(1, 3, 300, 600))  # larger: downsized, aspect kept
    reel.offer(frame_bytes(torch.rand(1, 3, 1030, 10)))  # 8-bit and larger, as an old checkpoint had them
    assert FRAME_LONG_SIDE == 512
    assert [tuple(f.shape) for f in reel.frames] == [(1, 3, 24, 20), (1, 3, 256, 512), (1, 3, 512, 5)]
    assert all(f.dtype == torch.uint8 for f in reel.frames)
    assert torch.equal(reel.frames[0], frame_bytes(small))


def test_a_downsized_frame_is_the_picture_made_smaller():
    reel = FrameReel()
    left_dark = torch.cat([torch.zeros(1, 3, 300, 300), torch.ones(1, 3, 300, 300)], dim=-1)
    reel.offer(left_dark)
    [frame] = reel.frames
    assert frame.shape == (1, 3, 256, 512)
    assert frame[..., :250].max() == 0 and frame[..., 262:].min() == 255


def test_a_restored_reel_goes_on_as_the_one_it_was_saved_from():
    reel = FrameReel(capacity=8)
    for index in range(21):
        reel.offer(numbered(index))
    again = FrameReel.restored(reel.frames, reel.placement(), capacity=8)
    for index in range(21, 60):
        reel.offer(numbered(index))
        again.offer(numbered(index))
    assert numbers(again) == numbers(reel) and again.placement() == reel.placement()


def test_frames_without_a_placement_are_thinned_as_if_offered_now():
    """An older nst-batch kept every frame: they come back as a reel that kept them from the start."""
    reel = FrameReel.restored([numbered(i) for i in range(30)], None, capacity=8)
    assert numbers(reel) == [0, 4, 8, 12, 16, 20, 24, 28] and reel.placement() == {"offered": 30, "stride": 4}


def test_a_reel_saved_with_a_larger_capacity_is_thinned_to_this_ones():
    reel = FrameReel(capacity=16)
    for index in range(40):
        reel.offer(numbered(index))
    smaller = FrameReel.restored(reel.frames, reel.placement(), capacity=8)
    assert len(smaller) <= 8 and numbers(smaller) == list(range(0, 40, smaller.stride))


def test_frames_that_do_not_fit_their_placement_are_refused():
    with pytest.raises(ValueError, match="placement"):
        FrameReel.restored([numbered(0), numbered(1)], {"offered": 9, "stride": 2})


def test_clearing_lets_go_of_every_frame():
    reel = FrameReel(capacity=4)
    for index in range(9):
        reel.offer(numbered(index))
    reel.clear()
    assert len(reel) == 0 and reel.placement() == {"offered": 0, "stride": 1}
