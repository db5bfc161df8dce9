"""The high-frequency tuner's math: arrival envelopes and the scaling rule, pure and cheap per arrival.

An arrival envelope (network calculus' arrival curve, as InferLine's tuner keeps it) gives, for each
window size w, the most arrivals seen in any window of w seconds ending at an arrival within the
last `history_s` seconds (all time when None): max_j #{i : t_j − w < t_i ≤ t_j}. Each window keeps a
pointer into the recent arrivals (the count in the window ending now) and a deque of (time, count)
decreasing in count (the maximum over the history): O(windows) amortised per arrival.

The tuner compares the observed envelope with the planned one (the planning trace's). A plan gives
stage s r_s replicas for the planned envelope E_p; at the plan's utilisation, r replicas carry
E_p(w) × r / r_s arrivals per window w (capacity = replicas × throughput at the batch size, scaled by
the planned envelope). A stage needs ceil(r_s × max_w E_o(w) / E_p(w)) replicas: it is scaled up to
that as soon as the observed envelope E_o exceeds its capacity, and down only after the envelope has
stayed within the capacity of fewer replicas for `down_after_s` (to the most needed during the lull).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from veloxserve.errors import invalid_parameter
from veloxserve.pipelines.plans import Plan
from veloxserve.pipelines.profiles import ProfileSet, by_stage_and_kind

_COMPACT = 4096  # drop arrivals older than the largest window once this many have piled up


class ArrivalEnvelope:
    """The max arrivals in any window of each size, over a sliding history (or all time)."""

    def __init__(self, windows_s: Sequence[float] = (0.01, 0.1, 1.0), history_s: float | None = None) -> None:
        windows = tuple(sorted({float(w) for w in windows_s})) if windows_s else ()
        if not windows or not all(math.isfinite(w) and w > 0 for w in windows):
            raise invalid_parameter("windows_s", "an arrival envelope", "window sizes in seconds > 0", windows_s)
        if history_s is not None and not (math.isfinite(history_s) and history_s > 0):
            raise invalid_parameter("history_s", "an arrival envelope", "seconds > 0, or None for all time", history_s)
        self.windows_s = windows
        self.history_s = history_s
        self._times: list[float] = []
        self._base = 0  # absolute index of _times[0]
        self._left = [0] * len(windows)  # absolute index of the first arrival inside each window
        self._peaks: list[deque[tuple[float, int]]] = [deque() for _ in windows]
        self.last = -math.inf
        self.arrivals = 0

    @classmethod
    def of_trace(cls, trace: Iterable[float], windows_s: Sequence[float] = (0.01, 0.1, 1.0)) -> ArrivalEnvelope:
        """The envelope of a whole trace (the planned envelope), all-time history."""
        envelope = cls(windows_s)
        envelope.observe_many(trace)
        return envelope

    def observe(self, t: float) -> None:
        """One arrival at time t (seconds); a time before the last is taken as the last."""
        if t < self.last:
            t = self.last
        self.last = t
        times = self._times
        times.append(t)
        self.arrivals += 1
        end = self._base + len(times)
        base, history = self._base, self.history_s
        for j, w in enumerate(self.windows_s):
            left, edge = self._left[j], t - w
            while times[left - base] <= edge:
                left += 1
            self._left[j] = left
            count = end - left
            peaks = self._peaks[j]
            while peaks and peaks[-1][1] <= count:
                peaks.pop()
            peaks.append((t, count))
            if history is not None:
                while peaks[0][0] < t - history:
                    peaks.popleft()
        self._compact()

    def observe_many(self, ts: Iterable[float]) -> None:
        """Many arrivals, in order (vectorised: the same state as observing them one by one)."""
        new = np.asarray(list(ts) if not isinstance(ts, np.ndarray) else ts, dtype=np.float64)
        if new.size == 0:
            return
        new = np.maximum.accumulate(np.maximum(new, self.last))
        old = np.asarray(self._times, dtype=np.float64)
        allt = np.concatenate([old, new])
        positions = np.arange(old.size, allt.size)
        end_t = float(new[-1])
        for j, w in enumerate(self.windows_s):
            first = np.searchsorted(allt, new - w, side="right")
            counts = positions - first + 1
            keep = np.ones(counts.size, dtype=bool)
            if self.history_s is not None:
                keep &= new >= end_t - self.history_s
            later = np.maximum.accumulate(counts[::-1])[::-1]
            keep[:-1] &= counts[:-1] > later[1:]  # the staircase of maxima over the rest of the batch
            peaks = self._peaks[j]
            top = int(counts[keep].max())
            while peaks and peaks[-1][1] <= top:
                peaks.pop()
            peaks.extend(zip(new[keep].tolist(), counts[keep].tolist(), strict=True))
            if self.history_s is not None:
                while peaks[0][0] < end_t - self.history_s:
                    peaks.popleft()
            self._left[j] = self._base + int(np.searchsorted(allt, end_t - w, side="right"))
        self._times = allt.tolist()
        self.last = end_t
        self.arrivals += int(new.size)
        self._compact()

    def _compact(self) -> None:
        drop = min(self._left) - self._base
        if drop > _COMPACT and drop * 2 > len(self._times):
            del self._times[:drop]
            self._base += drop

    def _index(self, window_s: float) -> int:
        for j, w in enumerate(self.windows_s):
            if math.isclose(w, window_s, rel_tol=1e-9):
                return j
        raise invalid_parameter(
            "window_s", "an arrival envelope", f"one of its windows {list(self.windows_s)}", window_s
        )

    def max_count(self, window_s: float, now: float | None = None) -> int:
        """The most arrivals in any `window_s` window ending at an arrival within the history before `now`."""
        peaks = self._peaks[self._index(window_s)]
        if self.history_s is not None and now is not None:
            while peaks and peaks[0][0] < now - self.history_s:
                peaks.popleft()
        return peaks[0][1] if peaks else 0

    def max_rate(self, window_s: float, now: float | None = None) -> float:
        """max_count / window: the peak rate (queries/s) seen at this time scale."""
        return self.max_count(window_s, now) / window_s

    def counts(self, now: float | None = None) -> dict[float, int]:
        return {w: self.max_count(w, now) for w in self.windows_s}


@dataclass(frozen=True)
class ScaleAction:
    stage: str
    replicas_from: int
    replicas_to: int
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "replicas_from": self.replicas_from,
            "replicas_to": self.replicas_to,
            "reason": self.reason,
        }


class Tuner:
    """Scales each stage of a plan with the observed arrival envelope: up at once, down after a lull."""

    def __init__(
        self,
        plan: Plan,
        profiles: ProfileSet,
        planned_envelope: ArrivalEnvelope,
        *,
        up_immediately: bool = True,
        up_after_s: float = 1.0,
        down_after_s: float = 15.0,
        history_s: float | None = None,
        min_replicas: int = 1,
        max_replicas: int | None = None,
    ) -> None:
        if not (math.isfinite(down_after_s) and down_after_s >= 0):
            raise invalid_parameter("down_after_s", "the tuner", "seconds >= 0", down_after_s)
        if not (math.isfinite(up_after_s) and up_after_s >= 0):
            raise invalid_parameter("up_after_s", "the tuner", "seconds >= 0", up_after_s)
        if not isinstance(min_replicas, int) or min_replicas < 1:
            raise invalid_parameter("min_replicas", "the tuner", "an int >= 1", min_replicas)
        self.plan = plan
        table = by_stage_and_kind(profiles)
        self.throughput = {s: table[s][sp.kind].throughput(sp.batch_size) for s, sp in plan.stages.items()}
        self.planned = {w: max(1, planned_envelope.max_count(w)) for w in planned_envelope.windows_s}
        windows = planned_envelope.windows_s
        self.observed = ArrivalEnvelope(windows, history_s if history_s is not None else max(windows))
        self.up_immediately, self.up_after_s, self.down_after_s = up_immediately, up_after_s, down_after_s
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self.replicas = {s: sp.replicas for s, sp in plan.stages.items()}
        self._over_since: dict[str, float] = {}
        self._lull_since: dict[str, float] = {}
        self._lull_need: dict[str, int] = {}
        self.actions: list[ScaleAction] = []

    def observe(self, t: float) -> None:
        self.observed.observe(t)

    def observe_many(self, ts: Iterable[float]) -> None:
        self.observed.observe_many(ts)

    def load(self, now: float) -> tuple[float, float]:
        """(the largest observed/planned envelope ratio over the windows, the window where it is)."""
        counts = self.observed.counts(now)
        w = max(self.windows, key=lambda x: counts[x] / self.planned[x])
        return counts[w] / self.planned[w], w

    @property
    def windows(self) -> tuple[float, ...]:
        return self.observed.windows_s

    def needed(self, stage: str, ratio: float) -> int:
        """Replicas of `stage` carrying `ratio` × the planned envelope at the plan's utilisation."""
        need = max(self.min_replicas, math.ceil(self.plan.stages[stage].replicas * ratio - 1e-9))
        return need if self.max_replicas is None else min(self.max_replicas, need)

    def decide(self, now: float) -> list[ScaleAction]:
        """The scaling actions due at `now` (applied to `self.replicas` and recorded in `self.actions`)."""
        ratio, w = self.load(now)
        seen = self.observed.max_count(w, now)
        out = []
        for stage, current in self.replicas.items():
            need = self.needed(stage, ratio)
            per_window = self.planned[w] * current / self.plan.stages[stage].replicas
            if need > current:
                self._lull_since.pop(stage, None)
                since = self._over_since.setdefault(stage, now)
                if self.up_immediately or now - since >= self.up_after_s:
                    why = (
                        f"{seen} arrivals in a {w:g} s window, above the {per_window:.0f} that {current} "
                        f"replicas carry at the plan's utilisation ({self.throughput[stage] * current:.0f} queries/s "
                        f"at batch {self.plan.stages[stage].batch_size})"
                    )
                    out.append(ScaleAction(stage, current, need, why))
                    self._over_since.pop(stage, None)
                continue
            self._over_since.pop(stage, None)
            if need < current:
                since = self._lull_since.setdefault(stage, now)
                self._lull_need[stage] = max(self._lull_need.get(stage, 0), need)
                if now - since >= self.down_after_s:
                    to = self._lull_need.pop(stage)
                    why = f"the envelope stayed within what {to} replicas carry for {now - since:.1f} s"
                    out.append(ScaleAction(stage, current, to, why))
                    self._lull_since.pop(stage)
            else:
                self._lull_since.pop(stage, None)
                self._lull_need.pop(stage, None)
        for action in out:
            self.replicas[action.stage] = action.replicas_to
        self.actions.extend(out)
        return out
