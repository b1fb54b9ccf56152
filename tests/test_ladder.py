"""The quality ladder (`pipelines/ladder.py`), driven by a simulated live input.

`simulate` plays a source at `fps` into a worker whose per-frame cost depends on the
rung (and may change over time: a busy machine): frames queue when the worker is slower
than the input, and each frame's latency is its wait plus its cost. No frame is dropped,
so the simulation also checks that the ladder alone keeps latency within the budget.
"""
from __future__ import annotations

from collections import Counter

import pytest

from vsr.pipelines.ladder import Ladder, LadderPolicy


def simulate(costs, *, fps=30.0, seconds=60.0, budget=2.0, start_delay=0.0, ladder=None):
    """costs(rung, t) -> seconds per frame. Returns (rungs per frame, latencies, ladder)."""
    ladder = ladder or Ladder([2, 1, 0], LadderPolicy(budget=budget))
    ladder.observe(1, costs(1, 0.0), 0.0)  # the worker's background measure of 1 step
    free_at = start_delay  # when the worker can take the next frame
    rungs, latencies = [], []
    for i in range(int(seconds * fps)):
        arrival = i / fps
        begin = max(arrival, free_at)
        rung = ladder.rung
        cost = costs(rung, begin)
        free_at = begin + cost
        latency = free_at - arrival
        rungs.append(rung)
        latencies.append(latency)
        ladder.update(cost, latency, fps, free_at)
    return rungs, latencies, ladder


def switches(rungs):
    return sum(a != b for a, b in zip(rungs, rungs[1:]))


def test_fast_machine_climbs_to_the_top_and_stays():
    # a GPU-like machine: 2 steps cost 12 ms at 30 fps -> the best rung fits
    rungs, lat, _ = simulate(lambda r, t: (0.012, 0.006, 0.001)[r])
    assert rungs[-1] == 0
    assert Counter(rungs)[0] > 0.85 * len(rungs)
    assert switches(rungs) == 2  # fast -> 1 step -> 2 steps, once each
    assert max(lat) < 0.05


def test_slow_machine_settles_on_the_fast_path_within_the_budget():
    # this CPU: a 360p -> 720p frame costs 0.8 s at 1 step; the fast path 15 ms
    rungs, lat, ladder = simulate(lambda r, t: (1.6, 0.8, 0.015)[r])
    assert max(lat) < 2.0  # the budget holds even while probing
    counts = Counter(rungs)
    assert counts == {2: len(rungs)}  # never a model frame: 1 step was measured at 0.8 s
    assert ladder.estimate(1) == pytest.approx(0.8)  # that measure, kept


def test_middle_rung_when_only_it_fits():
    rungs, lat, _ = simulate(lambda r, t: (0.05, 0.025, 0.002)[r])
    assert Counter(rungs[len(rungs) // 2:]) == {1: len(rungs) - len(rungs) // 2}
    assert max(lat) < 0.2


def test_load_spike_steps_down_then_climbs_back_with_hysteresis():
    def costs(r, t):
        busy = 3.0 if 20 <= t < 30 else 1.0  # another job takes the machine for 10 s
        return busy * (0.02, 0.01, 0.001)[r]

    rungs, lat, _ = simulate(costs, seconds=60)
    fps = 30
    assert all(r == 0 for r in rungs[15 * fps:20 * fps])  # the top rung before the spike
    assert all(r >= 1 for r in rungs[21 * fps:30 * fps])  # stepped down during it
    assert all(r == 0 for r in rungs[40 * fps:])  # and back up after it
    assert switches(rungs) <= 10  # not frame by frame
    assert max(lat) < 2.0


def test_backlog_at_start_is_drained_on_the_cheapest_rung():
    # the worker starts 3 s late (a slow start): latency is over the budget at first
    rungs, lat, _ = simulate(lambda r, t: (0.02, 0.01, 0.001)[r], start_delay=3.0, seconds=30)
    first_ok = next(i for i, x in enumerate(lat) if x < 0.5)
    assert all(r == 2 for r in rungs[:first_ok])
    assert first_ok < 5 * 30  # drained within seconds
    assert rungs[-1] == 0


def test_oscillating_costs_do_not_flip_every_frame():
    # the top rung costs just about one frame interval: it must not alternate each frame
    rungs, lat, _ = simulate(lambda r, t: (0.034, 0.017, 0.001)[r], seconds=120)
    assert switches(rungs) <= 12
    assert max(lat) < 2.0


def test_a_rung_without_any_estimate_is_never_tried():
    ladder = Ladder([2, 1, 0])
    for k in range(300):  # 10 s of calm at the fast path, nothing known about the model rungs
        assert ladder.update(0.001, 0.01, 30, k / 30) == 2


def test_estimates_scale_with_steps_and_policy_is_validated():
    ladder = Ladder([4, 2, 1, 0])
    ladder.update(0.1, 0.0, 30, 0.0)  # measured at the cheapest rung: nothing to scale from
    assert ladder.estimate(0) is None
    ladder.rung = 2
    ladder.update(0.05, 0.0, 30, 1.0)
    assert ladder.estimate(0) == pytest.approx(0.2)
    assert ladder.estimate(1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="budget"):
        LadderPolicy(budget=0)
