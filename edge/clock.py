"""Injected clocks: the pure cores ask a `Clock` for "now" and never read time themselves.

- `MonotonicClock` live: CLOCK_MONOTONIC, shared by every process on the device, so a frame's
  capture stamp and the daemon's "now" are directly comparable.
- `FakeClock` tests: time moves only when the test says so ("dead after exactly 200 ms").
- `EventClock` replay: time is the newest event stamp seen, so windows close exactly as they
  would have live and a replay gives the same estimates at any speed.
"""

from __future__ import annotations

import time
from typing import Protocol


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def wall_ns() -> int:
    return time.time_ns()


class Clock(Protocol):
    def now_ns(self) -> int: ...


class MonotonicClock:
    """The live clock."""

    def now_ns(self) -> int:
        return monotonic_ns()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = start_ns

    def now_ns(self) -> int:
        return self._now_ns

    def advance(self, ns: int = 0, *, ms: float = 0.0) -> int:
        step = ns + round(ms * 1_000_000)
        if step < 0:
            raise ValueError("a clock does not go backwards")
        self._now_ns += step
        return self._now_ns

    def set(self, now_ns: int) -> None:
        if now_ns < self._now_ns:
            raise ValueError("a clock does not go backwards")
        self._now_ns = now_ns


class EventClock:
    """Replay clock: "now" is just before the newest event stamp observed.

    Events arrive in stamp order in replay; another event with the same stamp may still come,
    so a window may only close once time is strictly past its close time. Reporting
    ``newest - 1`` gives exactly that with the same ``close_ns <= now`` rule as live.
    Before the first event the clock reads 0 (nothing is due).
    """

    def __init__(self) -> None:
        self._newest_ns: int | None = None

    def observe(self, t_ns: int) -> None:
        if self._newest_ns is None or t_ns > self._newest_ns:
            self._newest_ns = t_ns

    def now_ns(self) -> int:
        return 0 if self._newest_ns is None else self._newest_ns - 1

    @property
    def started(self) -> bool:
        return self._newest_ns is not None
