"""The ray executor's actors: one long-lived actor per device, each running today's ``Runner`` for
the runs the daemon places on it (``placement``, through ``ray_workers.RayWorkers``). The daemon
stays the only coordinator; an actor owns nothing durable but its node's checkpoints.

An actor says where it is (its node, the GPU Ray gave it, its ``CUDA_VISIBLE_DEVICES``), loads the
network once, measures its device's budget, and runs what it is given: the runs' records and their
inputs as bytes (``shipping``, checked and written node-local), with results, loss histories and
log lines coming back as the call's value. Progress and stop requests travel by ``report``, which
the daemon calls about every second for each piece of work. Checkpoints stay in the node's own
folder (``state_dir/nodes/NODE``), so a run resumes only on its node; inputs are kept, while a
run needs them, in the actor's own folder there.

- **Ray never retries.** Actors are created with ``max_restarts=0`` and ``max_task_retries=0``: the
  job database owns attempts, so Ray never re-runs anything the database does not know of. A dead
  actor is the daemon's to replace, and its run the daemon's to queue again.
- **Nothing leaves the machine or the cluster.** ``RAY_USAGE_STATS_ENABLED=0`` is set before Ray
  starts or is joined; a Ray the daemon starts itself listens on 127.0.0.1 only (see
  ``LOOPBACK_ENVIRONMENT``) and has no dashboard.
- **Token authentication is on** (``RAY_AUTH_MODE=token``), its token a file of the state directory.
- Ray is imported only when used: without the ``ray`` extra the daemon never imports it.
"""

import importlib.util
import os
import pickle
import re
import secrets
import shutil
import signal
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..util.errors import ConfigError
from .shipping import Parcel, job_folder, unpack

if TYPE_CHECKING:  # an actor's process imports this module: it stays light (no torch, no pydantic)
    from ..settings.config import Config, RayConfig
    from .runner import Outcome, Runner
    from .store import JobRecord, RunRecord

# Set in the environment before Ray starts or is joined, so that its workers inherit it too.
RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0"}
# A Ray of the daemon's own stays on 127.0.0.1. ray.init swaps a loopback ``_node_ip_address`` for
# this machine's outward address, and its servers then listen on every interface (measured with
# 2.60), unless Ray is told this is no multi-machine cluster: then it keeps 127.0.0.1.
LOOPBACK_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# The job database decides retries: Ray restarts no actor and re-runs no call.
NO_RETRIES = {"max_restarts": 0, "max_task_retries": 0}
# Calls an actor serves at once: its runs in the default group (at most the scheduler's
# max_concurrent, 64), and apart from them, so that no number of runs can keep them waiting, the
# daemon's reports (progress, stop, cancel: ``CONTROL``) and the lifeline (``LIFELINE``).
RUNS_AT_ONCE = 64
CONTROL, LIFELINE = "control", "lifeline"
CONCURRENCY_GROUPS = {CONTROL: 2, LIFELINE: 1}
LOOPBACK = "127.0.0.1"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
TOKEN_NAME = "ray-auth-token"  # in state_dir: Ray's token (a cluster's is copied there from its head)


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_NAME


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def require_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    if not ray_installed():
        raise ConfigError("executor: ray needs the ray extra: pip install 'nst-batch[ray]'")
    import ray

    return ray


def quiet_environment() -> None:
    """Ray's usage statistics off, in this process and every process it starts."""
    os.environ.update(RAY_ENVIRONMENT)


def auth_environment(token_path: Path, create: bool) -> dict[str, str]:
    """Ray's token authentication, on (``RAY_AUTH_MODE=token``; Ray's default is off), with the
    token in ``token_path``, readable by the daemon's user only. A Ray of the daemon's own
    (``create``): a random 256-bit token made once and kept, so a restart speaks to the same Ray. A
    cluster: its token must be there already, copied from the head; nothing is made up."""
    try:
        mode = os.lstat(token_path).st_mode
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                f"joining a Ray cluster needs the cluster's token in {token_path} (mode 600): copy the head's there"
            ) from None
        _create_token(token_path)
        mode = os.lstat(token_path).st_mode
    if not stat.S_ISREG(mode):
        raise ConfigError(f"Ray's token {token_path} is not a regular file; refused")
    if mode & 0o077:
        raise ConfigError(f"Ray's token {token_path} may be read by others (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def _create_token(token_path: Path) -> None:
    """A new token, never seen half written nor by anyone else: a private temporary file, linked in."""
    token_path.parent.mkdir(parents=True, exist_ok=True)
    temp = token_path.with_name(f".{token_path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp, token_path)
        except FileExistsError:
            pass  # another start made it first: that one is kept
    finally:
        temp.unlink(missing_ok=True)


def init_options(settings: "RayConfig", node_ip_address: str | None = None, **resources: Any) -> dict[str, Any]:
    """``ray.init``'s arguments for ``settings`` (pure). A Ray of this machine's own (no address)
    binds to 127.0.0.1, with ``resources`` (``num_cpus``, ``num_gpus``: tests declare fake GPUs) and
    the configured object store. Joining a cluster, this process listens on ``node_ip_address``
    (None: the address Ray finds for this machine; tests join a loopback cluster on 127.0.0.1);
    the cluster's nodes were given their resources at ``ray start``."""
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if settings.address is None:
        # "local": always a new Ray of its own; address=None would join whatever Ray this machine runs.
        options.update(address="local", _node_ip_address=LOOPBACK)
        if settings.object_store_memory is not None:
            options["object_store_memory"] = int(settings.object_store_memory)
        options.update({key: value for key, value in resources.items() if value is not None})
        return options
    if resources:
        raise ValueError("a cluster's resources are its nodes' own, given at `ray start`")
    options["address"] = settings.address
    if node_ip_address is not None:
        options["_node_ip_address"] = node_ip_address
    return options


def connect(settings: "RayConfig", token_path: Path, node_ip_address: str | None = None, **resources: Any) -> Any:
    """Start (no address) or join Ray on the daemon's terms: no usage statistics, token
    authentication with the token in ``token_path`` (``state_dir``'s); the ``ray`` module."""
    # Before Ray is imported: it reads its settings from the environment then, once.
    quiet_environment()
    os.environ.update(auth_environment(token_path, create=settings.address is None))
    if settings.address is None:
        os.environ.update(LOOPBACK_ENVIRONMENT)
    ray = require_ray()
    # ray.init puts its own SIGTERM handler in (it exits at once): the daemon's, which checkpoints
    # first, stays.
    kept = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} if _main_thread() else {}
    try:
        ray.init(**init_options(settings, node_ip_address, **resources))
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, handler)
    return ray


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# Given to ray.remote (concurrency groups cannot be given in .options()).
ACTOR_CLASS = {"max_concurrency": RUNS_AT_ONCE, "concurrency_groups": CONCURRENCY_GROUPS}


def actor_options(kind: str) -> dict[str, Any]:
    """What one device's actor asks Ray for (pure): a whole GPU (``cuda``), or one CPU (``cpu``)."""
    if kind == "cuda":
        return {**NO_RETRIES, "num_gpus": 1, "num_cpus": 0}
    if kind == "cpu":
        return {**NO_RETRIES, "num_cpus": 1}
    raise ValueError(f"an actor runs on cuda or cpu, not {kind!r}")


@dataclass(frozen=True)
class Where:
    """Where an actor runs: its node, the GPUs Ray gave it, what CUDA sees there."""

    node: str  # Ray's node id
    node_name: str  # the node's name (``ray start --node-name``; by default its address): kept across restarts
    gpu_ids: tuple[str, ...]  # as Ray numbers them on that node; () for a CPU actor
    cuda_visible_devices: str | None
    pid: int
    slot: int = 0  # the actor's number in the daemon's pool

    @property
    def device(self) -> str:
        """The device's name for ``placement``: its GPU on that node, or the CPU actor's number."""
        return f"gpu:{','.join(self.gpu_ids)}" if self.gpu_ids else f"cpu:{self.slot}"


@dataclass(frozen=True)
class Ready:
    """An actor with its network loaded (stage: placement may put work on it)."""

    where: Where
    device_key: str  # the kind of device, as the memory model's samples name it ("cuda:NVIDIA H200", "cpu")
    budget: int  # the memory runs may use on it, measured with the network in


@dataclass(frozen=True)
class Report:
    """What an actor has to tell of one piece of work since it last told: progress and log lines;
    at its end, also its outcomes and its peak (stage: on its way back to the daemon)."""

    progress: dict[int, tuple[int, int, float]] = field(default_factory=dict)  # run id -> iteration, total, loss
    lines: tuple[tuple[str, str, str], ...] = ()  # (level, job label, message), in order
    outcomes: tuple["Outcome", ...] = ()
    peak_bytes: int = 0
    found: bool = True  # False: the work was not (or no longer) on the actor when asked


class _Work:
    """One piece of work on an actor: its stop flag, its latest progress, its log lines not yet told."""

    def __init__(self, halt: Any):
        self.halt = halt
        self.progress: dict[int, tuple[int, int, float]] = {}
        self.lines: list[tuple[str, str, str]] = []

    def drain(self) -> Report:
        lines, self.lines = self.lines, []
        progress, self.progress = self.progress, {}
        return Report(progress, tuple(lines))


class DeviceActor:
    """One device's actor (made remote by ``start_actors``). ``config`` travels pickled, and is read
    only by ``start``: an actor that only says where it is starts without torch."""

    def __init__(self, local_root: str, config: bytes | None = None, slot: int = 0, runner_type: Any = None):
        self.root = Path(local_root)
        self._config, self.slot, self._runner_type = config, slot, runner_type
        self.runner: Runner | None = None
        self._inputs = self.root
        self._works: dict[int, _Work] = {}
        self._threads: dict[int, int] = {}  # thread -> work key: whose log lines a record is
        self._jobs: dict[int, int] = {}  # job id -> works using its node-local inputs
        self._lock = threading.Lock()

    def where(self) -> Where:
        import ray

        context = ray.get_runtime_context()
        node = context.get_node_id()
        names = [n.get("NodeName") for n in ray.nodes() if n.get("NodeID") == node]
        gpu_ids = tuple(str(gpu) for gpu in context.get_accelerator_ids().get("GPU", []))
        return Where(node, names[0] if names and names[0] else node, gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"),
                     os.getpid(), self.slot)

    def start(self) -> Ready:
        """Load the network on this actor's device and measure what is free then."""
        from loguru import logger

        from ..settings import tuning
        from .capacity import Capacity
        from .folders import Folders
        from .measure import device_key
        from .runner import Runner
        from .shipping import local_input_path

        where = self.where()
        config: Config = pickle.loads(self._config)
        node_root = self.root / node_folder(where.node_name)
        config = config.model_copy(update={"state_dir": node_root})
        folders = Folders(config)
        folders.checkpoints.mkdir(parents=True, exist_ok=True)
        # The actor's own: another actor of the node may be done with the same job's inputs meanwhile.
        self._inputs = node_root / "inputs" / f"pid-{os.getpid()}"
        sweep_inputs(self._inputs.parent)
        self.runner = (self._runner_type or Runner)(config, folders, local_input_path(self._inputs))
        tuning.apply(config.performance, self.runner.device)
        self.runner.network(config.defaults.backbone)
        capacity = Capacity(config, self.runner.device)
        capacity.measure_budget()
        logger.add(self._collect, level="INFO", format="{message}", filter=lambda r: "job" in r["extra"])
        return Ready(where, device_key(self.runner.device), capacity.budget)

    def probe(self, backbone: str) -> list:
        """The memory model's probe runs on this device (``measure.probe``): its samples."""
        from ..engine import StyleParams
        from .measure import probe

        network, _ = self.runner.network(backbone)
        return probe(network, self.runner.device, StyleParams(backbone=backbone))

    def run(
        self, key: int, runs: Sequence[tuple["JobRecord", "RunRecord"]], parcels: Sequence[Parcel], measure: bool
    ) -> Report:
        """Run one piece of work (one run, or a batch); its outcomes, peak and last lines. A run
        that ends for good forgets its checkpoint; one that stopped or will be retried keeps it."""
        from loguru import logger

        from .halt import Halt
        from .measure import PeakMeter
        from .runner import Ending, failure_outcome

        work = _Work(Halt(threading.Event()))  # stopped by the daemon's report, work by work
        with self._lock:
            self._works[key] = work
            self._threads[threading.get_ident()] = key
            for parcel in parcels:
                self._jobs[parcel.job_id] = self._jobs.get(parcel.job_id, 0) + 1
        peak = 0
        try:
            for parcel in parcels:
                unpack(parcel, self._inputs)
            with PeakMeter(self.runner.device, enabled=measure) as meter:
                outcomes = self.runner.run_batch(runs, work.halt, _Progress(work))
            peak = meter.peak_bytes
        except Exception as error:
            outcomes = [failure_outcome(error, "on its actor: ")] * len(runs)
            for (job, run), outcome in zip(runs, outcomes, strict=True):
                logger.bind(job=job.label).warning(f"{run.label}: {outcome.error}")
        finally:
            with self._lock:
                del self._works[key], self._threads[threading.get_ident()]
                for parcel in parcels:
                    self._jobs[parcel.job_id] -= 1
                    if not self._jobs[parcel.job_id]:
                        del self._jobs[parcel.job_id]
                        shutil.rmtree(job_folder(self._inputs, parcel.job_id), ignore_errors=True)
            sweep_inputs(self._inputs.parent)
        kept = (Ending.STOPPED, Ending.OUT_OF_MEMORY, Ending.RETRY, Ending.NO_SPACE)
        for (_, run), outcome in zip(runs, outcomes, strict=True):
            if outcome.ending not in kept:
                self.runner.folders.checkpoint(run.id).unlink(missing_ok=True)
        last = work.drain()
        return Report(last.progress, last.lines, tuple(outcomes), peak)

    def report(self, key: int, stop: bool = False, cancelled: Sequence[int] = ()) -> Report:
        """What ``key`` did since the last report; ``stop``: checkpoint and return (the daemon
        stops, or pauses with --now); ``cancelled``: its runs to stop without a checkpoint."""
        with self._lock:
            work = self._works.get(key)
        if work is None:  # not begun yet, or ended: its ``run`` call answers
            return Report(found=False)
        for run_id in cancelled:  # first: a run that sees the pause before its cancel would keep a checkpoint
            work.halt.cancel(run_id)
        if stop:
            work.halt.pause()  # checkpoint and return, to resume later
        with self._lock:
            return work.drain()

    def forget(self, run_ids: Sequence[int]) -> None:
        """Remove these runs' checkpoints from the node (their jobs have ended)."""
        if self.runner is None:  # not started: it knows no checkpoint folder yet
            return
        for run_id in run_ids:
            self.runner.folders.checkpoint(run_id).unlink(missing_ok=True)

    def lifeline(self) -> bool:
        """Never returns while the actor lives: a call that fails says the actor died."""
        threading.Event().wait()
        return True

    def _collect(self, message: Any) -> None:
        """A loguru sink: a job's log line, kept for the work whose thread wrote it."""
        record = message.record
        with self._lock:
            work = self._works.get(self._threads.get(record["thread"].id, -1))
            if work is not None:
                work.lines.append((record["level"].name, record["extra"]["job"], record["message"]))


class _Progress:
    """``Runner``'s progress sink on an actor: the latest of each run, for the next report."""

    def __init__(self, work: _Work):
        self.work = work

    def progress(self, run_id: int, iteration: int, total_iterations: int, loss: float) -> None:
        self.work.progress[run_id] = (iteration, total_iterations, loss)


def sweep_inputs(folder: Path, alive: Any = None) -> None:
    """Remove the inputs of this node's actors that died (``pid-N`` folders of processes gone)."""
    alive = alive or _alive
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        pid = entry.name.removeprefix("pid-")
        if entry.name.startswith("pid-") and pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_folder(node_name: str) -> str:
    """A node's folder under the actors' root (pure): its name, with only letters, digits, - and _."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", node_name) or "_"


def start_actors(
    ray: Any, count: int, kind: str, local_root: Path, config: "Config | None" = None, runner_type: Any = None,
    first_slot: int = 0,
) -> list[Any]:
    """``count`` actors of ``kind`` (``cuda`` or ``cpu``); each starts once Ray has a device for it.
    With a ``config`` they can ``start`` and run (``runner_type``: tests inject faults)."""
    remote = ray.remote(**ACTOR_CLASS)(DeviceActor)
    blob = pickle.dumps(config) if config is not None else None
    return [
        remote.options(**actor_options(kind)).remote(str(local_root), blob, first_slot + i, runner_type)
        for i in range(count)
    ]
