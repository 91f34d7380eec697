"""`nst-batch estimate`: the predicted peak memory and time of one job, or of the whole queue,
from the memory model fitted to this device (the daemon's probes and measured runs)."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine import StyleParams, resolve_device
from ..settings.config import Config
from ..util.imagefile import image_size
from ..util.text import format_duration
from .measure import device_key, free_bytes
from .memory import MemoryModel, fit_model, run_need, run_seconds
from .store import Store


@dataclass(frozen=True)
class Estimate:
    peak_bytes: int
    seconds: float
    device: str
    budget_bytes: int
    fits: bool
    calibrated: bool  # False: no measurement of this device yet, the figures are a generic guess
    runs: int = 1
    width: int = 0
    height: int = 0


def _model(config: Config, device_name: str, backbone: str) -> tuple[MemoryModel, bool]:
    if not (config.state_dir / "jobs.sqlite3").exists():
        return MemoryModel(), False
    store = Store(config.state_dir)
    try:
        samples = store.samples(device_name, backbone)
    finally:
        store.close()
    return fit_model(samples), bool(samples)


def one_job(config: Config, params: StyleParams, content: Path, styles: list[Path]) -> Estimate:
    device = resolve_device(config.device)
    width, height = image_size(content, config.max_pixels)
    for style in styles:
        image_size(style, config.max_pixels)
    model, calibrated = _model(config, device_key(device), params.backbone)
    need = run_need(params, (width, height), len(styles))
    peak, budget = model.peak(need), config.scheduler.budget(free_bytes(device))
    seconds = run_seconds(params, (width, height), len(styles), model)
    return Estimate(peak, seconds, str(device), budget, peak <= budget, calibrated, 1, need.width, need.height)


def queue(config: Config) -> Estimate:
    device = resolve_device(config.device)
    key = device_key(device)
    store_path = config.state_dir / "jobs.sqlite3"
    runs = []
    if store_path.exists():
        store = Store(config.state_dir)
        try:
            runs = store.queued_runs()
        finally:
            store.close()
    peak = seconds = 0.0
    calibrated = True
    for run in runs:
        params = run.params
        model, known = _model(config, key, params.backbone)
        calibrated &= known
        peak = max(peak, model.peak(run_need(params, run.content_size, len(run.styles))))
        seconds += run_seconds(params, run.content_size, len(run.styles), model)
    budget = config.scheduler.budget(free_bytes(device))
    return Estimate(int(peak), seconds, str(device), budget, peak <= budget, calibrated, len(runs))


def render(estimate: Estimate, what: str) -> str:
    guess = "" if estimate.calibrated else " (a guess: this device is not calibrated yet; run `nst-batch serve` once)"
    if what == "queue":
        return (
            f"{estimate.runs} run(s) queued, about {format_duration(estimate.seconds)} on {estimate.device} one at a "
            f"time; the largest needs {estimate.peak_bytes / 2**30:.2f} GiB of {estimate.budget_bytes / 2**30:.2f} GiB{guess}"
        )
    verdict = "fits" if estimate.fits else "does NOT fit (see scheduler.too_big)"
    return (
        f"{estimate.width} x {estimate.height} px: peak about {estimate.peak_bytes / 2**30:.2f} GiB, which {verdict} "
        f"the budget of {estimate.budget_bytes / 2**30:.2f} GiB; about {format_duration(estimate.seconds)} on "
        f"{estimate.device}{guess}"
    )


def as_json(estimate: Estimate) -> str:
    return json.dumps(asdict(estimate), indent=2, sort_keys=True)
