"""Admission and packing on a fake device: a budget, and needs in plain numbers."""

from nst_batch.daemon.scheduler import Active, Candidate
from nst_batch.daemon.scheduler import admit as admit_batches

GIB = 1 << 30


def run(run_id, need_gib, job_id=None, priority=0, alone=False):
    return Candidate(run_id, job_id if job_id is not None else run_id, 0, priority, int(need_gib * GIB), alone)


def admit(*args, **kwargs) -> list[int]:
    """The runs to start, for scenarios without batching (one run per batch)."""
    started = admit_batches(*args, **kwargs)
    assert all(len(batch.runs) == 1 for batch in started)
    return [batch.runs[0].run_id for batch in started]


def test_packs_as_many_as_fit_in_queue_order():
    queued = [run(1, 3), run(2, 3), run(3, 3), run(4, 1)]
    assert admit(queued, [], budget=10 * GIB, max_concurrent=8) == [1, 2, 3, 4]
    assert admit(queued, [], budget=7 * GIB, max_concurrent=8) == [1, 2]


def test_respects_the_concurrency_limit_and_what_is_running():
    queued = [run(1, 1), run(2, 1), run(3, 1)]
    assert admit(queued, [Active(9, 1 * GIB)], budget=10 * GIB, max_concurrent=2) == [1]
    assert admit(queued, [Active(9, 9.5 * GIB)], budget=10 * GIB, max_concurrent=4) == []


def test_priority_before_arrival():
    queued = [run(1, 4, job_id=1), run(2, 4, job_id=2, priority=5), run(3, 4, job_id=3)]
    assert admit(queued, [], budget=8 * GIB, max_concurrent=8) == [2, 1]


def test_a_big_run_is_not_starved_by_small_ones():
    big, small = run(1, 8), run(2, 1)
    running = [Active(10, 4 * GIB)]
    # 6 GiB free: the big run does not fit yet, and it reserves what it needs, so the small one
    # behind it must wait too instead of eating into the memory the big one is waiting for.
    assert admit([big, small], running, budget=10 * GIB, max_concurrent=8) == []
    # Once the running one ends, the big one starts first.
    assert admit([big, small], [], budget=10 * GIB, max_concurrent=8) == [1, 2]


def test_small_runs_ahead_of_a_big_one_still_pack():
    queued = [run(1, 2), run(2, 2), run(3, 9), run(4, 1)]
    assert admit(queued, [], budget=10 * GIB, max_concurrent=8) == [1, 2]


def test_a_run_retried_after_running_out_of_memory_runs_alone():
    alone = run(2, 3, alone=True)
    queued = [run(1, 1), alone, run(3, 1)]
    assert admit(queued, [], budget=10 * GIB, max_concurrent=8) == [1]  # ahead of it: fine
    assert admit([alone, run(3, 1)], [Active(1, GIB)], budget=10 * GIB, max_concurrent=8) == []
    assert admit([alone, run(3, 1)], [], budget=10 * GIB, max_concurrent=8) == [2]
    assert admit([run(3, 1)], [Active(2, 3 * GIB, alone=True)], budget=10 * GIB, max_concurrent=8) == []


def shaped(run_id, need_gib, key="512x384", shared_gib=0.0, **fields):
    return Candidate(run_id, fields.pop("job_id", run_id), 0, fields.pop("priority", 0), int(need_gib * GIB),
                     fields.pop("alone", False), key, int(shared_gib * GIB))


def test_runs_of_one_shape_start_as_one_batch_led_by_the_first_in_the_queue():
    queued = [shaped(1, 1, "a"), shaped(2, 1, "b"), shaped(3, 1, "a"), shaped(4, 1, "a")]
    started = admit_batches(queued, [], budget=10 * GIB, max_concurrent=8, max_batch=8)
    assert [batch.run_ids for batch in started] == [(1, 3, 4), (2,)]


def test_a_batch_holds_at_most_max_batch_runs_and_takes_one_slot():
    queued = [shaped(i, 1) for i in range(1, 6)]
    started = admit_batches(queued, [], budget=10 * GIB, max_concurrent=2, max_batch=2)
    assert [batch.run_ids for batch in started] == [(1, 2), (3, 4)]


def test_priorities_unknown_shapes_and_alone_runs_are_never_mixed_into_a_batch():
    queued = [shaped(1, 1), shaped(2, 1, priority=5), shaped(3, 1, key=None), shaped(4, 1, key=None), shaped(5, 1)]
    started = admit_batches(queued, [], budget=10 * GIB, max_concurrent=8, max_batch=8)
    assert [batch.run_ids for batch in started] == [(2,), (1, 5), (3,), (4,)]
    lonely = [shaped(1, 1, alone=True), shaped(2, 1)]
    assert [b.run_ids for b in admit_batches(lonely, [], budget=10 * GIB, max_concurrent=8, max_batch=8)] == [(1,)]


def test_a_batch_pays_once_for_what_its_runs_share():
    queued = [shaped(i, 3, shared_gib=2) for i in range(1, 5)]  # 4 x 3 GiB apart, 2 + 4 x 1 GiB together
    (batch,) = admit_batches(queued, [], budget=6 * GIB, max_concurrent=8, max_batch=8)
    assert batch.run_ids == (1, 2, 3, 4) and batch.need_bytes == 6 * GIB
    assert admit_batches(queued, [], budget=6 * GIB, max_concurrent=8, max_batch=1)[0].run_ids == (1,)
    assert admit_batches(queued, [Active(9, 1)], budget=6 * GIB, max_concurrent=8, max_batch=8) == []


def test_a_batch_never_grows_beyond_the_budget_so_an_idle_device_always_starts_something():
    queued = [shaped(i, 10, shared_gib=1) for i in range(1, 9)]  # together: 1 + 8 x 9 = 73 GiB
    started = admit_batches(queued, [], budget=40 * GIB, max_concurrent=8, max_batch=8)
    assert [batch.run_ids for batch in started] == [(1, 2, 3, 4)]  # 1 + 4 x 9 = 37 GiB
    assert started[0].need_bytes <= 40 * GIB
