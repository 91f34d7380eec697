"""The ray executor's actors (``daemon.actors``). The options are checked without Ray; the tests
marked ``ray`` run a two-node cluster of fake GPUs (``num_gpus`` declared, no CUDA) on 127.0.0.1
only, and are skipped without the ray extra."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from nst_batch.daemon import actors
from nst_batch.daemon.actors import LOOPBACK, actor_options, init_options, start_actors
from nst_batch.daemon.shipping import Parcel
from nst_batch.settings.config import RayConfig
from nst_batch.util.errors import ConfigError, InputError

MIB = 2**20


# ---- without Ray ----


def test_ray_never_retries_what_the_database_owns():
    for kind in ("cuda", "cpu"):
        options = actor_options(kind)
        assert options["max_restarts"] == 0 and options["max_task_retries"] == 0
    assert actor_options("cuda")["num_gpus"] == 1 and actor_options("cuda")["num_cpus"] == 0
    assert actor_options("cpu") == {"max_restarts": 0, "max_task_retries": 0, "num_cpus": 1}
    with pytest.raises(ValueError):
        actor_options("cuda:1")


def test_a_ray_of_its_own_binds_to_loopback_without_a_dashboard():
    options = init_options(RayConfig(object_store_memory=100 * MIB), num_cpus=2, num_gpus=None)
    assert options == {
        "include_dashboard": False, "log_to_driver": False, "_node_ip_address": LOOPBACK,
        "object_store_memory": 100 * MIB, "num_cpus": 2,
    }


def test_joining_a_cluster_takes_its_resources_as_they_are():
    options = init_options(RayConfig(address="10.0.0.5:6379", object_store_memory=100 * MIB))
    assert options == {"include_dashboard": False, "log_to_driver": False, "address": "10.0.0.5:6379"}
    assert init_options(RayConfig(address="auto"), LOOPBACK)["_node_ip_address"] == LOOPBACK
    with pytest.raises(ValueError):
        init_options(RayConfig(address="auto"), num_gpus=2)


def test_usage_statistics_are_off_in_every_process_ray_starts(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    actors.quiet_environment()
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"


def test_without_the_extra_one_line_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(actors, "ray_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'nst-batch\[ray\]'"):
        actors.require_ray()


def test_an_actors_process_imports_neither_torch_nor_pydantic_to_start():
    # Each actor's process imports this module first: light, it starts in seconds, not tens of them.
    code = "import sys, nst_batch.daemon.actors; print(sorted({'torch', 'pydantic', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


# ---- a loopback cluster of two nodes with two fake GPUs each ----


# Joining a cluster at 127.0.0.1:PORT, Ray swaps the loopback address for this machine's own
# (services.resolve_ip_for_localhost), which the loopback cluster does not listen on, and which no
# test may reach. Ray resolves to 127.0.0.1 where it supports no multi-machine cluster: the tests
# say so, in this process (the constant, read at each call) and in those Ray starts (the variable).
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    actors.quiet_environment()
    saved = {key: os.environ.get(key) for key in LOOPBACK_ONLY}
    os.environ.update(LOOPBACK_ONLY)
    was = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    node = {"num_cpus": 1, "num_gpus": 2, "node_ip_address": LOOPBACK, "object_store_memory": 80 * MIB}
    made = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        made.add_node(**node)
        made.wait_for_nodes()
        actors.connect(RayConfig(address=made.address), node_ip_address=LOOPBACK)
        yield ray
    finally:
        ray.shutdown()
        made.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = was
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.ray
def test_four_actors_on_four_devices_and_a_fifth_waits(cluster, tmp_path):
    ray = cluster
    started = start_actors(ray, 5, "cuda", tmp_path / "node")
    try:
        calls = [actor.where.remote() for actor in started]
        ready, waiting = ray.wait(calls, num_returns=4, timeout=60)
        assert len(ready) == 4, "four actors did not start"
        places = ray.get(ready)
        assert len({(where.node, where.gpu_ids) for where in places}) == 4
        assert len({where.node for where in places}) == 2
        for where in places:
            assert len(where.gpu_ids) == 1 and where.cuda_visible_devices == where.gpu_ids[0]
        ready_late, _ = ray.wait(waiting, timeout=2)
        assert not ready_late, "a fifth actor started on four devices"
    finally:
        for actor in started:
            ray.kill(actor)


@pytest.mark.ray
def test_inputs_arrive_as_bytes_checked_on_the_actors_node(cluster, tmp_path):
    ray = cluster
    (actor,) = start_actors(ray, 1, "cuda", tmp_path / "node")
    try:
        data = b"content bytes"
        parcel = Parcel(3, {"a.jpg": data}, {"a.jpg": hashlib.sha256(data).hexdigest()})
        assert ray.get(actor.receive.remote(parcel), timeout=60) == parcel.sha256
        assert (tmp_path / "node" / "job-3" / "a.jpg").read_bytes() == data
        damaged = Parcel(4, {"a.jpg": data + b"!"}, parcel.sha256)
        with pytest.raises(InputError, match="damaged on its way"):
            ray.get(actor.receive.remote(damaged), timeout=60)
        assert not (tmp_path / "node" / "job-4").exists()
    finally:
        ray.kill(actor)


@pytest.mark.ray
def test_an_actor_that_dies_stays_dead(cluster, tmp_path):
    ray = cluster
    from ray.exceptions import ActorDiedError, RayActorError

    (actor,) = start_actors(ray, 1, "cuda", tmp_path / "node")
    where = ray.get(actor.where.remote(), timeout=60)
    os.kill(where.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    with pytest.raises((ActorDiedError, RayActorError)):
        while time.monotonic() < deadline:  # until Ray has seen it die
            ray.get(actor.where.remote(), timeout=30)
            time.sleep(0.2)
