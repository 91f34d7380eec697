"""A run's checkpoint on disk: the engine's RunState and the progress frames kept so far (its
FrameReel, bounded), so a resumed run ends with the same result, loss log and GIF as one never
interrupted.

Saving never ends a run (a checkpoint only saves time) and a damaged checkpoint costs the
progress, never the job: both warn and go on. Nor may saving slow the runs down: an L-BFGS
state holds two image-sized tensors per history pair (hundreds of MB at 512 px), which on a
fast GPU takes longer to write than many iterations take to compute, so checkpoints come less
often than ``checkpoint_every`` when they would cost more than CHECKPOINT_SHARE of the time.
"""

import json
from pathlib import Path

import torch
from loguru import logger

from ..engine import RunState, StyleParams
from ..results.reel import FrameReel
from ..util.atomicio import atomic_path

CHECKPOINT_SHARE = 0.05  # of the time since a batch started, at most, spent saving its checkpoints


def checkpoint_due(since_saved: int, every: int, spent_s: float, elapsed_s: float) -> bool:
    """Whether a run saves now (pure): ``every`` iterations or more since its last checkpoint,
    and its batch's saving so far (``spent_s`` of ``elapsed_s``) within CHECKPOINT_SHARE. The
    runs of a batch that are due together therefore save in turns, not all at once."""
    return since_saved >= every and spent_s <= CHECKPOINT_SHARE * elapsed_s


def save_checkpoint(path: Path, state: RunState, reel: FrameReel, params: StyleParams, log=logger) -> bool:
    """Save, or warn and go on: a full state disk must not end the run, and the previous
    checkpoint, replaced atomically, stays valid. Every failure is caught because torch reports
    a failed write without its errno. ``params``: the run's, which the state belongs to.

    The frames stay a plain list under "frames", as an older nst-batch saved and reads them;
    where they were in the run is beside them, under "reel"."""
    try:
        with atomic_path(path) as temp:
            torch.save(
                {"run": state.to_dict(), "frames": list(reel.frames), "reel": reel.placement(),
                 "params": json.dumps(params.stored())},
                temp,
            )
        return True
    except Exception as error:
        log.warning(f"checkpoint {path.name} not saved ({error}); the run goes on")
        return False


def load_checkpoint(path: Path, params: StyleParams) -> tuple[RunState | None, FrameReel]:
    """The run's state and its progress frames so far, or (None, an empty reel) to start afresh:
    when there is none, when it is damaged, or when it was saved with other ``params`` (the
    too_big policy changed them since), whose state would not fit the run now. Parameters are
    compared as parameters, not as text: a checkpoint of an older nst-batch, whose record lacks
    a newer field, is of the same run; its frames (every one, full size) come back downsized and
    thinned to the reel's bound."""
    if not path.exists():
        return None, FrameReel()
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if "run" not in data:  # saved before checkpoints kept the frames: the GIF starts at the resume
            return RunState.from_dict(data), FrameReel()
        if _saved_params(data.get("params")) != _compared(params.explicit()):
            logger.info(f"checkpoint {path.name} was saved with other parameters; starting the run again")
            path.unlink(missing_ok=True)
            return None, FrameReel()
        return RunState.from_dict(data["run"]), FrameReel.restored(data["frames"], data.get("reel"))
    except Exception as error:
        logger.warning(f"checkpoint {path.name} unreadable ({error}); starting the run again")
        path.unlink(missing_ok=True)
        return None, FrameReel()


def _saved_params(saved: str | None) -> dict | None:
    """The parameters a checkpoint was saved with, every default resolved as it was then (an older
    nst-batch saved every field, a default as its value)."""
    return None if saved is None else _compared(StyleParams.from_stored(json.loads(saved)).explicit())


def _compared(explicit: dict) -> dict:
    """What must match for a state to go on: not the tile, which changes how an iteration is
    computed, not what it computes (a run checkpointed whole may go on tiled after a restart)."""
    return {key: value for key, value in explicit.items() if key != "tile"}
