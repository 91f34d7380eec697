"""What gets written for a result: the image with its settings embedded, the loss log and the
progress GIF. Every file is written atomically, so nobody ever sees half of one."""

import csv
import io
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import __version__
from ..util.atomicio import atomic_path, atomic_write, fsync_dir, is_temp_name
from ..engine import LossRecord, Result, StyleParams, WeightsInfo
from ..engine.images import resize_long_side
from ..util.imagefile import write_image

# ``note``: what happened at that iteration besides a step (a repair, an early stop); mostly empty.
LOSS_COLUMNS = ("iteration", "content", "style", "tv", "total", "elapsed_s", "note")
GIF_FRAMES = 50  # about this many frames in a progress GIF, whatever the iteration count


def gif_frame_every(params: StyleParams) -> int:
    """The frame interval of a progress GIF when the user asked for one without choosing it."""
    return params.frame_every or max(1, params.iterations * params.scales // GIF_FRAMES)


def loss_log_text(history: Sequence[LossRecord], notes: Mapping[int, str] = {}) -> str:
    """The loss log as CSV; ``notes``: text for the ``note`` column, by iteration."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LOSS_COLUMNS)
    for record in history:
        losses = (f"{getattr(record, c):.6g}" for c in ("content", "style", "tv", "total"))
        writer.writerow([record.iteration, *losses, f"{record.elapsed_s:.3f}", notes.get(record.iteration, "")])
    return out.getvalue()


def result_notes(result: Result) -> dict[int, str]:
    """The repairs and early stops of a result, by the iteration they happened at."""
    notes: dict[int, list[str]] = {}
    for event in (*result.repairs, *result.early_stops):
        notes.setdefault(event.iteration, []).append(event.describe())
    return {iteration: "; ".join(texts) for iteration, texts in notes.items()}


def write_loss_log(path: Path, history: Sequence[LossRecord], notes: Mapping[int, str] = {}) -> None:
    atomic_write(path, loss_log_text(history, notes))


def write_result(
    result: Result,
    params: StyleParams,
    weights: WeightsInfo,
    image: Path,
    losses: Path | None,
    gif: Path | None,
    frames: Sequence[torch.Tensor] = (),
    extra: Mapping[str, Any] = {},
) -> None:
    """The image with its settings embedded, the loss log and, when frames were kept, the GIF."""
    if result.early_stops:
        extra = {**extra, "early_stop": [stop.describe() for stop in result.early_stops]}
    if result.repairs:
        extra = {**extra, "repairs": [repair.describe() for repair in result.repairs]}
    write_image(result.image, image, result_metadata(params, weights, result.seed, extra))
    if losses is not None:
        write_loss_log(losses, result.history, result_notes(result))
    if gif is not None and frames:
        write_gif(gif, [*frames, result.image])


def write_gif(path: Path, frames: Sequence[torch.Tensor], max_side: int = 512, frame_ms: int = 100) -> None:
    """An animated GIF of the frames, all at the last frame's size (frames of coarse scales grow)."""
    last = resize_long_side(frames[-1], min(max_side, max(frames[-1].shape[-2:])))
    shape = tuple(last.shape[-2:])
    pictures = [_pil(torch.nn.functional.interpolate(f, size=shape, mode="bilinear")) for f in frames]
    with atomic_path(path) as temp:
        pictures[0].save(
            temp, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0, optimize=True
        )


def _pil(image: torch.Tensor) -> Image.Image:
    array = (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array, "RGB")


def result_metadata(params: StyleParams, weights: WeightsInfo, seed: int, extra: Mapping[str, Any] = {}) -> dict:
    """What a result image carries about how it was made (PNG text chunks)."""
    return {
        "Software": f"nst-batch {__version__}",
        "nst-batch:params": json.dumps({**params.explicit(), "seed": seed}, sort_keys=True),
        "nst-batch:weights": weights.describe(),
        **{f"nst-batch:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()},
    }



# a job with one result names its files plainly: losses.csv, not cat.losses.csv
SINGLE_RESULT_NAMES = ("losses.csv", "progress.gif", "losses.png", "compare.jpg")


@dataclass(frozen=True)
class ResultFiles:
    """The files of one result inside its job's staging folder."""

    image: Path
    losses: Path
    gif: Path
    plot: Path
    compare: Path
    summary: Path  # hidden: read back into job.json at publication


def result_files(staging: Path, label: str, output_format: str) -> ResultFiles:
    return ResultFiles(
        image=staging / f"{label}.{output_format}",
        losses=staging / f"{label}.losses.csv",
        gif=staging / f"{label}.progress.gif",
        plot=staging / f"{label}.losses.png",
        compare=staging / f"{label}.compare.jpg",
        summary=staging / f".{label}.run.json",
    )


def versions() -> dict[str, str]:
    import torchvision

    return {
        "nst-batch": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def publish(staging: Path, outbox: Path, name: str, job_record: dict[str, Any], single_label: str | None) -> Path:
    """Write job.json into the staging folder and rename it into the outbox in one step.

    The folder is ``outbox/NAME``, or ``NAME-2``... if someone else's folder has that name.
    Safe to repeat after a crash: a folder whose job.json has this job's id is ours already.
    A job with one result gets the plain names ``losses.csv`` and ``progress.gif``.
    """
    target, done = _destination(outbox, name, job_record["id"])
    if done:
        return target
    if single_label is not None:
        for kind in SINGLE_RESULT_NAMES:
            old, new = staging / f"{single_label}.{kind}", staging / kind
            if old.exists() and not new.exists():  # a result may itself be called losses.png
                os.replace(old, new)
    summaries = sorted(staging.glob(".*.run.json"))
    # A job.json from an attempt that crashed after removing some summaries holds theirs.
    written = _job_json_results(staging) + [json.loads(path.read_text()) for path in summaries]
    job_record = {**job_record, "results": _merge_results(job_record.get("results", []), written)}
    atomic_write(staging / "job.json", json.dumps(job_record, indent=2, sort_keys=True, default=str) + "\n")
    for path in summaries:
        path.unlink()
    for path in staging.iterdir():  # a write a crash interrupted (its run was written again since)
        if is_temp_name(path.name):
            path.unlink()
    os.rename(staging, target)
    fsync_dir(outbox)
    return target


def _destination(outbox: Path, name: str, job_id: int) -> tuple[Path, bool]:
    """(where the job's folder goes, whether it is already there)."""
    n = 1
    while True:
        candidate = outbox / (name if n == 1 else f"{name}-{n}")
        if _published_by(candidate) == job_id:
            return candidate, True
        if not os.path.lexists(candidate):
            return candidate, False
        n += 1


def _merge_results(planned: list[dict], written: list[dict]) -> list[dict]:
    by_label = {r["label"]: r for r in written}  # a later one of the same label wins
    return [{**p, **by_label.get(p["label"], {})} for p in planned]


def _job_json_results(staging: Path) -> list[dict]:
    """The results of a job.json written before a crash (its run summaries are gone by then)."""
    try:
        return json.loads((staging / "job.json").read_text())["results"]
    except (OSError, ValueError, KeyError):
        return []


def _published_by(folder: Path) -> int | None:
    try:
        return json.loads((folder / "job.json").read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None
