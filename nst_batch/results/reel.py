"""The progress frames a run keeps for its GIF, bounded whatever the iteration count and the
image's size: at most REEL_CAPACITY frames, each 8 bits a channel and at most FRAME_LONG_SIDE
pixels on its long side. At 512 x 512 that is 0.8 MB a frame and 201 MB for a full reel, the
most a run ever holds in memory and puts into a checkpoint for its frames, however many it is
offered (``frame_every: 1`` on 100 000 iterations at 4096 px included)."""

from collections.abc import Iterable, Mapping

import torch

from ..engine.images import FRAME_LONG_SIDE, shrink_long_side

# Frames kept at most. A full reel keeps every other frame from then on, so a long run ends with
# between half of this and this many, evenly spaced: a GIF of 13 to 26 s at 10 frames a second.
REEL_CAPACITY = 256


def frame_bytes(frame: torch.Tensor) -> torch.Tensor:
    """A progress frame as the GIF will have it, 8 bits a channel: a quarter of the memory, and
    small enough to go into every checkpoint."""
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8)


class FrameReel:
    """The progress frames a run keeps, in the order offered, 8-bit, at most FRAME_LONG_SIDE px.

    At most ``capacity`` of them. When a frame comes to a full reel, every other frame kept is
    dropped and from then on only every 2nd frame offered is kept (then every 4th, and so on):
    the frames kept are always those offered at multiples of ``stride``, the first included, so
    they stay evenly spaced in iterations (the engine offers one every ``frame_every``).
    """

    def __init__(self, capacity: int = REEL_CAPACITY):
        if capacity < 2:
            raise ValueError(f"a reel keeps at least 2 frames, not {capacity}")
        self.capacity = capacity
        self._frames: list[torch.Tensor] = []
        self.offered = 0  # frames offered so far, kept or not
        self.stride = 1  # every stride-th frame offered is kept

    def offer(self, frame: torch.Tensor) -> None:
        """The next progress frame (in [0, 1], or 8-bit): kept, downsized and as bytes, or not."""
        index, self.offered = self.offered, self.offered + 1
        if index % self.stride:
            return
        if len(self._frames) >= self.capacity:
            self._thin()
            if index % self.stride:
                return
        self._frames.append(_stored(frame))

    def _thin(self) -> None:
        self._frames = self._frames[::2]
        self.stride *= 2

    @property
    def frames(self) -> tuple[torch.Tensor, ...]:
        """The frames kept, oldest first: (1, 3, H, W) uint8."""
        return tuple(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        """Let go of every frame (the run is over, or out of memory); the reel starts again."""
        self._frames, self.offered, self.stride = [], 0, 1

    def placement(self) -> dict[str, int]:
        """Where the frames kept were in the run, for a checkpoint: with them, ``restored`` gives
        back this reel, which then keeps what this one would have kept."""
        return {"offered": self.offered, "stride": self.stride}

    @classmethod
    def restored(
        cls, frames: Iterable[torch.Tensor], placement: Mapping[str, int] | None, capacity: int = REEL_CAPACITY
    ) -> "FrameReel":
        """The reel of a checkpoint: its ``frames`` and ``placement``. Without a placement, the
        frames of an older nst-batch, which kept every frame offered at full size: downsized and
        thinned as if offered now, so the reel goes on as one that had kept them from the start.
        A reel saved with a larger capacity is thinned to this one's."""
        reel = cls(capacity)
        if placement is None:
            for frame in frames:
                reel.offer(frame)
            return reel
        reel.offered, reel.stride = int(placement["offered"]), int(placement["stride"])
        reel._frames = [_stored(frame) for frame in frames]
        if reel.stride < 1 or len(reel._frames) != -(-reel.offered // reel.stride):
            raise ValueError(f"{len(reel._frames)} frames do not fit their placement {dict(placement)}")
        while len(reel._frames) > capacity:
            reel._thin()
        return reel


def _stored(frame: torch.Tensor) -> torch.Tensor:
    """A frame as a reel keeps it: 8-bit, at most FRAME_LONG_SIDE on its long side, on the CPU."""
    frame = frame.detach().cpu()
    if max(frame.shape[-2:]) > FRAME_LONG_SIDE:  # the engine's frames never are; an old checkpoint's may be
        image = frame.float() / 255 if frame.dtype == torch.uint8 else frame
        frame = shrink_long_side(image, FRAME_LONG_SIDE)
    return frame if frame.dtype == torch.uint8 else frame_bytes(frame)
