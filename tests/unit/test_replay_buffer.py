"""The replay buffer: equal shares per task, class balance within a task, seeded choices."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from forgesweep.continual.replay_buffer import POLICIES, Candidate, ReplayBuffer
from forgesweep.errors import UserError


def _task(t: int, reals: int, fakes: int) -> list[Candidate]:
    return [Candidate(f"t{t}/real{i}", 0) for i in range(reals)] + [Candidate(f"t{t}/fake{i}", 1) for i in range(fakes)]


def _labels(buffer: ReplayBuffer, task: int) -> Counter:
    state = buffer.state_dict()
    return Counter(label for _, label in state["tasks"][task])


def test_capacity_is_respected_and_filled():
    buffer = ReplayBuffer(30, seed=0)
    for t in range(6):
        buffer.add_task(_task(t, 40, 40))
        assert len(buffer) == 30
        assert len(buffer.keys()) == len(set(buffer.keys())) == 30


def test_small_tasks_leave_capacity_unused():
    buffer = ReplayBuffer(100)
    buffer.add_task(_task(0, 3, 4))
    assert len(buffer) == 7
    assert sorted(buffer.keys()) == sorted(c.key for c in _task(0, 3, 4))


def test_equal_share_per_task_after_each_task():
    buffer = ReplayBuffer(100, seed=1)
    expected = [[100], [50, 50], [34, 33, 33], [25, 25, 25, 25]]
    for t, shares in enumerate(expected):
        buffer.add_task(_task(t, 60, 60))
        per_task = buffer.keys_per_task()
        assert [len(k) for k in per_task] == shares
        # Each task's ids stay with their task.
        for i, keys in enumerate(per_task):
            assert all(k.startswith(f"t{i}/") for k in keys)


def test_class_balance_within_each_task():
    buffer = ReplayBuffer(100, seed=2)
    for t in range(4):
        buffer.add_task(_task(t, 60, 60))
        for i in range(t + 1):
            counts = _labels(buffer, i)
            assert abs(counts[0] - counts[1]) <= 1, (t, i, counts)
    assert [_labels(buffer, i)[0] + _labels(buffer, i)[1] for i in range(4)] == [25] * 4


def test_old_tasks_only_shrink_to_a_subset_of_what_they_kept():
    buffer = ReplayBuffer(40, seed=0)
    buffer.add_task(_task(0, 50, 50))
    history = [set(buffer.keys_per_task()[0])]
    for t in range(1, 4):
        buffer.add_task(_task(t, 50, 50))
        history.append(set(buffer.keys_per_task()[0]))
    assert all(later <= earlier for earlier, later in zip(history, history[1:]))
    assert [len(h) for h in history] == [40, 20, 14, 10]


def test_shortfall_of_one_class_goes_to_the_other():
    buffer = ReplayBuffer(40, seed=0)
    buffer.add_task(_task(0, 5, 100))
    assert _labels(buffer, 0) == Counter({0: 5, 1: 35})
    # Shrinking keeps the shortfall rule: 5 reals + 15 fakes for a quota of 20.
    buffer.add_task(_task(1, 100, 3))
    assert _labels(buffer, 0) == Counter({0: 5, 1: 15})
    assert _labels(buffer, 1) == Counter({0: 17, 1: 3})
    assert len(buffer) == 40


def test_a_task_with_a_single_class_fills_its_quota_with_it():
    buffer = ReplayBuffer(10, seed=0)
    buffer.add_task(_task(0, 0, 30))
    assert _labels(buffer, 0) == Counter({1: 10})


def test_same_seed_same_choice_other_seed_other_choice():
    def run(seed):
        buffer = ReplayBuffer(50, seed=seed)
        for t in range(3):
            buffer.add_task(_task(t, 100, 100))
        return buffer.keys_per_task()

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_choice_is_random_not_the_front_of_the_candidates():
    buffer = ReplayBuffer(20, seed=0)
    candidates = _task(0, 100, 100)
    buffer.add_task(candidates)
    chosen_reals = {k for k in buffer.keys() if "/real" in k}
    assert len(chosen_reals) == 10
    assert chosen_reals != {c.key for c in candidates[:10]}


def test_state_dict_round_trip_through_json():
    original = ReplayBuffer(60, seed=4)
    for t in range(2):
        original.add_task(_task(t, 50, 50))
    state = original.state_dict()
    text = json.dumps(state)  # JSON-safe
    restored = ReplayBuffer(5, seed=99)  # capacity and seed come from the state
    restored.load_state_dict(json.loads(text))
    assert restored.capacity == 60 and restored.seed == 4
    assert restored.keys_per_task() == original.keys_per_task()
    assert restored.state_dict() == state
    # A restored buffer continues exactly like one that never stopped.
    for t in range(2, 4):
        original.add_task(_task(t, 50, 50))
        restored.add_task(_task(t, 50, 50))
    assert restored.keys_per_task() == original.keys_per_task()


def test_capacity_zero_stores_nothing():
    buffer = ReplayBuffer(0)
    for t in range(3):
        buffer.add_task(_task(t, 10, 10))
    assert len(buffer) == 0
    assert buffer.keys() == []
    assert buffer.keys_per_task() == [[], [], []]


def test_negative_capacity_is_rejected():
    with pytest.raises(ValueError, match="-1"):
        ReplayBuffer(-1)


def test_unknown_policy_lists_the_known_ones():
    assert "random" in POLICIES.names()
    with pytest.raises(UserError) as info:
        ReplayBuffer(10, policy="fifo")
    message = str(info.value)
    assert "'fifo'" in message
    for name in POLICIES.names():
        assert name in message


def test_keys_are_oldest_task_first():
    buffer = ReplayBuffer(8, seed=0)
    for t in range(2):
        buffer.add_task(_task(t, 10, 10))
    keys = buffer.keys()
    assert [k.split("/")[0] for k in keys] == ["t0"] * 4 + ["t1"] * 4
    assert keys == [k for task in buffer.keys_per_task() for k in task]
