"""The quality ladder of `vsr stream`: which rung keeps a live input in real time.

Pure and clock-free (the caller passes `now`), so it is tested by simulation. Rungs are
ordered from the best (index 0: the configured DDIM steps) to the cheapest (the fast
path: bicubic + back-projection, no model call). After every frame the worker reports
what that frame cost, how old it was when it left (latency) and the input's frame rate;
the controller answers with the rung for the next frame.

The rules, in order:
1. Drain: latency above `drain * budget` (a backlog: a slow start, a stall) -> the best
   rung whose estimated cost is at most half a frame interval, so the backlog shrinks
   at least as fast as real time; the cheapest rung if none is.
2. Overload: the current rung's smoothed cost above one frame interval (it cannot keep
   up however long we wait) -> the best cheaper rung that fits (`headroom` of an interval).
3. Climb: after `hold` seconds on a rung with latency below `calm * budget`, one rung
   up if its estimate fits. A rung whose cost was never measured is estimated from a
   measured one by `weights` (cost ~ DDIM steps); a rung with no estimate at all is
   never tried (one frame of unknown cost could be seconds: the worker measures the
   cheapest model rung in the background first, `observe`). A climb undone within
   `hold` doubles the hold (up to `max_hold`): quality never switches frame by frame. A
   rung measured too slow is tried again after `max_hold` seconds if one frame of it
   costs less than `calm * budget` (the machine may have been busy).
Costs are per-rung exponential moving averages of the measured per-frame cost.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LadderPolicy:
    """budget: the latency budget in seconds (`--max-latency`). headroom: a rung fits when
    its cost is at most `headroom` frame intervals. drain/calm: fractions of the budget
    above which the backlog must shrink / below which climbing is allowed. hold/max_hold:
    seconds on a rung before climbing (doubled after a failed climb). alpha: the weight
    of a new cost measurement in its rung's moving average. fresh: how long a rung's
    measure stands for it after the ladder left it (then it is rescaled from the rung
    in use)."""

    budget: float = 2.0
    headroom: float = 0.8
    drain: float = 0.5
    calm: float = 0.25
    hold: float = 2.0
    max_hold: float = 60.0
    alpha: float = 0.3
    fresh: float = 5.0

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"the latency budget must be positive, got {self.budget}")
        if not 0 < self.headroom <= 1 or not 0 < self.calm < self.drain <= 1:
            raise ValueError("need 0 < headroom <= 1 and 0 < calm < drain <= 1")


class Ladder:
    """The controller's state: the current rung and what each rung has cost.

    weights: relative cost of each rung (DDIM steps; 0 for the fast path), best first.
    start: the first rung (default the cheapest: output starts at once, quality climbs).
    """

    def __init__(self, weights: Sequence[float], policy: LadderPolicy | None = None, *, start: int | None = None):
        if not weights:
            raise ValueError("a ladder needs at least one rung")
        self.weights = tuple(float(w) for w in weights)
        self.policy = policy or LadderPolicy()
        self.rung = len(self.weights) - 1 if start is None else int(start)
        self.costs: list[float | None] = [None] * len(self.weights)
        self._measured_at = [0.0] * len(self.weights)
        self._now = 0.0
        self._changed_at: float | None = None
        self._hold = self.policy.hold
        self._climbed_at: float | None = None  # when the last climb happened (to spot a failed one)

    @property
    def bottom(self) -> int:
        return len(self.weights) - 1

    def estimate(self, j: int) -> float | None:
        """Rung j's per-frame cost: its own recent measure (within `fresh` seconds), else
        scaled by the weights from the nearest recently measured model rung (the machine's
        load shows in the rung in use), else its old measure, else None."""
        p = self.policy
        recent = [k for k, c in enumerate(self.costs) if c is not None and self._now - self._measured_at[k] <= p.fresh]
        if j in recent:
            return self.costs[j]
        scalable = [(abs(k - j), k) for k in recent if self.weights[k] > 0]
        if self.weights[j] > 0 and scalable:
            _, k = min(scalable)
            return self.costs[k] * self.weights[j] / self.weights[k]
        return self.costs[j]

    def _fits(self, j: int, limit: float) -> bool:
        est = self.estimate(j)
        return est is not None and est <= limit

    def observe(self, j: int, cost: float, now: float) -> None:
        """Record a cost measured for rung j away from the stream (the worker times one
        frame of the cheapest model rung in the background when the stream starts), so
        that no rung is ever tried blind."""
        prev = self.costs[j]
        self.costs[j] = cost if prev is None else (1 - self.policy.alpha) * prev + self.policy.alpha * cost
        self._measured_at[j] = now

    def update(self, cost: float, latency: float, fps: float, now: float) -> int:
        """Record the last frame (its `cost` in seconds at the current rung, its `latency`
        in seconds, the input's `fps`) and return the rung for the next frame."""
        p = self.policy
        r = self.rung
        prev = self.costs[r]
        self.costs[r] = cost if prev is None else (1 - p.alpha) * prev + p.alpha * cost
        self._measured_at[r] = now
        self._now = now
        if self._changed_at is None:
            self._changed_at = now
        interval = 1.0 / fps if fps and fps > 0 else 1.0 / 30
        new = r
        if latency > p.drain * p.budget and r < self.bottom:
            # 1. drain a backlog: only rungs known to run at twice real time or better
            new = next((j for j in range(r, self.bottom + 1)
                        if self.estimate(j) is not None and self.estimate(j) <= 0.5 * interval), self.bottom)
        elif self.costs[r] > interval and r < self.bottom:
            # 2. cannot keep up at this rung: the best cheaper one that fits
            new = next((j for j in range(r + 1, self.bottom + 1) if self._fits(j, p.headroom * interval)), self.bottom)
        elif r > 0 and now - self._changed_at >= self._hold and latency < p.calm * p.budget:
            # 3. calm for long enough: one rung up if it should fit (or was measured too slow
            #    long ago and one frame of it is cheap against the budget: a probe)
            est = self.estimate(r - 1)
            stale = self.costs[r - 1] is not None and now - self._measured_at[r - 1] > p.max_hold
            if est is not None and (est <= p.headroom * interval or (stale and est <= p.calm * p.budget)):
                new = r - 1
        if new > r and self._climbed_at is not None and now - self._climbed_at < p.hold:
            self._hold = min(2 * self._hold, p.max_hold)  # the climb did not hold: wait longer next time
            self._climbed_at = None
        elif self._climbed_at is not None and now - self._climbed_at >= p.hold:
            self._hold = p.hold  # the last climb held: back to the short hold
            self._climbed_at = None
        if new != r:
            if new < r:
                self._climbed_at = now
            self.rung = new
            self._changed_at = now
        return self.rung
