"""Event-time windows over a fake clock."""

from __future__ import annotations

from edge.clock import FakeClock
from edge.config import WindowConfig
from edge.windowing import Windower

MS = 1_000_000
CFG = WindowConfig(window_ms=2000, hop_ms=500, max_lag_ms=100, max_future_ms=1000)
T0 = 1_000_000 * MS  # an hop-aligned start


def make(start: int = T0) -> tuple[Windower, FakeClock]:
    clock = FakeClock(start)
    win = Windower(CFG, ("audio", "video"))
    win.start(clock.now_ns())
    return win, clock


def test_windows_end_on_hop_multiples_and_close_after_the_lag() -> None:
    win, clock = make(T0 + 123 * MS)
    assert win.next_close_ns() == T0 + 600 * MS
    clock.set(T0 + 600 * MS - 1)
    assert win.due(clock.now_ns()) == []
    clock.set(T0 + 600 * MS)
    (w,) = win.due(clock.now_ns())
    assert (w.start_ns, w.end_ns, w.close_ns) == (T0 - 1500 * MS, T0 + 500 * MS, T0 + 600 * MS)
    assert w.judged_ns == w.close_ns - CFG.settle_ms * MS


def test_a_window_holds_exactly_the_frames_stamped_inside_it_in_stamp_order() -> None:
    win, clock = make()
    clock.set(T0 + 400 * MS)
    for t_ms in (499, 100, 0, 500, 250):  # arrival order != stamp order
        assert win.add("audio", T0 + t_ms * MS, t_ms, clock.now_ns()) == "ok"
    clock.set(T0 + 600 * MS)
    (w,) = win.due(clock.now_ns())
    assert w.frames["audio"] == [0, 100, 250, 499]  # 500 is in the next window, not this one
    assert w.frames["video"] == []
    assert w.newest_stamp_ns() == T0 + 499 * MS


def test_overlapping_windows_share_frames_and_never_see_the_future() -> None:
    win, clock = make()
    clock.set(T0 + 100 * MS)
    win.add("video", T0 + 100 * MS, "a", clock.now_ns())
    clock.set(T0 + 1600 * MS)
    win.add("video", T0 + 1550 * MS, "b", clock.now_ns())
    windows = win.due(clock.now_ns())
    assert [w.end_ns - T0 for w in windows] == [500 * MS, 1000 * MS, 1500 * MS]
    assert [w.frames["video"] for w in windows] == [["a"], ["a"], ["a"]]
    clock.set(T0 + 2100 * MS)
    (w,) = win.due(clock.now_ns())
    assert w.frames["video"] == ["a", "b"]


def test_frames_for_a_closed_window_are_late_and_dropped() -> None:
    win, clock = make()
    clock.set(T0 + 600 * MS)
    assert len(win.due(clock.now_ns())) == 1
    assert win.add("audio", T0 + 499 * MS, "late", clock.now_ns()) == "late"
    assert win.add("audio", T0 + 500 * MS, "fine", clock.now_ns()) == "ok"
    assert win.counters.late == 1
    clock.set(T0 + 1100 * MS)
    (w,) = win.due(clock.now_ns())
    assert w.frames["audio"] == ["fine"]


def test_never_waits_for_a_missing_modality() -> None:
    win, clock = make()
    emitted = []
    for _ in range(10):
        clock.advance(ms=500)
        emitted += win.due(clock.now_ns())
    clock.advance(ms=100)
    emitted += win.due(clock.now_ns())
    assert len(emitted) == 10  # one per hop, nothing ever arrived


def test_future_frames_are_rejected() -> None:
    win, clock = make()
    assert win.add("audio", clock.now_ns() + 1001 * MS, 0, clock.now_ns()) == "future"
    assert win.counters.future == 1


def test_a_clock_jump_skips_windows_instead_of_emitting_a_backlog() -> None:
    win, clock = make()
    clock.advance(ms=3600 * 1000)
    windows = win.due(clock.now_ns())
    assert len(windows) == CFG.max_catchup_windows
    # windows ending at T0+0.5 s .. T0+3599.5 s were due (the one ending at 3600 s is not)
    assert win.counters.skipped_windows + len(windows) == 7199
    assert windows[-1].close_ns <= clock.now_ns() < windows[-1].close_ns + 500 * MS


def test_buffers_are_bounded_and_pruned() -> None:
    win, clock = make()
    cfg_limit = CFG.max_frames_per_modality
    for i in range(cfg_limit + 10):
        win.add("audio", T0 + i * 1000, i, clock.now_ns())
    assert win.buffered()["audio"] == cfg_limit and win.counters.overflow == 10
    clock.advance(ms=3000)
    win.due(clock.now_ns())
    assert win.buffered()["audio"] == 0
