"""The ray executor's actors (issue 17), a skeleton: one long-lived actor per device, which will
run today's ``Runner`` for the runs the daemon places on it (``placement``). The daemon stays the
only coordinator; an actor owns nothing durable.

What is here: joining or starting Ray on the daemon's terms, and an actor that says where it is
(its node, the GPUs Ray gave it, its ``CUDA_VISIBLE_DEVICES``) and takes a run's inputs as bytes
(``shipping``), checked and written node-local. What is not here yet: running the runs, progress,
stopping, and the ``Workers`` interface around the actors (see the README's scale-out section).

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
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..util.errors import ConfigError
from .shipping import Parcel, unpack

if TYPE_CHECKING:  # an actor's process imports this module: it stays light (no torch, no pydantic)
    from ..settings.config import RayConfig

# Set in the environment before Ray starts or is joined, so that its workers inherit it too.
RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0"}
# A Ray of the daemon's own stays on 127.0.0.1. ray.init swaps a loopback ``_node_ip_address`` for
# this machine's outward address, and its servers then listen on every interface (measured with
# 2.60), unless Ray is told this is no multi-machine cluster: then it keeps 127.0.0.1.
LOOPBACK_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# The job database decides retries: Ray restarts no actor and re-runs no call.
NO_RETRIES = {"max_restarts": 0, "max_task_retries": 0}
LOOPBACK = "127.0.0.1"
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
    ray.init(**init_options(settings, node_ip_address, **resources))
    return ray


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
    gpu_ids: tuple[str, ...]  # as Ray numbers them on that node; () for a CPU actor
    cuda_visible_devices: str | None
    pid: int

    @property
    def device(self) -> str:
        """The device's name for ``placement``: its GPU on that node, or the CPU."""
        return f"gpu:{','.join(self.gpu_ids)}" if self.gpu_ids else f"cpu:{self.pid}"


class DeviceActor:
    """One device's actor (made remote by ``start_actors``): it keeps a node-local folder of inputs."""

    def __init__(self, local_root: str):
        self.root = Path(local_root)

    def where(self) -> Where:
        import ray

        context = ray.get_runtime_context()
        gpu_ids = tuple(str(gpu) for gpu in context.get_accelerator_ids().get("GPU", []))
        return Where(context.get_node_id(), gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid())

    def receive(self, parcel: Parcel) -> dict[str, str]:
        """Check a run's inputs and write them node-local; what was written, with each digest.
        An ``InputError`` (a file changed or damaged) comes back to the daemon as the call's error."""
        unpack(parcel, self.root)
        return dict(parcel.sha256)


def start_actors(ray: Any, count: int, kind: str, local_root: Path) -> list[Any]:
    """``count`` actors of ``kind`` (``cuda`` or ``cpu``); each starts once Ray has a device for it."""
    remote = ray.remote(DeviceActor)
    return [remote.options(**actor_options(kind)).remote(str(local_root)) for _ in range(count)]
