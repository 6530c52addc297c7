"""The watchdog as a pure state machine over a fake clock (no sleeps)."""

from __future__ import annotations

from edge.clock import FakeClock
from edge.config import WatchdogConfig
from edge.watchdog import Watchdog

MS = 1_000_000
CFG = WatchdogConfig(heartbeat_ms=100, miss_limit=2, stale_ms=1000)


class Link:
    """Drives one sensor link: heartbeats and frames stamped with the fake clock."""

    def __init__(self, dog: Watchdog, clock: FakeClock, modality: str = "audio") -> None:
        self.dog, self.clock, self.modality, self.seq = dog, clock, modality, 0

    def send(self, kind: str = "heartbeat", state: str = "ok", seq: int | None = None) -> None:
        self.seq = self.seq + 1 if seq is None else seq
        self.dog.observe(
            self.modality,
            sensor="s",
            kind=kind,
            seq=self.seq,
            t_ns=self.clock.now_ns(),
            state=state,
        )

    def run(self, ms: int, *, frames: bool = True, state: str = "ok") -> None:
        """`ms` of life: a heartbeat every 100 ms and (optionally) a frame every 100 ms."""
        for _ in range(ms // 100):
            self.clock.advance(ms=50)
            if frames:
                self.send("frame")
            self.clock.advance(ms=50)
            self.send("heartbeat", state)


def make() -> tuple[Watchdog, FakeClock, Link]:
    clock = FakeClock(10_000 * MS)
    dog = Watchdog(CFG, ("audio", "video", "text"))
    return dog, clock, Link(dog, clock)


def test_dead_until_the_first_heartbeat_then_ok() -> None:
    dog, clock, link = make()
    assert dog.state_at("audio", clock.now_ns()) == "dead"
    link.send("heartbeat")
    assert dog.state_at("audio", clock.now_ns()) == "ok"
    assert dog.state_at("video", clock.now_ns()) == "dead"


def test_dead_after_exactly_miss_limit_intervals_of_silence() -> None:
    dog, clock, link = make()
    link.run(500)
    last = clock.now_ns()
    assert dog.state_at("audio", last + 200 * MS) == "ok"
    assert dog.state_at("audio", last + 200 * MS + 1) == "dead"


def test_recovers_when_the_link_returns_and_counts_the_restart() -> None:
    dog, clock, link = make()
    link.run(500)
    clock.advance(ms=1000)
    assert dog.state_at("audio", clock.now_ns()) == "dead"
    link.send("heartbeat", seq=0)  # restarted process: sequence starts over
    assert dog.state_at("audio", clock.now_ns()) == "ok"
    assert dog.counters()["audio"].restarts == 1


def test_heartbeats_without_frames_turn_stale_after_stale_ms() -> None:
    dog, clock, link = make()
    link.run(300)
    last_frame = clock.now_ns() - 50 * MS
    link.run(1500, frames=False)
    assert dog.state_at("audio", last_frame + 1000 * MS) == "ok"
    assert dog.state_at("audio", last_frame + 1000 * MS + 1) == "stale"
    assert dog.state_at("audio", clock.now_ns()) == "stale"
    link.send("frame")
    assert dog.state_at("audio", clock.now_ns()) == "ok"


def test_a_link_that_just_came_up_is_not_stale_yet() -> None:
    dog, clock, link = make()
    link.run(900, frames=False)
    assert dog.state_at("audio", clock.now_ns()) == "ok"
    link.run(300, frames=False)
    assert dog.state_at("audio", clock.now_ns()) == "stale"


def test_empty_and_disabled_are_what_the_sensor_reports() -> None:
    dog, clock, link = make()
    link.run(300, frames=False, state="empty")
    assert dog.state_at("audio", clock.now_ns()) == "empty"
    link.run(200, frames=False, state="disabled")
    assert dog.state_at("audio", clock.now_ns()) == "disabled"
    clock.advance(ms=300)
    assert dog.state_at("audio", clock.now_ns()) == "dead"  # silence beats any report


def test_config_disabled_modality_is_always_disabled() -> None:
    clock = FakeClock(0)
    dog = Watchdog(CFG, ("audio", "video"), disabled=("video",))
    assert dog.state_at("video", clock.now_ns()) == "disabled"


def test_state_as_of_a_past_time_ignores_later_stamps_whatever_the_arrival_order() -> None:
    dog, clock, link = make()
    link.run(500)
    t_check = clock.now_ns() + 250 * MS  # 250 ms of silence by then -> dead
    clock.advance(ms=300)
    link.send("heartbeat")  # stamped after t_check, arrives before we ask
    assert dog.state_at("audio", t_check) == "dead"
    assert dog.state_at("audio", clock.now_ns()) == "ok"
    # and a late-arriving older stamp is slotted into place
    dog.observe("audio", sensor="s", kind="heartbeat", seq=99, t_ns=t_check - 10 * MS, state="ok")
    assert dog.state_at("audio", t_check) == "ok"


def test_sequence_gaps_count_lost_messages() -> None:
    dog, clock, link = make()
    for seq in (1, 2, 5, 6, 6, 10):
        clock.advance(ms=10)
        link.send(seq=seq)
    counters = dog.counters()["audio"]
    assert counters.lost == 2 + 3 and counters.duplicates == 1


def test_history_is_bounded_and_old_questions_still_answer() -> None:
    dog, clock, link = make()
    link.run(20_000)
    assert len(dog._links["audio"].stamps) == CFG.history
    assert dog.state_at("audio", clock.now_ns()) == "ok"
    assert dog.state_at("audio", clock.now_ns() - 10_000 * MS) in ("ok", "stale")


def test_changes_reports_each_transition_once() -> None:
    dog, clock, link = make()
    link.run(200)
    assert ("audio", "dead", "ok") in dog.changes(clock.now_ns())
    assert dog.changes(clock.now_ns()) == []
    clock.advance(ms=201)
    assert dog.changes(clock.now_ns()) == [("audio", "ok", "dead")]


def test_last_at_or_before_answers_for_messages_and_frames() -> None:
    dog, clock, link = make()
    link.run(300)  # frames at +50, heartbeats at +100 ms
    now = clock.now_ns()
    assert dog.last_at_or_before("audio", now) == now
    assert dog.last_at_or_before("audio", now, frames_only=True) == now - 50 * MS
    assert dog.last_at_or_before("audio", now - 60 * MS) == now - 100 * MS
    assert dog.last_at_or_before("video", now) is None
