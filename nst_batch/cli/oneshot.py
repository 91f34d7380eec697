"""`nst-batch run`: one content image, one or more styles, one result, in the foreground."""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from tqdm import tqdm

from ..daemon.capacity import probed_model
from ..daemon.measure import free_bytes
from ..daemon.memory import fit_run
from ..engine import Network, Progress, Result, StyleParams, resolve_device, stylize
from ..results.reel import FrameReel
from ..results.result import gif_frame_every, write_result
from ..settings import tuning
from ..settings.config import ModelConfig, PerformanceConfig, SchedulerConfig
from ..util.errors import InputError
from ..util.imagefile import WRITE_SUFFIXES, read_image


@dataclass(frozen=True)
class OneShot:
    content: Path
    styles: tuple[Path, ...]
    output: Path
    params: StyleParams
    device: str = "auto"
    model: ModelConfig = ModelConfig()
    gif: Path | None = None
    loss_log: bool = True
    max_pixels: int = 50_000_000
    performance: PerformanceConfig = PerformanceConfig()
    auto_tile: bool = False  # --tile auto: the largest tile that fits the scheduler's budget, if the image does not
    scheduler: SchedulerConfig = SchedulerConfig()  # its budget, as the daemon's

    @property
    def loss_log_path(self) -> Path:
        return self.output.with_suffix(".losses.csv")


def check_outputs(job: OneShot) -> None:
    """Refuse an unwritable output before spending minutes on the optimization."""
    if job.output.suffix.lower() not in WRITE_SUFFIXES:
        raise InputError(f"--output {job.output}: unsupported format; end the name in {', '.join(WRITE_SUFFIXES)}")
    if job.gif is not None and job.gif.suffix.lower() != ".gif":
        raise InputError(f"--gif {job.gif}: the name must end in .gif")
    for path in (job.output, job.gif):
        if path is not None and not path.parent.is_dir():
            raise InputError(f"{path.parent} does not exist: create it or choose another output folder")


def run_once(job: OneShot, show_progress: bool | None = None) -> Result:
    check_outputs(job)
    job.params.blend_weights(len(job.styles))
    content = read_image(job.content, job.max_pixels)
    styles = [read_image(path, job.max_pixels) for path in job.styles]
    name = job.params.init_image_name
    init = None if name is None else read_image(Path(name), job.max_pixels)
    params = job.params
    if params.weights_hint():
        logger.warning(params.weights_hint())
    if job.gif is not None:
        params = params.with_overrides({"frame_every": gif_frame_every(params)})
    device = resolve_device(job.device)
    tuning.apply(job.performance, device)
    speed = tuning.choose_speed(job.performance, params.optimizer, device.type, tuning.cpu_has_bf16())
    network, weights = job.model.load(params.backbone, device)
    if job.auto_tile:
        params = _fit_tile(job, params, network, device, content, len(styles))
    logger.info(f"stylizing {job.content.name} with {', '.join(p.name for p in job.styles)} on {device}")

    reel = FrameReel()  # bounded, however many frames come
    show = sys.stderr.isatty() if show_progress is None else show_progress
    total = params.total_iterations
    with tqdm(total=total, disable=not show, unit="it", dynamic_ncols=True, file=sys.stderr) as bar:

        def on_progress(progress: Progress) -> None:
            if progress.frame is not None:
                reel.offer(progress.frame)
            bar.n = progress.iteration
            bar.set_postfix(loss=f"{progress.losses.total:.4g}", scale=f"{progress.scale + 1}/{progress.scales}")

        result = stylize(network, content, styles, params, init_image=init, callback=on_progress, speed=speed)

    losses = job.loss_log_path if job.loss_log else None
    extra = {"content": job.content.name, "styles": [p.name for p in job.styles], "precision": speed.autocast or "fp32"}
    write_result(result, params, weights, job.output, losses, job.gif, reel.frames, extra)
    for repair in result.repairs:
        logger.warning(repair.describe())
    for stop in result.early_stops:
        logger.info(stop.describe())
    final = result.history[-1]
    logger.info(f"wrote {job.output} after {final.iteration} iterations in {final.elapsed_s:.1f} s (loss {final.total:.4g})")
    return result


def _fit_tile(
    job: OneShot, params: StyleParams, network: Network, device: torch.device, content: torch.Tensor, n_styles: int
) -> StyleParams:
    """``--tile auto``: the daemon's memory model, fitted to two short probe runs on this device,
    picks the largest tile that fits the budget; an image that fits whole is not tiled."""
    budget = job.scheduler.budget(free_bytes(device))
    model = probed_model(network, device, params.backbone)
    size = (content.shape[-1], content.shape[-2])
    fit = fit_run(params.with_overrides({"tile": None}), size, n_styles, model, budget, "tile")
    if fit.params is None:
        raise InputError(f"--tile auto: {fit.refusal.replace('scheduler.memory_budget', '--memory-budget')}")
    logger.info(fit.warning or f"--tile auto: fits the memory budget of {budget / 2**30:.2f} GiB whole, not tiled")
    return fit.params
