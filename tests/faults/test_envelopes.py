"""Fault matrix, wire level: bad envelopes and bad sequences/stamps injected into a live daemon
(real process, real sensors, real model) on its ipc ingress. For every case: the daemon lives,
an estimate comes every hop, the real sensors stay ``ok``, and exactly the expected counters
move (malformed per link and reason, lost / duplicates / restarts, late)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import zmq

from edge.clock import monotonic_ns
from tests.faults.support import MAX_PAYLOAD, Rig, envelope, hops_ok, rig, working

HOUR_NS = 3600 * 10**9


def _header_doc(**changes: Any) -> bytes:
    doc = json.loads(envelope("audio", "nan", 0)[1])
    doc.update(changes)
    return json.dumps(doc).encode()  # json.dumps writes NaN / Infinity literals


def garbage() -> list[list[bytes]]:
    rng = np.random.default_rng(0)
    return [[b"audio/garbage", rng.bytes(40), rng.bytes(100)] for _ in range(5)]


def truncated() -> list[list[bytes]]:
    t, h, p = envelope("audio", "trunc", 0)
    return [[t, h, p[:-1]], [t, h[:-7], p], [t, h]]


def oversized() -> list[list[bytes]]:
    t, h, _ = envelope("audio", "big", 0)
    big = np.zeros(MAX_PAYLOAD // 2 + 8, np.int16)  # just over the payload limit
    t2, h2, p2 = envelope("audio", "big", 1, payload=big)
    padded = h[:-1] + b" " * 5000 + b"}"  # valid JSON, over the header limit
    return [[t2, h2, p2], [t, padded, b""]]


def wrong_version() -> list[list[bytes]]:
    t, _, p = envelope("audio", "v2", 0)
    return [[t, _header_doc(v=2, sensor="v2"), p], [t, _header_doc(v="1", sensor="v2"), p]]


def nan_inf() -> list[list[bytes]]:
    t, _, p = envelope("audio", "nan", 0)
    nan_payload = np.array([np.nan, np.inf, -np.inf], np.float32)
    return [
        [t, _header_doc(t_mono_ns=float("nan")), p],
        [t, _header_doc(seq=float("inf")), p],
        [t, _header_doc(t_wall_ns=float("-inf")), p],
        envelope("audio", "nan", 1, payload=nan_payload),  # float audio: not what it expects
    ]


def sequences() -> list[list[bytes]]:
    seqs = [0, 1, 1, 2, 4, 3, 10]  # duplicate, gap of 1, back by 1 (reorder), gap of 5
    return [envelope("text", "seqs", s, kind="heartbeat") for s in seqs]


def future_and_past() -> list[list[bytes]]:
    now = monotonic_ns()
    return [
        envelope("audio", "future", 0, t_mono_ns=now + 10 * 10**9),
        envelope("video", "future", 0, kind="heartbeat", t_mono_ns=now + HOUR_NS),
        envelope("audio", "past", 0, t_mono_ns=max(1, now - HOUR_NS)),  # long closed: late
    ]


def wall_clock_steps() -> list[list[bytes]]:
    wall = time.time_ns()
    steps = [wall, wall - HOUR_NS, wall + 24 * HOUR_NS, 0]  # NTP step back, forward, unset
    return [envelope("audio", "wall", i, t_wall_ns=w) for i, w in enumerate(steps)]


@dataclass(frozen=True)
class Case:
    name: str
    messages: Callable[[], list[list[bytes]]]
    malformed: dict[str, dict[str, int]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # health path "lost.text" -> delta


CASES = [
    Case("garbage", garbage, {"audio/garbage": {"bad_header_json": 5}}),
    Case(
        "truncated",
        truncated,
        {"audio/trunc": {"size_mismatch": 1, "bad_header_json": 1, "part_count": 1}},
    ),
    Case(
        "oversized",
        oversized,
        {"audio/big": {"payload_too_large": 1, "header_too_large": 1}},
    ),
    Case("wrong_version", wrong_version, {"audio/v2": {"bad_version": 2}}),
    Case("nan_inf", nan_inf, {"audio/nan": {"bad_field": 3, "bad_payload": 1}}),
    # a seq going back is read as a sensor restart (one ZeroMQ connection never reorders)
    Case(
        "seq_dup_reorder_gap",
        sequences,
        {},
        {"duplicates.text": 1, "lost.text": 1 + 6, "restarts.text": 1},
    ),
    Case(
        "future_and_past_stamps",
        future_and_past,
        {"audio/future": {"future_stamp": 1}, "video/future": {"future_stamp": 1}},
        {"late": 1},
    ),
    Case("wall_clock_steps", wall_clock_steps, {}, {"lost.audio": 0, "late": 0}),
]


def counter(health: dict[str, Any], path: str) -> int:
    value: Any = health
    for key in path.split("."):
        value = value.get(key, 0) if isinstance(value, dict) else 0
    return int(value)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(tmp_path_factory.mktemp("envelopes")) as r:
        yield r


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_envelope_is_counted_and_dropped_and_estimates_keep_coming(
    live: Rig, case: Case
) -> None:
    collector = live.collector
    before = collector.estimates[-1]["health"]
    t0 = monotonic_ns()
    for parts in case.messages():
        live.injector.send_multipart(parts)
    time.sleep(0.05)
    marker = monotonic_ns()
    # the first estimate closing after the injection has been counted (ipc keeps order)
    after_est = collector.wait_for(lambda e: e["t_close_ns"] > marker + 250_000_000, 10)
    assert after_est is not None, live.log_tail()
    after = after_est["health"]
    assert live.daemon is not None and live.daemon.poll() is None, live.log_tail()
    for link, reasons in case.malformed.items():
        got = after["malformed"].get(link, {})
        was = before["malformed"].get(link, {})
        assert {r: got.get(r, 0) - was.get(r, 0) for r in reasons} == reasons, after["malformed"]
    for path, delta in case.counters.items():
        assert counter(after, path) - counter(before, path) == delta, (path, after)
    window = collector.since(t0)
    assert hops_ok(window), [e["t_end_ns"] for e in window]
    assert all(working(e) for e in window), [e["availability"] for e in window]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_message_beyond_the_transport_limit_drops_that_peer_only(live: Rig) -> None:
    """Over ZMQ_MAXMSGSIZE libzmq disconnects the sender; nothing is decoded or counted."""
    sock = live.ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(live.ingress)
        time.sleep(0.3)
        t0 = monotonic_ns()
        huge = envelope("audio", "huge", 0, payload=np.zeros(4 * MAX_PAYLOAD, np.int16))
        sock.send_multipart(huge)
        marker = monotonic_ns()
        after = live.collector.wait_for(lambda e: e["t_close_ns"] > marker + 400_000_000, 10)
        assert after is not None and "audio/huge" not in after["health"]["malformed"]
        window = live.collector.since(t0)
        assert hops_ok(window) and window[-1]["availability"]["audio"] == "ok"
    finally:
        sock.close(linger=0)
