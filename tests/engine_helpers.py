"""Helpers of the engine tests: a result's losses without their timings, and a state's way to disk and back."""

import io

import torch

from nst_batch.engine import RunState


def losses_of(result) -> list[tuple[float, ...]]:
    """The history without its timings, which never repeat."""
    return [(r.iteration, r.content, r.style, r.tv, r.total) for r in result.history]


def round_trip(state: RunState) -> RunState:
    """Through torch.save and a safe torch.load, as a checkpoint on disk would go."""
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    return RunState.from_dict(torch.load(buffer, weights_only=True))
