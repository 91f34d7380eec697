"""The ray executor's pool of actors (``RayWorkers.tick``): actors taken in when ready, replaced
after a doubling back-off when they die, given up when they never get ready; a killed actor is
offered to placement no more. Ray is played by a fake: no Ray needed."""

import threading
from types import SimpleNamespace

import pytest
import torch

from nst_batch.daemon import actors, ray_workers
from nst_batch.daemon.actors import DeviceActor, Ready, Report, Where
from nst_batch.daemon.capacity import Capacity
from nst_batch.daemon.folders import Folders
from nst_batch.daemon.halt import Halt
from nst_batch.daemon.publisher import Publisher
from nst_batch.daemon.ray_workers import RayWorkers, _Slot
from nst_batch.daemon.runner import Ending, Outcome
from nst_batch.daemon.store import Store
from nst_batch.daemon.workers import Work
from nst_batch.settings.config import Config
from nst_batch.util.errors import ConfigError


class Died(Exception):
    pass


class Ref:
    def __init__(self):
        self.done, self.value, self.error = False, None, None

    def finish(self, value=None, error=None):
        self.done, self.value, self.error = True, value, error


class Method:
    def __init__(self, refs):
        self.refs = refs

    def options(self, **_):
        return self

    def remote(self, *args):
        self.refs.append(Ref())
        return self.refs[-1]


class Actor:
    def __init__(self):
        self.calls = {"start": [], "lifeline": []}
        self.start, self.lifeline = Method(self.calls["start"]), Method(self.calls["lifeline"])

    def ready(self, node="node-a", gpu="0", budget=8 * 2**30):
        where = Where("id", node, (gpu,), gpu, 1)
        self.calls["start"][-1].finish(Ready(where, "cuda:Fake", budget))

    def die(self):
        self.calls["lifeline"][-1].finish(error=Died())


class FakeRay:
    def __init__(self):
        self.killed = []

    def wait(self, refs, num_returns=1, timeout=None):
        return [r for r in refs if r.done], [r for r in refs if not r.done]

    def get(self, ref, timeout=None):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor, no_restart=True):
        self.killed.append(actor)


@pytest.fixture
def pool(tmp_path, monkeypatch):
    config = Config(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state",
                    styles_dir=None, executor="ray", scheduler={"calibrate": False})
    folders = Folders(config)
    folders.create()
    store = Store(config.state_dir)
    capacity = Capacity(config, torch.device("cpu"), key="cuda")
    workers = RayWorkers(config, folders, Publisher(config, folders, torch.device("cpu")), store, threading.Event(),
                         lambda: None, capacity)
    made = []
    monkeypatch.setattr(ray_workers.actors, "start_actors", lambda *a, **k: made.append(Actor()) or [made[-1]])
    monkeypatch.setattr(ray_workers.RayWorkers, "_actor_died", lambda self, error: isinstance(error, Died))
    clock = [1000.0]
    monkeypatch.setattr(ray_workers.time, "monotonic", lambda: clock[0])
    workers.ray = FakeRay()
    workers._slots = [_Slot(0), _Slot(1)]
    for slot in workers._slots:
        workers._start_actor(slot)
    yield workers, made, clock
    store.close()


def test_ready_actors_are_offered_with_their_budgets_and_the_model_keeps_the_first_kind(pool):
    workers, made, _ = pool
    made[0].ready("node-a", "0", 8 * 2**30)
    workers.tick()
    made[1].ready("node-b", "0", 4 * 2**30)
    made[1].calls["start"][-1].value = Ready(Where("id", "node-b", ("0",), "0", 2), "cuda:Other", 4 * 2**30)
    workers.tick()
    assert [(d.node, d.name, d.budget) for d in workers.devices(0, 4)] == [
        ("node-a", "gpu:0", 8 * 2**30), ("node-b", "gpu:0", 4 * 2**30)
    ]
    assert workers.capacity.device_key == "cuda:Fake" and workers.capacity.budget == 8 * 2**30
    assert [(d.node, d.state) for d in workers.store.devices()] == [("node-a", "ready"), ("node-b", "ready")]


def test_a_dead_actor_is_replaced_after_a_back_off_that_doubles(pool):
    workers, made, clock = pool
    delays = []
    for _ in range(4):
        actor = workers._slots[0].actor
        actor.ready()
        workers.tick()
        actor.die()
        workers.tick()
        assert actor in workers.ray.killed and workers._slots[0].actor is None
        delays.append(workers._slots[0].restart_at - clock[0])
        clock[0] += delays[-1] - 0.01
        workers.tick()
        assert workers._slots[0].actor is None  # not before its time
        clock[0] += 0.02
        workers.tick()
        assert workers._slots[0].actor is not None
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert not workers._slots[0].failed  # it was ready each time: never given up


def test_a_device_whose_actors_never_get_ready_is_given_up_and_with_none_left_the_daemon_says_so(pool):
    workers, made, clock = pool
    first, second = workers._slots

    def die_before_ready(slot, then_tick=True):
        slot.actor.die()
        workers.tick()
        clock[0] += 1000  # past any back-off
        if then_tick:
            workers.tick()  # the replacement starts

    die_before_ready(first)
    die_before_ready(first)
    die_before_ready(first, then_tick=False)
    assert first.failed and first.actor is None and not second.failed
    assert [d.name for d in workers.store.devices()] == ["actor 1"]  # the status shows what is left
    die_before_ready(second)
    die_before_ready(second)
    with pytest.raises(ConfigError, match="no actor could start"):
        die_before_ready(second, then_tick=False)
    assert len(made) == 6


def test_no_device_left_ends_the_daemon_with_one_line(pool):
    workers, _, _ = pool
    workers._slots[0].failed = True
    workers._slots[1].actor.calls["start"][-1].finish(error=ConfigError("no weights"))  # its own fault
    with pytest.raises(ConfigError, match="no actor could start"):
        workers.tick()


def test_an_actor_a_work_thread_killed_is_offered_no_more(pool):
    workers, made, _ = pool
    made[0].ready("node-a", "0")
    made[1].ready("node-a", "1")
    workers.tick()
    workers._kill(made[0])
    assert [d.name for d in workers.devices(0, 4)] == ["gpu:1"]


def test_an_actor_a_work_thread_killed_is_replaced_and_its_replacement_offered(pool):
    workers, made, clock = pool
    made[0].ready("node-a", "0")
    workers.tick()
    workers._kill(made[0])  # a work thread found it dead
    made[0].die()
    workers.tick()
    clock[0] += 1.0
    workers.tick()  # the replacement starts...
    made[-1].ready("node-a", "0")
    workers.tick()  # ...and is ready
    assert made[-1] is not made[0] and [d.name for d in workers.devices(0, 4)] == ["gpu:0"]


def test_work_placed_on_an_actor_killed_meanwhile_is_started_on_it_and_its_call_then_fails(pool, monkeypatch):
    workers, made, _ = pool
    made[0].ready("node-a", "0")
    workers.tick()
    (device,) = workers.devices(0, 4)
    workers._kill(made[0])  # by a work thread, between placement and start
    started = []
    monkeypatch.setattr(ray_workers.Workers, "start", lambda self, work: started.append(work))
    work = Work([], 0, device.node, device.name)
    workers.start(work)  # the main loop goes on
    assert started == [work] and work.actor is made[0]


class Recording(Halt):
    def __init__(self):
        super().__init__(threading.Event())
        self.asked = []

    def pause(self):
        self.asked.append("pause")
        super().pause()

    def cancel(self, run_id):
        self.asked.append(f"cancel {run_id}")
        super().cancel(run_id)


def test_an_actor_told_to_stop_and_to_cancel_a_run_cancels_it_first(tmp_path):
    actor = DeviceActor(str(tmp_path))
    actor._works[7] = work = actors._Work(Recording())
    report = actor.report(7, stop=True, cancelled=(3,))
    assert report.found and work.halt.asked == ["cancel 3", "pause"]  # else the run could checkpoint as stopped
    assert not actor.report(8).found


def test_a_cancel_reaches_the_actor_as_a_cancel_not_as_a_stop_of_its_work(pool, monkeypatch):
    workers, made, _ = pool
    actor, call, asked = made[0], Ref(), []

    def report(key, stop, cancelled):
        asked.append((stop, cancelled))
        call.finish(Report(outcomes=(Outcome(Ending.CANCELLED),)))  # the run ends, cancelled
        answer = Ref()
        answer.finish(Report())
        return answer

    actor.run = SimpleNamespace(remote=lambda *args: call)
    actor.report = SimpleNamespace(options=lambda **_: SimpleNamespace(remote=report))
    monkeypatch.setattr(ray_workers, "_parcels", lambda work, folders: [])
    work = Work([(SimpleNamespace(id=1), SimpleNamespace(id=5))], 0, "node-a", "gpu:0", actor=actor)
    work.halt = Halt(threading.Event())
    work.halt.cancel(5)
    (outcome,) = workers._execute(work, SimpleNamespace(progress=lambda *args: None))
    assert outcome.ending == Ending.CANCELLED and asked == [(False, (5,))]  # told as a cancel, not as a pause
