"""What the device can hold: its memory budget, the memory model fitted to it, what each queued
run needs, and what to do with a run that cannot fit even alone.

The model is fitted (``memory.fit_model``) from the samples in the job database: the probes measured
at start-up and every run that ran alone since, on this kind of device and backbone.
"""

import torch
from loguru import logger

from ..engine import Network, StyleParams
from ..settings.config import Config
from .measure import device_key, free_bytes, measured_need, probe
from .memory import MemoryModel, RunFit, Sample, fit_model, fit_run, run_need
from .store import RunRecord, Store

GPU_CONCURRENCY = 4
# On a CPU a batch gains little (docs/benchmarks.md); on a GPU a 512 px run leaves most of the
# card idle, and a batch fills it.
BATCH = {"cuda": 8, "cpu": 1}
# Predictions are padded by this fraction. On a CPU, glibc's heap makes identical runs peak 4-13%
# apart and the probes' small sizes overshoot large ones (docs/benchmarks.md): a wider margin.
MARGIN = {"cuda": 0.10, "cpu": 0.25}


def probed_model(network: Network, device: torch.device, backbone: str) -> MemoryModel:
    """The model fitted to fresh probe runs alone, without a job database (``nst-batch run --tile auto``)."""
    return fit_model(probe(network, device, StyleParams(backbone=backbone)), MemoryModel(margin=MARGIN[device.type]))


class Capacity:
    def __init__(self, config: Config, device: torch.device, key: str | None = None):
        self.config = config
        self.device = device  # under the ray executor, the kind of its actors' devices
        self.device_key = device_key(device) if key is None else key
        self.budget = 0  # nothing fits until measure_budget(), once the network is loaded
        self.max_concurrent = config.scheduler.max_concurrent or (GPU_CONCURRENCY if device.type == "cuda" else 1)
        self.max_batch = config.scheduler.max_batch or BATCH.get(device.type, 1)
        self._models: dict[str, MemoryModel] = {}

    def measure_budget(self) -> None:
        """Set ``budget``, the memory runs may use, from what the device has free now (and, on a GPU, a hard cap
        when the config sets a budget)."""
        settings = self.config.scheduler
        if settings.memory_budget is not None and self.device.type == "cuda":  # a real cap, not only an assumption
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, settings.memory_budget / total), self.device)
        self.budget = settings.budget(free_bytes(self.device))

    def use_devices(self, key: str, budgets: list[int]) -> None:
        """Under the ray executor: the kind of device its actors run on (what the memory model's
        samples are of), and their budgets; a run must fit the largest of them alone."""
        if key != self.device_key:
            self.device_key = key
            self._models.clear()
        self.budget = max(budgets, default=0)

    def calibrate(self, store: Store, network: Network, backbone: str) -> None:
        """Short probe runs on this device, kept as samples the model is fitted to."""
        self.keep_probes(store, backbone, probe(network, self.device, StyleParams(backbone=backbone)))

    def keep_probes(self, store: Store, backbone: str, samples: list[Sample]) -> None:
        """Probe runs' samples (measured here, or by an actor on a device of this kind), kept."""
        for sample in samples:
            store.add_sample(self.device_key, backbone, sample, "probe")
        self._models.pop(backbone, None)
        model = self.model(store, backbone)
        logger.info(
            f"memory model for {backbone} on {self.device_key}: {model.constant_bytes / 2**20:.0f} MiB + "
            f"{model.per_activation:.2f} x activations; budget {self.budget / 2**30:.2f} GiB, "
            f"{self.max_concurrent} run(s) at once"
        )

    def model(self, store: Store, backbone: str) -> MemoryModel:
        if backbone not in self._models:
            prior = MemoryModel(margin=MARGIN[self.device.type])
            self._models[backbone] = fit_model(store.samples(self.device_key, backbone), prior)
        return self._models[backbone]

    def need(self, store: Store, run: RunRecord) -> int:
        params = run.params
        return self.model(store, params.backbone).peak(run_need(params, run.content_size, len(run.styles)))

    def shared_bytes(self, store: Store, run: RunRecord) -> int:
        """The part of the run's need that a batch pays once: the model's constant."""
        return self.model(store, run.params.backbone).shared_bytes()

    def fit_alone(self, store: Store, run: RunRecord) -> RunFit:
        """The run as it is if it fits the budget alone, else changed by the too_big policy, or refused."""
        params = run.params
        model = self.model(store, params.backbone)
        return fit_run(params, run.content_size, len(run.styles), model, self.budget, self.config.scheduler.too_big)

    def learn(
        self, store: Store, run: RunRecord, peak_bytes: int, iterations: int, last_scale: int, seconds: float, fp32: bool
    ) -> None:
        """Keep what a run measured alone, so later predictions account for it.

        Only fp32 runs teach the model: it predicts fp32 needs, and a bf16 run's smaller peak would
        pull it below what an fp32 run of the same shape needs.
        """
        if not fp32:
            return
        params = run.params
        need = measured_need(params, run.content_size, len(run.styles), max(1, last_scale))
        store.add_sample(self.device_key, params.backbone, Sample(need, peak_bytes, seconds / max(1, iterations)), "run")
        self._models.pop(params.backbone, None)
