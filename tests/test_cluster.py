"""The ray executor on a cluster: its actors (``daemon.actors``) and the daemon through them
(``daemon.ray_workers``). The options are checked without Ray; the tests marked ``ray`` run a
loopback cluster of two nodes with two fake GPUs each (``num_gpus`` declared, no CUDA), or a real
daemon with a Ray of its own, on 127.0.0.1 only, and are skipped without the ray extra. (Named to
be among the first files pytest hands out: its minute of Ray runs beside the rest of the suite.)"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch
from daemon_helpers import Daemon, drop_pair, serve_until, wait_for

from nst_batch.daemon import actors
from nst_batch.daemon.actors import LOOPBACK, actor_options, init_options, start_actors
from nst_batch.daemon.runner import Runner
from nst_batch.daemon.service import Service
from nst_batch.daemon.store import Action, Store
from nst_batch.settings.config import RayConfig, load_config
from nst_batch.util.errors import ConfigError

MIB = 2**20
# What the daemon sets in the environment for Ray.
ENVIRONMENT = (*actors.LOOPBACK_ENVIRONMENT, *actors.RAY_ENVIRONMENT, "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


# ---- without Ray ----


def test_ray_never_retries_what_the_database_owns():
    for kind in ("cuda", "cpu"):
        options = actor_options(kind)
        assert options["max_restarts"] == 0 and options["max_task_retries"] == 0
    assert actor_options("cuda")["num_gpus"] == 1 and actor_options("cuda")["num_cpus"] == 0
    assert actor_options("cpu") == {"max_restarts": 0, "max_task_retries": 0, "num_cpus": 1}
    # However many runs an actor has, the daemon's reports and the lifeline have threads of their own.
    assert actors.ACTOR_CLASS["max_concurrency"] >= 64  # the scheduler's max_concurrent, at most
    assert set(actors.ACTOR_CLASS["concurrency_groups"]) == {actors.CONTROL, actors.LIFELINE}
    with pytest.raises(ValueError):
        actor_options("cuda:1")


def test_a_ray_of_its_own_binds_to_loopback_without_a_dashboard():
    options = init_options(RayConfig(object_store_memory=100 * MIB), num_cpus=2, num_gpus=None)
    assert options == {
        "include_dashboard": False, "log_to_driver": False, "address": "local", "_node_ip_address": LOOPBACK,
        "object_store_memory": 100 * MIB, "num_cpus": 2,
    }


def test_joining_a_cluster_takes_its_resources_as_they_are():
    options = init_options(RayConfig(address="10.0.0.5:6379", object_store_memory=100 * MIB))
    assert options == {"include_dashboard": False, "log_to_driver": False, "address": "10.0.0.5:6379"}
    assert init_options(RayConfig(address="auto"), LOOPBACK)["_node_ip_address"] == LOOPBACK
    with pytest.raises(ValueError):
        init_options(RayConfig(address="auto"), num_gpus=2)


def test_an_actor_removes_the_inputs_its_nodes_dead_actors_left(tmp_path):
    for name in ("pid-11", "pid-12", "pid-13", "other"):
        (tmp_path / name / "job-1").mkdir(parents=True)
    actors.sweep_inputs(tmp_path, alive=lambda pid: pid == 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "pid-12"]
    assert actors._alive(os.getpid()) and not actors._alive(2**22 + 1)  # above Linux's pid_max


def test_the_quiet_environment_turns_rays_usage_statistics_off_for_every_process_it_starts(monkeypatch):
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


def test_token_authentication_with_a_token_of_its_own(tmp_path):
    token = tmp_path / "state" / "ray-auth-token"
    env = actors.auth_environment(token, create=True)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    text = token.read_text()
    assert len(text) == 64 and int(text, 16) >= 0  # 256 random bits, in hex
    assert (token.stat().st_mode & 0o777) == 0o600
    assert actors.auth_environment(token, create=True) == env and token.read_text() == text  # kept for restarts
    assert [p.name for p in token.parent.iterdir()] == ["ray-auth-token"]  # no temporary file left


def test_joining_a_cluster_needs_its_token_and_makes_none_up(tmp_path):
    token = tmp_path / "ray-auth-token"
    with pytest.raises(ConfigError, match="needs the cluster's token in .*ray-auth-token"):
        actors.auth_environment(token, create=False)
    assert not token.exists()


def test_a_token_others_may_read_or_a_link_is_refused(tmp_path):
    token = tmp_path / "ray-auth-token"
    token.write_text("0" * 64)
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="may be read by others .*chmod 600"):
        actors.auth_environment(token, create=False)
    link = tmp_path / "link"
    link.symlink_to(token)
    with pytest.raises(ConfigError, match="not a regular file"):
        actors.auth_environment(link, create=True)


class FakeRay:
    """What ``connect`` hands to ``ray.init``, and the environment Ray would have read."""

    def __init__(self):
        self.options, self.environment = None, None

    def init(self, **options):
        self.options, self.environment = options, dict(os.environ)


@pytest.mark.parametrize("address", [None, "10.0.0.5:6379"])
def test_connect_sets_the_environment_before_ray_reads_it(tmp_path, monkeypatch, address):
    for key in ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    fake = FakeRay()
    monkeypatch.setattr(actors, "require_ray", lambda: fake)
    token = tmp_path / "ray-auth-token"
    if address is not None:
        actors.auth_environment(token, create=True)  # the cluster's, copied from its head
    assert actors.connect(RayConfig(address=address), token) is fake
    env = fake.environment
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(token)
    # Only a Ray of its own is kept on 127.0.0.1; a cluster's address is its own business.
    assert ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in env) == (address is None)
    assert fake.options.get("_node_ip_address") == (LOOPBACK if address is None else None)


def test_connect_keeps_the_daemons_sigterm_handler_which_ray_init_replaces(tmp_path, monkeypatch):
    class RayThatTakesSigterm(FakeRay):
        def init(self, **options):
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as ray.init does

    monkeypatch.setattr(actors, "require_ray", RayThatTakesSigterm)
    for key in ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)

    def daemons(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, daemons)
    try:
        actors.connect(RayConfig(), tmp_path / "ray-auth-token")
        assert signal.getsignal(signal.SIGTERM) is daemons
    finally:
        signal.signal(signal.SIGTERM, before)


# ---- a loopback cluster of two nodes with two fake GPUs each, token authentication on ----

# Joining a cluster at 127.0.0.1:PORT, Ray swaps the loopback address for this machine's own, which
# the loopback cluster does not listen on and no test may reach: the tests tell Ray what the
# daemon tells a Ray of its own (``actors.LOOPBACK_ENVIRONMENT``), in this process (the constant,
# read at each call) and in those Ray starts (the variable).


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    """A head without devices, where this process is the driver, and two nodes of two fake GPUs."""
    if not actors.ray_installed():
        pytest.skip("needs the ray extra: pip install 'nst-batch[ray]'")
    saved = {key: os.environ.get(key) for key in ENVIRONMENT}
    token = tmp_path_factory.mktemp("state") / "ray-auth-token"
    os.environ.update({**actors.LOOPBACK_ENVIRONMENT, **actors.RAY_ENVIRONMENT})
    os.environ.update(actors.auth_environment(token, create=True))  # before Ray is imported: it reads them once
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # FaultyRunner, in the actors' processes
    was = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    common = {"node_ip_address": LOOPBACK, "object_store_memory": 80 * MIB}
    # A node that is gone is known within about a second.
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 2}
    made = Cluster(initialize_head=True, head_node_args={
        **common, "num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "_system_config": health,
    })
    try:
        nodes = {name: made.add_node(**common, num_cpus=1, num_gpus=2, node_name=name) for name in ("node-a", "node-b")}
        made.wait_for_nodes()
        actors.connect(RayConfig(address=made.address), token, node_ip_address=LOOPBACK)
        yield ray, made, nodes
    finally:
        ray.shutdown()
        made.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = was
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture()
def cluster(loopback_cluster):
    return loopback_cluster[0]


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
        assert {where.node_name for where in places} == {"node-a", "node-b"}
        for where in places:
            assert len(where.gpu_ids) == 1 and where.cuda_visible_devices == where.gpu_ids[0]
        ready_late, _ = ray.wait(waiting, timeout=2)
        assert not ready_late, "a fifth actor started on four devices"
    finally:
        for actor in started:
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


# ---- a Ray of the daemon's own: on 127.0.0.1 only, and only for who holds its token ----

JOIN = "import ray, sys; ray.init(address=sys.argv[1], _node_ip_address='127.0.0.1'); print('joined')"


def process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(pid))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def listening(pids: set[int]) -> list[str]:
    """The addresses the processes ``pids`` listen on (TCP, from /proc), as /proc/net writes them."""
    sockets = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    sockets.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("tcp", "tcp6"):
        for line in open(f"/proc/net/{table}").read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in sockets:  # LISTEN
                found.append(fields[1].split(":")[0])
    return found


def _loopback(hex_address: str) -> bool:
    """An address of /proc/net/tcp{,6} (hex, little-endian words) is 127.0.0.0/8, ::1 or ::ffff:127.x."""
    if len(hex_address) == 8:
        return bytes.fromhex(hex_address)[::-1][0] == 127
    words = [bytes.fromhex(hex_address[i:i + 8])[::-1] for i in range(0, 32, 8)]
    address = b"".join(words)
    return address == bytes(15) + b"\x01" or (address[:12] == bytes(10) + b"\xff\xff" and address[12] == 127)


@pytest.mark.ray
def test_a_daemon_with_a_ray_of_its_own_serves_on_loopback_only_refuses_a_stranger_and_resumes_after_sigterm(
    daemon_factory, monkeypatch
):
    if not actors.ray_installed():
        pytest.skip("needs the ray extra: pip install 'nst-batch[ray]'")
    for key in [key for key in os.environ if key.startswith("RAY_")]:  # the loopback cluster's, for this process
        monkeypatch.delenv(key)
    daemon = daemon_factory(executor="ray", ray={"devices": 1}, scheduler={"calibrate": False})  # device: cpu
    daemon.start()
    drop_pair(daemon.inbox, "own", sidecar="iterations: 200\n")
    iteration = lambda: (daemon.query("SELECT iteration FROM runs") or [{"iteration": 0}])[0]["iteration"] or 0  # noqa: E731
    daemon.wait(lambda: iteration() >= 1, 90, "the run to start its iterations")
    token = daemon.state / "ray-auth-token"
    assert len(token.read_text()) == 64 and token.stat().st_mode & 0o777 == 0o600
    ray_processes = process_tree(daemon.process.pid) - {daemon.process.pid}
    addresses = listening(ray_processes | {daemon.process.pid})
    assert ray_processes and addresses and all(_loopback(a) for a in addresses), addresses
    # SIGTERM mid-run: the actor checkpoints on its node, the daemon exits 0 and Ray's processes end.
    status, _ = daemon.terminate(timeout=60)
    assert status == 0
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in ray_processes), 30, "Ray's processes to end")
    stopped_at = iteration()
    assert daemon.query("SELECT status FROM runs")[0]["status"] == "queued" and stopped_at >= 1
    assert len(list((daemon.state / "nodes").glob("*/checkpoints/run-*"))) == 1
    daemon.start()  # the same token, a new Ray of its own: the run resumes on the same node, at its iteration
    # A driver with another token tries to join while the daemon works. It would try for 20 s;
    # once is enough here (RAY_gcs_server_port_wait_time_s).
    (address,) = re.findall(r"a Ray of its own at (127\.0\.0\.1:\d+)", daemon.log())
    env = {**os.environ, **actors.LOOPBACK_ENVIRONMENT, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64,
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_gcs_server_port_wait_time_s": "1"}
    stranger = subprocess.Popen([sys.executable, "-c", JOIN, address], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    published = daemon.wait_published("own")["own"]
    assert published["status"] == "done" and published["results"][0]["device"] == "cpu:0"
    (line,) = [line for line in (daemon.outbox / "own" / "log.txt").read_text().splitlines() if "resuming from" in line]
    # Where it stopped (a checkpoint is written at the stop): no earlier than the status last showed.
    assert stopped_at <= int(line.rsplit(" ", 1)[1]) < 200
    out, err = stranger.communicate(timeout=90)  # the daemon still serves
    assert stranger.returncode != 0 and "joined" not in out and "InvalidAuthToken" in err
    assert daemon.terminate(timeout=60)[0] == 0


def test_loopback_reads_addresses_as_proc_net_writes_them():
    assert _loopback("0100007F")  # 127.0.0.1
    assert _loopback("00000000000000000000000001000000")  # ::1
    assert _loopback("0000000000000000FFFF00000100007F")  # ::ffff:127.0.0.1
    for outward in ("00000000", "0200C0C0", "00000000000000000000000000000000", "0000000000000000FFFF00000200C0C0"):
        assert not _loopback(outward)  # 0.0.0.0, 192.192.0.2, ::, ::ffff:192.192.0.2


# ---- the daemon on the loopback cluster: its real main loop, actors running real (tiny) CPU work ----


class FaultyRunner(Runner):
    """A runner whose run named ``oom`` runs out of memory, and whose run named ``exit`` ends its
    actor's process, each once (a marker in the daemon's state_dir remembers, whatever the node)."""

    def run_batch(self, runs, stop, store):
        for _, run in runs:
            if run.label in ("oom", "exit"):
                marker = self.folders.state.parents[1] / f"fault-{run.label}"  # the actor's: state_dir/nodes/NODE
                if not marker.exists():
                    marker.touch()
                    if run.label == "exit":
                        os._exit(3)
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return super().run_batch(runs, stop, store)


def ray_service(root, runner=None, **settings) -> Service:
    """A daemon of ray executor on ``root`` (on the cluster this process is connected to)."""
    settings = {"executor": "ray", "device": "auto", "ray": {"devices": 4}, "scheduler": {"calibrate": False}, **settings}
    daemon = Daemon(root, **settings)
    return Service(load_config(daemon.config), actor_runner=runner)


def jobs_ended(count: int):
    return lambda db: db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('done', 'failed')").fetchone()[0] >= count


def runs_of(service: Service) -> list:
    return [service.store.run(r) for (r,) in service.store.db.execute("SELECT id FROM runs ORDER BY id")]


@pytest.mark.ray
def test_eight_jobs_through_two_nodes_of_two_devices_each_are_done_once_each_on_every_device(cluster, tmp_path):
    # A fifth device waits (there are four); one run at a time on each, never batched.
    settings = {"ray": {"devices": 5}, "scheduler": {"calibrate": False, "max_concurrent": 1, "max_batch": 1}}
    with ray_service(tmp_path, **settings) as service:
        dropped = []

        def once_four_are_ready_drop_eight(db):
            states = sorted(row["state"] for row in db.execute("SELECT state FROM devices"))
            if states == ["ready"] * 4 + ["starting"] and not dropped:
                for i in range(8):
                    drop_pair(service.config.inbox, f"pair{i}", seed=i)
                dropped.append(True)
            return jobs_ended(8)(db)

        serve_until(service, once_four_are_ready_drop_eight, timeout=150)
        assert dropped, "the status never showed four devices ready and a fifth waiting"
        runs = runs_of(service)
    assert len(runs) == 8 and all(r.status == "done" and r.attempts == 1 for r in runs)
    assert {(r.node, r.device) for r in runs} == {(n, f"gpu:{g}") for n in ("node-a", "node-b") for g in (0, 1)}
    folders = sorted(p.name for p in service.config.outbox.iterdir() if (p / "job.json").exists())
    assert folders == [f"pair{i}" for i in range(8)]  # one folder each: nothing published twice
    reports = [json.loads((service.config.outbox / name / "job.json").read_text()) for name in folders]
    assert {(r["results"][0]["node"], r["results"][0]["device"]) for r in reports} == {(r.node, r.device) for r in runs}
    assert all(r["status"] == "done" and r["results"][0]["attempts"] == 1 for r in reports)
    log = (service.config.outbox / "pair0" / "log.txt").read_text()
    assert "[node-" in log and "starting (3 iterations on cpu)" in log  # the actor's own lines, where they ran


@pytest.mark.ray
def test_an_out_of_memory_retries_alone_an_actor_that_exits_is_replaced_and_a_cancel_reaches_its_run(cluster, tmp_path):
    one_at_a_time = {"calibrate": False, "max_concurrent": 1, "max_batch": 1}
    with ray_service(tmp_path, FaultyRunner, ray={"devices": 1}, scheduler=one_at_a_time) as service:
        for name in ("oom", "exit", "fine"):
            drop_pair(service.config.inbox, name)
        drop_pair(service.config.inbox, "long", sidecar="iterations: 5000\n")
        asked = []

        def cancel_long_once_it_runs(db):
            row = db.execute("SELECT runs.job_id, iteration FROM runs JOIN jobs ON jobs.id=runs.job_id "
                             "WHERE jobs.name='long'").fetchone()
            if row is not None and (row["iteration"] or 0) >= 5 and not asked:
                with closing(Store(service.folders.state)) as store:
                    asked.append(store.ask(Action.CANCEL, row["job_id"]))
            ended = db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('done', 'cancelled')").fetchone()[0]
            ready = db.execute("SELECT COUNT(*) FROM devices WHERE state='ready'").fetchone()[0]
            return ended == 4 and ready == 1  # the lost actor replaced

        serve_until(service, cancel_long_once_it_runs, timeout=150)
        runs = {r.label: r for r in runs_of(service)}
        devices = service.store.devices()
    assert {label: (r.status, r.attempts) for label, r in runs.items()} == {
        "oom": ("done", 2), "exit": ("done", 2), "fine": ("done", 1), "long": ("cancelled", 1),
    }
    assert runs["oom"].alone and not runs["exit"].alone
    assert 0 < runs["long"].iteration < 5000
    log = {name: (service.config.outbox / name / "log.txt").read_text() for name in ("oom", "exit", "fine")}
    assert "out of memory" in log["oom"]
    assert "its actor on node-" in log["exit"] and "died" in log["exit"] and "queued again" in log["exit"]
    nodes = service.folders.state / "nodes"
    assert not list(nodes.glob("*/checkpoints/*")), "a checkpoint was left on a node"
    # Inputs are left only by the actor that died mid-run; the next actor of its node removes them.
    left = [p.parent.name for p in nodes.glob("*/inputs/*/*")]
    assert len(left) <= 1 and all(not actors._alive(int(name.removeprefix("pid-"))) for name in left), left
    assert len(devices) == 0  # the daemon let go of its actors when it stopped


@pytest.mark.ray
def test_a_node_removed_mid_run_queues_its_run_again_which_finishes_elsewhere_in_one_folder(loopback_cluster, tmp_path):
    _, made, nodes = loopback_cluster
    long = {"defaults": {"image_size": 32, "iterations": 100, "seed": 0}, "ray": {"devices": 1}}
    with ray_service(tmp_path, **long) as service:
        drop_pair(service.config.inbox, "moving")
        gone = []

        def remove_its_node(db):
            row = db.execute("SELECT node, iteration FROM runs").fetchone()
            if row is not None and row["node"] and (row["iteration"] or 0) >= 1 and not gone:
                gone.append(row["node"])
                # The machine goes at once, its actor with it: a worker whose raylet is killed
                # computes on until it notices, and may hand its result in first.
                (actor,) = (service.folders.state / "nodes" / row["node"] / "inputs").glob("pid-*")
                os.kill(int(actor.name.removeprefix("pid-")), signal.SIGKILL)
                made.remove_node(nodes[row["node"]], allow_graceful=False)
            return jobs_ended(1)(db)

        serve_until(service, remove_its_node, timeout=150)
        (run,) = runs_of(service)
    assert gone and run.status == "done" and run.attempts == 2 and run.node != gone[0]
    assert [p.name for p in service.config.outbox.iterdir() if (p / "job.json").exists()] == ["moving"]
    log = (service.config.outbox / "moving" / "log.txt").read_text()
    assert f"its actor on {gone[0]} gpu:" in log and log.count("starting (100 iterations") == 2
