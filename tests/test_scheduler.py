"""Admission and packing on a fake device: a budget, and needs in plain numbers."""

from nst_batch.scheduler import Active, Candidate, admit

GIB = 1 << 30


def run(run_id, need_gib, job_id=None, priority=0, alone=False):
    return Candidate(run_id, job_id if job_id is not None else run_id, 0, priority, int(need_gib * GIB), alone)


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
