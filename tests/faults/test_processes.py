"""Fault matrix, process level: SIGKILL / restart and SIGSTOP / SIGCONT of each sensor, a
flapping sensor, every sensor gone at once, a vanished telemetry subscriber, and the daemon
itself SIGKILLed and restarted -- real processes on ipc, the real model, fast heartbeats.

For every fault: the daemon lives and publishes an estimate every hop, the faulty modality
gets the right reason within the watchdog's budget and is not used, the others keep working,
and it recovers. (Heartbeat-only -> ``stale``, the demo's --kill/--stall and a stalled telemetry
subscriber are covered in tests/test_daemon_processes.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge.clock import monotonic_ns
from tests.faults.support import DEAD_BUDGET_NS, SENSORS, hops_ok, rig, working
from tests.helpers import stop


def first(estimates: list[dict[str, Any]], t_ns: int, modality: str, state: str) -> int:
    return next(
        e["t_close_ns"]
        for e in estimates
        if e["t_close_ns"] > t_ns and e["availability"][modality] == state
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("modality", list(SENSORS))
def test_sensor_killed_restarted_stopped_and_continued(tmp_path: Path, modality: str) -> None:
    others = [m for m in SENSORS if m != modality]
    with rig(tmp_path) as r:
        col = r.collector
        t_start = monotonic_ns()
        killed = r.kill_sensor(modality)
        assert col.wait_for(lambda e: e["availability"][modality] == "dead", 5), r.log_tail()
        time.sleep(0.5)
        r.start_sensor(modality)
        restarted = monotonic_ns()
        back = col.wait_for(
            lambda e: e["t_close_ns"] > restarted and working(e, modality), 20
        )
        assert back is not None, r.log_tail()
        stopped = r.signal(modality, signal.SIGSTOP)
        assert col.wait_for(lambda e: e["t_close_ns"] > stopped + DEAD_BUDGET_NS, 5)
        time.sleep(0.4)
        resumed = r.signal(modality, signal.SIGCONT)
        after = col.wait_for(lambda e: e["t_close_ns"] > resumed and working(e, modality), 10)
        assert after is not None, r.log_tail()
        time.sleep(0.5)
        assert r.daemon is not None and r.daemon.poll() is None
        assert all(p.poll() is None for p in r.sensors.values())
        estimates = col.since(t_start)

    assert hops_ok(estimates), "an estimate every hop through every fault"
    # dead within miss_limit x heartbeat + one hop of the kill and of the stop
    assert first(estimates, killed, modality, "dead") <= killed + DEAD_BUDGET_NS
    assert first(estimates, stopped, modality, "dead") <= stopped + DEAD_BUDGET_NS
    while_dead = [
        e
        for e in estimates
        if killed + DEAD_BUDGET_NS < e["t_close_ns"] < restarted
        or stopped + DEAD_BUDGET_NS < e["t_close_ns"] < resumed
    ]
    assert while_dead and all(e["availability"][modality] == "dead" for e in while_dead)
    assert all(modality not in e["used"] and modality not in e["router"] for e in while_dead)
    assert all(working(e, *others) for e in estimates), "the other sensors are unaffected"
    # counters: the restarted process began at seq 0 again; SIGSTOP loses nothing
    health = estimates[-1]["health"]
    assert health["restarts"][modality] == 1 and health["lost"][modality] == 0, health
    assert health["malformed"] == {} and estimates[-1]["error"] is None


FLAP_S = 0.15  # > miss_limit x heartbeat (100 ms): each stop is long enough to read dead


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_flapping_sensor_and_every_sensor_gone_at_once(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        col = r.collector
        t_start = monotonic_ns()
        for _ in range(8):  # audio flaps: 150 ms away, 150 ms back
            r.signal("audio", signal.SIGSTOP)
            time.sleep(FLAP_S)
            r.signal("audio", signal.SIGCONT)
            time.sleep(FLAP_S)
        flapped = monotonic_ns()
        assert col.wait_for(lambda e: e["t_close_ns"] > flapped + 400_000_000, 5)
        gone = monotonic_ns()
        for m in SENSORS:
            r.signal(m, signal.SIGSTOP)
        assert col.wait_for(lambda e: e["t_close_ns"] > gone + DEAD_BUDGET_NS + 600_000_000, 5)
        for m in SENSORS:
            r.signal(m, signal.SIGCONT)
        returned = monotonic_ns()
        assert col.wait_for(lambda e: e["t_close_ns"] > returned and working(e), 10)
        estimates = col.since(t_start)
        assert r.daemon is not None and r.daemon.poll() is None

    assert hops_ok(estimates)
    flapping = [e for e in estimates if e["t_close_ns"] < flapped]
    assert {e["availability"]["audio"] for e in flapping} <= {"ok", "dead"}
    assert all(working(e, "video", "text") for e in flapping)
    settled = [e for e in estimates if flapped + 300_000_000 < e["t_close_ns"] < gone]
    assert settled and all(working(e) for e in settled), "flapping ends: ok again at once"
    nothing = [e for e in estimates if gone + DEAD_BUDGET_NS < e["t_close_ns"] < returned]
    assert nothing, "estimates keep coming with no sensor at all"
    for e in nothing:
        assert set(e["availability"].values()) == {"dead"} and e["used"] == []
        assert e["router"] == {} and abs(sum(e["probs"].values()) - 1) < 1e-6


SUBSCRIBER = """
import sys, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.SUBSCRIBE, b"")
sock.connect(sys.argv[1])
while True:
    sock.recv_multipart()
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_vanished_subscriber_then_daemon_sigkilled_and_restarted(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        col = r.collector
        sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, r.telemetry])
        try:
            time.sleep(1.0)
            t0 = monotonic_ns()
            sub.kill()  # a dashboard that crashed mid-stream
            sub.wait(5)
            vanished = monotonic_ns()
            assert col.wait_for(lambda e: e["t_close_ns"] > vanished + 1_000_000_000, 5)
            assert hops_ok(col.since(t0)) and all(working(e) for e in col.since(t0))
        finally:
            stop(sub)

        assert r.daemon is not None
        r.daemon.kill()
        r.daemon.wait(5)
        killed = monotonic_ns()
        n_before = len(col.estimates)
        time.sleep(0.5)
        assert all(p.poll() is None for p in r.sensors.values()), "sensors outlive the daemon"
        assert len(col.estimates) == n_before  # nothing published by a dead daemon
        r.start_daemon()  # binds the same ipc paths; sensors and subscribers reconnect
        resumed = col.wait_for(lambda e: e["t_close_ns"] > killed and working(e), 30)
        assert resumed is not None, r.log_tail()
        t_resumed = resumed["t_close_ns"]
        assert col.wait_for(lambda e: e["t_close_ns"] > t_resumed + 1_500_000_000, 5)
        after = col.since(t_resumed)
        assert r.daemon.poll() is None

    assert hops_ok(after) and all(working(e) for e in after)
    assert after[0]["seq"] <= 3, "a fresh daemon: its own numbering"
