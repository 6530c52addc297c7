from __future__ import annotations

import pytest

from edge.clock import EventClock, FakeClock, MonotonicClock


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(1_000)
    assert clock.now_ns() == 1_000
    clock.advance(ms=2.5)
    assert clock.now_ns() == 2_501_000
    with pytest.raises(ValueError):
        clock.set(0)


def test_event_clock_is_just_before_the_newest_stamp_and_never_goes_back() -> None:
    clock = EventClock()
    assert clock.now_ns() == 0 and not clock.started
    clock.observe(500)
    clock.observe(300)
    assert clock.now_ns() == 499


def test_monotonic_clock_is_monotonic() -> None:
    clock = MonotonicClock()
    a = clock.now_ns()
    assert clock.now_ns() >= a > 0
