"""How the engine runs fast on this machine: precision, memory layout, threads, cuDNN and TF32.

Each switch is on by default only where it was measured to keep the final loss within 1% of
the fp32 run on the same seed (docs/benchmarks.md): bf16 autocast passes with Adam (within
0.12%) but not with L-BFGS, whose curvature pairs amplify the rounding (8-34% apart), so `auto`
turns it on for Adam on a CPU with bf16 instructions only. On a GPU nothing is on by default
until it has been measured there.
"""

import os

import torch

from ..engine import Speed
from .config import PerformanceConfig


def choose_speed(settings: PerformanceConfig, optimizer: str, device_type: str, cpu_bf16: bool) -> Speed:
    """The Speed of one run (pure): what the config asks, with `auto` resolved as measured."""
    autocast = settings.autocast
    if autocast == "auto":
        autocast = "bf16" if device_type == "cpu" and cpu_bf16 and optimizer == "adam" else "off"
    return Speed(None if autocast == "off" else autocast, settings.channels_last, settings.compile)


def cpu_threads(configured: int | None, omp_num_threads: str | None, cores: int) -> int:
    """Threads for a CPU run (pure): the config's, else OMP_NUM_THREADS (never more than the
    usable cores), else every usable core.

    OMP_NUM_THREADS is how a machine shared with other work says how much of it is ours: on a
    busy two-core machine, threads waiting on each other made the engine several times slower."""
    if configured is not None:
        return configured
    try:
        wanted = int((omp_num_threads or "").split(",")[0])  # "4,2": nested levels; the first is ours
    except ValueError:
        return cores
    return min(wanted, cores) if wanted >= 1 else cores


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 or AMX), where autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def apply(settings: PerformanceConfig, device: torch.device) -> None:
    """Process-wide settings, once at start-up."""
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(cpu_threads(settings.threads, os.environ.get("OMP_NUM_THREADS"), cores))
    else:
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
