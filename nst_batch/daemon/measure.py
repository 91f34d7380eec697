"""Measuring memory on the real device: a run's peak (``PeakMeter``), what is free now, and the
start-up probes the memory model is fitted to (``memory.fit_model``)."""

import ctypes
import re
from dataclasses import dataclass, field

import torch

from ..engine import Network, StyleParams, stylize
from .memory import Need, Sample, run_need

PROBE_SIZES = {"cuda": (256, 512), "cpu": (64, 128)}
PROBE_ITERATIONS = 5


def device_key(device: torch.device) -> str:
    """Names the kind of device samples were measured on ("cpu", "cuda:NVIDIA H200")."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


@dataclass
class PeakMeter:
    """Peak memory of what runs inside ``with``, above what was in use when it began.

    On a GPU: the caching allocator's peak counter, which it keeps on the host as it allocates,
    so nothing waits for the device. On the CPU: the process's peak resident memory, reset
    through /proc/self/clear_refs after handing freed memory back to the OS (so a run that reuses
    what an earlier one freed is still counted). Both counters are the whole device's: work that
    starts beside other work is not measured (``enabled=False``), and a peak is learned from only
    when nothing ran beside it all along (``Work.shared``).
    """

    device: torch.device
    enabled: bool = True
    peak_bytes: int = 0
    _base: int = field(default=0, repr=False)

    def __enter__(self) -> "PeakMeter":
        if not self.enabled:
            return self
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _trim_heap()
            _reset_peak_rss()
            self._base = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else _proc_status("VmHWM")
        self.peak_bytes = max(0, peak - self._base)


def free_bytes(device: torch.device) -> int:
    """Memory the device could still give: free GPU memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return _meminfo("MemAvailable")


def probe(network: Network, device: torch.device, backbone_params: StyleParams) -> list[Sample]:
    """Short runs at two sizes, measured: the samples the device's memory model starts from."""
    sizes = PROBE_SIZES["cuda" if device.type == "cuda" else "cpu"]
    _probe_run(network, device, backbone_params, sizes[0], iterations=2)  # first calls pay one-time setup
    return [_probe_run(network, device, backbone_params, size, PROBE_ITERATIONS) for size in sizes]


def _probe_run(network: Network, device: torch.device, base: StyleParams, size: int, iterations: int) -> Sample:
    params = base.with_overrides(
        {"image_size": size, "iterations": iterations, "early_stop_tol": 0, "scales": 1,
         "lbfgs_history": iterations, "frame_every": 0, "init": "content", "seed": 0}
    )
    generator = torch.Generator().manual_seed(size)
    content, style = torch.rand((2, 1, 3, size, size), generator=generator)
    with PeakMeter(device) as meter:
        history = stylize(network, content, [style], params).history
    # the first iteration also computes the targets: time the others
    seconds = (history[-1].elapsed_s - history[0].elapsed_s) / max(1, len(history) - 1)
    return Sample(run_need(params, (size, size), 1), meter.peak_bytes, seconds)


def measured_need(params: StyleParams, content_size: tuple[int, int], n_styles: int, iterations_done: int) -> Need:
    """The need of a finished run as it really was: its L-BFGS history holds at most the
    iterations of its last scale."""
    if params.optimizer == "lbfgs":
        params = params.with_overrides({"lbfgs_history": max(1, min(params.lbfgs_history, iterations_done))})
    return run_need(params, content_size, n_styles)


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is only less tight
        pass


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass


def _proc_status(field_name: str) -> int:
    with open("/proc/self/status") as file:
        return int(re.search(rf"{field_name}:\s+(\d+) kB", file.read()).group(1)) * 1024


def _meminfo(field_name: str) -> int:
    with open("/proc/meminfo") as file:
        return int(re.search(rf"{field_name}:\s+(\d+) kB", file.read()).group(1)) * 1024
