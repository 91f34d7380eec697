"""What gets written for one result: the image with its settings embedded, the loss log, the
progress GIF, its pictures (loss curves; content | style | result) and, hidden until its job is
published, its run summary. Every file is written atomically, so nobody ever sees half of one."""

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from loguru import logger
from PIL import Image

from .. import __version__
from ..engine import LossRecord, Result, StyleParams, WeightsInfo
from ..engine.images import FRAME_LONG_SIDE, fit_long_side, resize
from ..util.atomicio import atomic_path, atomic_write
from ..util.errors import disk_full
from ..util.imagefile import write_image
from .plots import write_compare, write_loss_plot
from .report import FinalLosses, RunSummary, write_summary

# ``note``: what happened at that iteration besides a step (a repair, an early stop); mostly empty.
LOSS_COLUMNS = ("iteration", "content", "style", "tv", "total", "elapsed_s", "note")
GIF_FRAMES = 50  # about this many frames in a progress GIF, whatever the iteration count


def gif_frame_every(params: StyleParams) -> int:
    """The frame interval of a progress GIF when the user asked for one without choosing it."""
    return params.frame_every or max(1, params.total_iterations // GIF_FRAMES)


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


def write_gif(
    path: Path, frames: Sequence[torch.Tensor], max_side: int = FRAME_LONG_SIDE, frame_ms: int = 100
) -> None:
    """An animated GIF of the frames, all at the last frame's size (frames of coarse scales grow).
    A frame is an image in [0, 1], or 8-bit (as checkpoints keep them); each is made a float
    only while it becomes a picture, so a full reel never is one all at once (4 times its bytes)."""
    shape = fit_long_side(*frames[-1].shape[-2:], min(max_side, max(frames[-1].shape[-2:])))
    pictures = [_pil(resize(_unit(f), shape)) for f in frames]  # antialiased: the result may be 4096 px
    with atomic_path(path) as temp:
        pictures[0].save(
            temp, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0, optimize=True
        )


def _unit(frame: torch.Tensor) -> torch.Tensor:
    return frame.float() / 255 if frame.dtype == torch.uint8 else frame


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


@dataclass(frozen=True)
class FinishedRun:
    """A run's result and everything its files say about it: what it was made of, and how
    (stage: done, being written to its job's staging folder)."""

    job: str  # the job's label, which its log lines carry
    label: str
    content: str  # the input names, as the job knows them
    styles: tuple[str, ...]
    varying: Mapping[str, Any]  # the sweep values it is named by
    params: StyleParams
    weights: WeightsInfo
    precision: str  # fp32 | bf16 | fp16
    result: Result
    content_image: torch.Tensor
    style_images: Sequence[torch.Tensor]
    frames: Sequence[torch.Tensor] = ()  # the progress GIF's, without the result; 8-bit or in [0, 1]


def write_run(staging: Path, output_format: str, run: FinishedRun) -> ResultFiles:
    """All the files of a finished run, in its job's staging folder. A picture that cannot be
    drawn is logged and left out; a write that fails (a full disk) raises."""
    files = result_files(staging, run.label, output_format)
    files.image.parent.mkdir(parents=True, exist_ok=True)
    extra = {"job": run.job, "content": run.content, "styles": list(run.styles), "varying": dict(run.varying)}
    write_result(run.result, run.params, run.weights, files.image, files.losses, files.gif, run.frames, extra)
    _draw(run, files)
    write_summary(files.summary, run_summary(run))
    return files


def run_summary(run: FinishedRun) -> RunSummary:
    result, final = run.result, run.result.history[-1]
    return RunSummary(
        label=run.label,
        seed=result.seed,
        iterations=final.iteration,
        seconds=round(final.elapsed_s, 3),
        final_losses=FinalLosses(**vars(final)),
        scale_starts=tuple(result.scale_starts),
        early_stop=tuple(s.describe() for s in result.early_stops) or None,
        repairs=tuple(r.describe() for r in result.repairs) or None,
        weights=run.weights.describe(),
        pretrained_weights=run.weights.pretrained,
        precision=run.precision,
    )


def _draw(run: FinishedRun, files: ResultFiles) -> None:
    """The pictures of a result: its loss curves and content | style | result."""
    result = run.result
    names = [PurePosixPath(run.content).name, *(PurePosixPath(s).name for s in run.styles), "result"]
    try:
        write_loss_plot(files.plot, result.history, result.scale_starts, result.early_stops, title=run.label)
        write_compare(files.compare, run.content_image, run.style_images, result.image, captions=names)
    except Exception as error:  # a picture that cannot be drawn must not cost the result
        if disk_full(error):
            raise  # the same retry as every other write
        logger.bind(job=run.job).opt(exception=error).error(f"{run.label}: could not draw losses.png or compare.jpg")
