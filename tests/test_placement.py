"""Placement across devices (``daemon.placement``), on fake devices: budgets, slots and needs in
plain numbers, no Ray. With one device it must decide exactly what ``scheduler.admit`` decides."""

import random

import pytest

from nst_batch.daemon.placement import Device, Placed, place
from nst_batch.daemon.scheduler import Active, Candidate, admit

GIB = 1 << 30


def run(run_id, need_gib, job_id=None, priority=0, alone=False, key=None, node=None, shared_gib=0.0):
    job = job_id if job_id is not None else run_id
    return Candidate(run_id, job, 0, priority, int(need_gib * GIB), alone, key, int(shared_gib * GIB), node)


def device(node, name="cuda:0", budget_gib=10, slots=4, running=()):
    return Device(node, name, int(budget_gib * GIB), slots, tuple(running))


def where(placed: list[Placed]) -> dict[int, str]:
    """run id -> "node/device", for every run placed."""
    return {r.run_id: f"{p.node}/{p.device}" for p in placed for r in p.batch.runs}


def order(placed: list[Placed]) -> list[int]:
    return [r.run_id for p in placed for r in p.batch.runs]


# ---- one device: exactly the single-device scheduler ----


def _random_scenario(rng: random.Random):
    budget = rng.randint(4, 16) * GIB
    slots = rng.randint(1, 5)
    queued = []
    for run_id in range(1, rng.randint(0, 14) + 1):
        need = rng.randint(GIB // 4, budget)  # the too_big policy fits every run to the budget first
        queued.append(
            Candidate(
                run_id, rng.randint(1, 6), run_id, rng.choice([0, 0, 5]), need, rng.random() < 0.15,
                rng.choice([None, "a", "b"]), min(need, rng.choice([0, GIB // 8])),
            )
        )
    running = [
        Active(100 + i, rng.randint(GIB // 4, budget // 2), rng.random() < 0.1) for i in range(rng.randint(0, slots))
    ]
    return budget, slots, queued, running, rng.choice([1, 1, 2, 4])


@pytest.mark.parametrize("seed", range(300))
def test_one_device_decides_what_the_single_device_scheduler_decides(seed):
    budget, slots, queued, running, max_batch = _random_scenario(random.Random(seed))
    expected = admit(queued, running, budget, slots, max_batch)
    placed = place(queued, [Device("local", "cpu", budget, slots, tuple(running))], max_batch)
    assert [p.batch for p in placed] == expected
    assert all((p.node, p.device) == ("local", "cpu") for p in placed)


def test_no_device_places_nothing():
    assert place([run(1, 1)], []) == []


# ---- queue order and priorities across devices ----


def test_idle_devices_fill_first_one_run_each():
    devices = [device("n1", "cuda:0"), device("n1", "cuda:1"), device("n2", "cuda:0")]
    placed = place([run(1, 1), run(2, 1), run(3, 1)], devices)
    assert where(placed) == {1: "n1/cuda:0", 2: "n1/cuda:1", 3: "n2/cuda:0"}


def test_the_least_loaded_device_takes_the_next_run():
    busy = device("n1", running=[Active(90, GIB), Active(91, GIB)])
    light = device("n2", running=[Active(92, GIB)])
    placed = place([run(1, 1), run(2, 1), run(3, 1)], [busy, light])
    # n2 has 1 piece of work, n1 2: n2 takes run 1; then they are level (2 each, 8 GiB free) and
    # the first device takes run 2; then n2 has less.
    assert where(placed) == {1: "n2/cuda:0", 2: "n1/cuda:0", 3: "n2/cuda:0"}


def test_priority_decides_who_gets_the_free_devices():
    devices = [device("n1", slots=1), device("n2", slots=1)]
    queued = [run(1, 1, job_id=1), run(2, 1, job_id=2, priority=5), run(3, 1, job_id=3), run(4, 1, job_id=4, priority=5)]
    placed = place(queued, devices)
    assert order(placed) == [2, 4]  # both of priority 5, in arrival order; the rest wait for a slot


def test_placed_in_queue_order_across_devices():
    devices = [device("n1", slots=2), device("n2", slots=2)]
    queued = [run(i, 1, job_id=10 - i) for i in range(1, 6)]  # later ids arrived first
    assert order(place(queued, devices)) == [5, 4, 3, 2]


def test_per_device_slots():
    devices = [device("n1", slots=1, running=[Active(90, GIB)]), device("n2", slots=3)]
    placed = place([run(i, 1) for i in range(1, 6)], devices)
    assert where(placed) == {1: "n2/cuda:0", 2: "n2/cuda:0", 3: "n2/cuda:0"}


# ---- per-device budgets ----


def test_each_device_has_its_own_budget():
    small, large = device("n1", budget_gib=4), device("n2", budget_gib=12)
    placed = place([run(1, 6), run(2, 3), run(3, 3)], [small, large])
    assert where(placed) == {1: "n2/cuda:0", 2: "n1/cuda:0", 3: "n2/cuda:0"}


def test_what_runs_counts_against_its_own_device_only():
    full = device("n1", budget_gib=10, running=[Active(90, 9 * GIB)])
    empty = device("n2", budget_gib=10)
    placed = place([run(1, 3), run(2, 3), run(3, 3), run(4, 3)], [full, empty])
    assert where(placed) == {1: "n2/cuda:0", 2: "n2/cuda:0", 3: "n2/cuda:0"}  # 4: reserved on n2, no room


def test_a_batch_is_formed_to_fit_the_smallest_device():
    small, large = device("n1", budget_gib=4), device("n2", budget_gib=16)
    queued = [run(i, 1.5, key="shape", shared_gib=0.5) for i in range(1, 5)]
    placed = place(queued, [small, large], max_batch=8)
    # Members need 1.5 GiB, 0.5 shared: a batch of 3 needs 3.5 GiB, one of 4 would need 4.5.
    assert [len(p.batch.runs) for p in placed] == [3, 1]
    assert all(p.batch.need_bytes <= 4 * GIB for p in placed)


def test_a_run_that_fits_no_device_is_skipped_not_reserved():
    devices = [device("n1", budget_gib=4), device("n2", budget_gib=6)]
    assert order(place([run(1, 8), run(2, 1), run(3, 1)], devices)) == [2, 3]


# ---- a big run's reservation holds one device ----


def test_a_big_run_reserves_one_device_and_the_others_go_on():
    devices = [device("n1", running=[Active(90, 4 * GIB)]), device("n2", running=[Active(91, 5 * GIB)])]
    placed = place([run(1, 8), run(2, 1), run(3, 1)], devices)
    # The big one fits neither now; it reserves n1 (the most free), where 6 - 8 < 0 is left:
    # nothing more starts on n1, while n2 takes the small ones.
    assert where(placed) == {2: "n2/cuda:0", 3: "n2/cuda:0"}


def test_a_reservation_closes_its_device_to_everything_behind_it():
    # A run reserves only when it does not fit what is free, so nothing is left after it on its
    # device: nothing behind it starts there, however small (as on one device).
    devices = [device("n1", running=[Active(90, 3 * GIB)]), device("n2", slots=1, running=[Active(91, 5 * GIB)])]
    assert place([run(1, 8), run(2, 0.5), run(3, 0.5)], devices) == []  # reserved on n1 (7 free); n2 has no slot
    devices[1] = device("n2", slots=2, running=[Active(91, 5 * GIB)])
    assert where(place([run(1, 8), run(2, 0.5), run(3, 0.5)], devices)) == {2: "n2/cuda:0"}


def test_the_big_run_starts_first_once_its_device_has_room():
    devices = [device("n1"), device("n2", running=[Active(91, 5 * GIB)])]
    placed = place([run(1, 8), run(2, 1), run(3, 1)], devices)
    assert where(placed)[1] == "n1/cuda:0" and order(placed)[0] == 1


def test_two_big_runs_reserve_two_devices():
    devices = [device("n1", running=[Active(90, 4 * GIB)]), device("n2", running=[Active(91, 4 * GIB)]),
               device("n3", running=[Active(92, 9 * GIB)])]
    placed = place([run(1, 8), run(2, 8), run(3, 1)], devices)
    assert where(placed) == {3: "n3/cuda:0"}


def test_a_reservation_goes_where_the_budget_could_hold_it():
    small = device("n1", budget_gib=6)
    large = device("n2", budget_gib=12, running=[Active(90, 6 * GIB)])
    placed = place([run(1, 8), run(2, 2)], [small, large])
    assert where(placed) == {2: "n1/cuda:0"}  # the reservation is on n2, which holds 12; run 2 fits n1


# ---- alone runs only on an idle device ----


def test_an_alone_run_takes_an_idle_device_and_nothing_goes_beside_it():
    devices = [device("n1", running=[Active(90, GIB)]), device("n2")]
    placed = place([run(1, 2, alone=True), run(2, 1), run(3, 1)], devices)
    assert where(placed) == {1: "n2/cuda:0", 2: "n1/cuda:0", 3: "n1/cuda:0"}


def test_an_alone_run_closes_the_least_loaded_device_until_it_drains():
    devices = [device("n1", running=[Active(90, GIB), Active(91, GIB)]), device("n2", running=[Active(92, GIB)])]
    placed = place([run(1, 2, alone=True), run(2, 1)], devices)
    assert where(placed) == {2: "n1/cuda:0"}  # n2 waits for its run to end, then takes the alone one
    drained = [devices[0], device("n2")]
    assert where(place([run(1, 2, alone=True), run(2, 1)], drained)) == {1: "n2/cuda:0", 2: "n1/cuda:0"}


def test_a_device_running_alone_work_takes_nothing_else():
    devices = [device("n1", running=[Active(90, GIB, alone=True)]), device("n2", slots=1)]
    assert where(place([run(1, 1), run(2, 1)], devices)) == {1: "n2/cuda:0"}


def test_several_alone_runs_take_one_idle_device_each():
    devices = [device("n1"), device("n2"), device("n3", running=[Active(90, GIB)])]
    placed = place([run(1, 1, alone=True), run(2, 1, alone=True), run(3, 1, alone=True), run(4, 1)], devices)
    assert where(placed) == {1: "n1/cuda:0", 2: "n2/cuda:0"}  # 3 closes n3; 4 has nowhere to go


def test_an_alone_run_never_starts_beside_what_started_this_round():
    devices = [device("n1", slots=4)]
    assert order(place([run(1, 1), run(2, 1, alone=True), run(3, 1)], devices)) == [1]


# ---- resume prefers the checkpoint's node ----


def test_a_resumed_run_goes_back_to_its_checkpoints_node():
    devices = [device("n1"), device("n2", "cuda:0", running=[Active(90, GIB)]), device("n2", "cuda:1",
                                                                                          running=[Active(91, 2 * GIB)])]
    placed = place([run(1, 1, node="n2"), run(2, 1)], devices)
    assert where(placed) == {1: "n2/cuda:0", 2: "n1/cuda:0"}


def test_a_resumed_run_waits_for_its_node_and_the_rest_go_on():
    devices = [device("n1"), device("n2", slots=1, running=[Active(90, GIB)])]
    placed = place([run(1, 1, node="n2"), run(2, 1)], devices)
    assert where(placed) == {2: "n1/cuda:0"}


def test_a_resumed_run_reserves_on_its_node():
    devices = [device("n1"), device("n2", running=[Active(90, 6 * GIB)])]
    placed = place([run(1, 6, node="n2"), run(2, 2), run(3, 2)], devices)
    # It needs 6 GiB; n1 has 10 free, but its checkpoint is on n2, where it reserves: nothing
    # more starts on n2 (4 - 6 < 0), n1 takes the others.
    assert where(placed) == {2: "n1/cuda:0", 3: "n1/cuda:0"}


def test_a_node_that_is_gone_frees_its_runs_to_start_anywhere():
    devices = [device("n1"), device("n3")]
    placed = place([run(1, 1, node="n2", key="shape"), run(2, 1, key="shape")], devices, max_batch=4)
    # n2 is gone, and its checkpoint with it: run 1 may go anywhere, and so batch with run 2.
    assert [p.batch.run_ids for p in placed] == [(1, 2)]


def test_a_resumed_run_waits_for_its_node_while_devices_still_start_there():
    devices = [device("n1"), device("n3")]
    # n2's devices are still starting (a restarted daemon): run 1 waits for them, the others go on.
    assert where(place([run(1, 1, node="n2"), run(2, 1)], devices, starting_on={"n2"})) == {2: "n1/cuda:0"}
    # Devices starting elsewhere do not hold it: its node is gone.
    assert where(place([run(1, 1, node="n2")], devices, starting_on={"n3"})) == {1: "n1/cuda:0"}


def test_a_checkpoint_node_too_small_for_the_run_is_given_up():
    devices = [device("n1", budget_gib=4), device("n2", budget_gib=12)]
    assert where(place([run(1, 6, node="n1")], devices)) == {1: "n2/cuda:0"}  # n1 could never hold it


def test_a_batch_never_mixes_checkpoint_nodes():
    devices = [device("n1"), device("n2")]
    queued = [run(1, 1, key="s", node="n1"), run(2, 1, key="s", node="n2"), run(3, 1, key="s"), run(4, 1, key="s",
                                                                                                     node="n1")]
    placed = place(queued, devices, max_batch=8)
    batches = {p.batch.run_ids: f"{p.node}" for p in placed}
    assert batches == {(1, 4): "n1", (2,): "n2", (3,): "n1"} or batches == {(1, 4): "n1", (2,): "n2", (3,): "n2"}


# ---- over time: never over a budget, alone means alone, and everything runs ----


@pytest.mark.parametrize("seed", range(40))
def test_a_queue_drains_through_many_devices_within_every_limit(seed):
    rng = random.Random(seed)
    devices = [device(f"n{i // 2}", f"cuda:{i % 2}", budget_gib=rng.choice([6, 8, 12]), slots=rng.randint(1, 3))
               for i in range(rng.randint(1, 4))]
    smallest = min(d.budget for d in devices) // GIB
    queue = [run(i, rng.uniform(0.5, smallest), job_id=rng.randint(1, 5), priority=rng.choice([0, 3]),
                 alone=rng.random() < 0.2, key=rng.choice([None, "k"]), node=rng.choice([None, None, "n0", "n9"]))
             for i in range(1, 31)]
    running: dict[tuple[str, str], list[Active]] = {d.key: [] for d in devices}
    started: list[int] = []
    for _ in range(400):
        pool = [Device(d.node, d.name, d.budget, d.max_concurrent, tuple(running[d.key])) for d in devices]
        for placed in place(queue, pool, max_batch=3):
            work = running[(placed.node, placed.device)]
            work.append(Active(placed.batch.runs[0].run_id, placed.batch.need_bytes, placed.batch.alone))
            ids = set(placed.batch.run_ids)
            started += placed.batch.run_ids
            queue = [r for r in queue if r.run_id not in ids]
        for d in devices:
            work = running[d.key]
            assert sum(a.need_bytes for a in work) <= d.budget
            assert len(work) <= d.max_concurrent
            assert not any(a.alone for a in work) or len(work) == 1
            if work and rng.random() < 0.5:
                work.pop(rng.randrange(len(work)))  # some work ends
        if not queue and not any(running.values()):
            break
    assert not queue, f"never placed: {queue}"
    assert sorted(started) == list(range(1, 31))
