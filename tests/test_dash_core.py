"""Pure parts of the dashboard: estimate validation, bounded history, link health, queues."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from edge import wire
from edge.config import ConfigError, DaemonConfig, load
from edge.dash.config import DashConfig
from edge.dash.fanout import ClientQueue, Fanout, TooManyClients
from edge.dash.sources import Telemetry, decode_telemetry
from edge.dash.telemetry import (
    EnvelopeInfo,
    History,
    LinkHealthTracker,
    TelemetryError,
    latency_percentiles,
    link_table,
    links_from_estimate,
    normalise_estimate,
)
from tests.dash_support import encode, make_estimate


def test_valid_estimate_is_kept_with_extra_fields() -> None:
    est = make_estimate(3, links={"cam0": {"heartbeat_age_ms": 12}})
    out = normalise_estimate(est)
    assert out["label"] == est["label"]
    assert out["probs"] == est["probs"]
    assert out["links"] == {"cam0": {"heartbeat_age_ms": 12}}


def _broken(mutate: Any) -> dict[str, Any]:
    est = copy.deepcopy(make_estimate(0))
    mutate(est)
    return est


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.pop("probs"), "lacks probs"),
        (lambda e: e.update(t_end_ns=1.5), "t_end_ns must be an integer"),
        (lambda e: e.update(t_end_ns=e["t_start_ns"] - 1), "ends before it starts"),
        (lambda e: e.update(probs={}), "non-empty"),
        (lambda e: e["probs"].update(happy=1.7), "not a probability"),
        (lambda e: e["probs"].update(happy=float("nan")), "finite"),
        (lambda e: e.update(label="bored"), "not one of the probs"),
        (lambda e: e.update(confidence=True), "confidence must be a number"),
        (lambda e: e["availability"].update(audio="asleep"), "not a known reason"),
        (lambda e: e.update(used="audio"), "used must be a list"),
        (lambda e: e.update(router={"audio": 0.3}), "router[audio]"),
        (lambda e: e.update(latency_ms="3"), "latency_ms must be a number"),
    ],
)
def test_malformed_estimates_raise_one_typed_error(mutate: Any, message: str) -> None:
    with pytest.raises(TelemetryError, match=message.replace("[", r"\[")):
        normalise_estimate(_broken(mutate))


def test_non_object_estimate_is_rejected() -> None:
    with pytest.raises(TelemetryError, match="JSON object"):
        normalise_estimate([1, 2, 3])


def _status(doc: Any) -> list[Any]:
    return wire.json_message(kind="status", seq=1, t_mono_ns=5, t_wall_ns=5, doc=doc)


def test_decode_telemetry_through_the_wire_module() -> None:
    good = [bytes(p) for p in encode(make_estimate(1))]
    decoded = decode_telemetry(good, max_bytes=1 << 20)
    assert decoded is not None and decoded.kind == "estimate"
    assert decoded.doc["label"] == make_estimate(1)["label"]
    status = decode_telemetry(_status({"links": {"audio/mic0": {"lost": 2}}}), max_bytes=1 << 20)
    assert status == Telemetry("status", {"links": {"audio/mic0": {"lost": 2}}})
    heartbeat = wire.encode(wire.Header(sensor="mic0", modality="audio", kind="heartbeat",
                                        seq=0, t_mono_ns=1, t_wall_ns=1))
    assert decode_telemetry(heartbeat, max_bytes=1 << 20) is None


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([b"estimate", b"{}"], "part_count"),
        ([b"estimate", b"{}", b"\xff\xfe"], "bad_version"),
        (_status([1, 2]), "status must be a JSON object"),
        ([bytes(p) for p in encode({"label": "x", "t_end_ns": 1})], "lacks"),
    ],
)
def test_decode_telemetry_errors_are_typed(parts: list[Any], message: str) -> None:
    with pytest.raises(TelemetryError, match=message):
        decode_telemetry(parts, max_bytes=1 << 20)


def test_decode_telemetry_size_limit() -> None:
    with pytest.raises(TelemetryError, match="payload_too_large"):
        decode_telemetry(encode(make_estimate(1)), max_bytes=100)


def test_history_is_bounded_by_count_bytes_and_horizon() -> None:
    by_count = History(max_items=3, max_bytes=1 << 20, horizon_ns=10**12)
    for t in range(10):
        by_count.append(t, f"m{t}")
    assert by_count.items() == ["m7", "m8", "m9"]
    assert by_count.evicted == 7

    by_bytes = History(max_items=100, max_bytes=10, horizon_ns=10**12)
    for t in range(10):
        by_bytes.append(t, "abcd")
    assert len(by_bytes) == 2 and by_bytes.n_bytes == 8

    by_time = History(max_items=100, max_bytes=1 << 20, horizon_ns=5)
    for t in range(0, 20, 2):
        by_time.append(t, str(t))
    assert by_time.items() == ["14", "16", "18"]  # >= 18 - 5


def test_link_health_counts_gaps_rate_and_heartbeat_age() -> None:
    tracker = LinkHealthTracker(rate_window_ns=1_000_000_000)
    ms = 1_000_000
    seq = 0
    for k in range(20):  # 20 frames at 50 Hz, but seqs 5 and 6 are lost
        if seq in (5, 6):
            seq += 2
        tracker.observe(EnvelopeInfo(link="cam0", modality="video", kind="frame", seq=seq,
                                     t_mono_ns=k * 20 * ms))
        seq += 1
    tracker.observe(EnvelopeInfo(link="cam0", modality="video", kind="heartbeat", seq=seq,
                                 t_mono_ns=400 * ms))
    snap = tracker.snapshot(now_ns=500 * ms)["cam0"]
    assert snap["lost"] == 2
    assert snap["received"] == 21
    assert snap["heartbeat_age_ms"] == pytest.approx(100.0)
    assert snap["frame_age_ms"] == pytest.approx(120.0)
    assert snap["frame_rate_hz"] == pytest.approx(20.0)  # 20 frames inside the last second


def test_link_health_restart_resets_sequence_without_counting_loss() -> None:
    tracker = LinkHealthTracker()
    for seq in (0, 1, 2, 3, 0, 1):
        tracker.observe(EnvelopeInfo(link="mic", modality="audio", kind="heartbeat", seq=seq,
                                     t_mono_ns=seq))
    assert tracker.snapshot(10)["mic"]["lost"] == 0


def test_link_table_is_bounded() -> None:
    tracker = LinkHealthTracker(max_links=2)
    for name in ("a", "b", "c", "d"):
        tracker.observe(EnvelopeInfo(link=name, modality="text", kind="heartbeat", seq=0,
                                     t_mono_ns=0))
    assert sorted(tracker.snapshot(0)) == ["a", "b"]
    assert tracker.rejected_links == 2


def test_links_from_estimate_takes_a_ready_table_only() -> None:
    assert links_from_estimate({"links": {"a": {"lost": 1}}}) == {"a": {"lost": 1}}
    assert links_from_estimate({"links": {"audio": "ok"}}) is None  # status: states only
    assert links_from_estimate({"links": "nonsense"}) is None
    assert links_from_estimate({}) is None


def _daemon_estimate() -> dict[str, Any]:
    """An estimate with the daemon's own fields (edge.fusion / edge.daemon)."""
    est = make_estimate(8, availability={"audio": "dead", "video": "ok", "text": "stale"})
    est.update(
        t_close_ns=est["t_end_ns"] + 100_000_000,
        frames={"audio": 0, "video": 50, "text": 0},
        health={"lost": {"audio": 3, "video": 0, "text": 0},
                "restarts": {"audio": 1, "video": 0, "text": 0},
                "received": 900, "malformed": {"video/cam0": {"size_mismatch": 2}}},
    )
    return est


def test_link_table_from_daemon_fields() -> None:
    est = _daemon_estimate()
    last_seen = {"audio": est["t_close_ns"] - 450_000_000, "video": 1}
    table = link_table(est, last_seen_ns=last_seen)
    assert table["audio"] == {"state": "dead", "heartbeat_age_ms": 450.0, "frame_rate_hz": 0.0,
                              "lost": 3, "restarts": 1, "malformed": 0}
    # an ok link's age is not derived from an old state change (it keeps sending)
    assert table["video"]["heartbeat_age_ms"] is None
    assert table["video"]["frame_rate_hz"] == 25.0  # 50 frames in a 2 s window
    assert table["video"]["malformed"] == 2
    assert table["text"]["state"] == "stale"
    # a stale link still sends heartbeats: an old state change is not its heartbeat age
    assert link_table(est, last_seen_ns={"text": 1})["text"]["heartbeat_age_ms"] is None


def test_link_table_prefers_daemon_last_seen_and_measured_rates() -> None:
    est = _daemon_estimate()
    est["health"]["last_seen_ns"] = {"video": est["t_close_ns"] - 20_000_000}
    derived = {"video/cam0": {"modality": "video", "heartbeat_age_ms": 80.0,
                              "frame_rate_hz": 24.0, "lost": 0}}
    table = link_table(est, derived=derived)
    assert table["video"]["heartbeat_age_ms"] == 20.0
    assert table["video"]["frame_rate_hz"] == 24.0


def test_latency_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert latency_percentiles(values, (50, 99)) == {"p50": 50.0, "p99": 99.0}
    assert latency_percentiles([], (50,)) == {}


def test_client_queue_drops_oldest_and_counts() -> None:
    async def scenario() -> tuple[list[str], int]:
        queue = ClientQueue(max_items=3, max_bytes=1 << 20)
        for k in range(10):
            queue.put(f"m{k}")
        got = [await queue.get() for _ in range(3)]
        return got, queue.dropped

    got, dropped = asyncio.run(scenario())
    assert got == ["m7", "m8", "m9"]
    assert dropped == 7


def test_client_queue_byte_bound_keeps_newest_message() -> None:
    async def scenario() -> ClientQueue:
        queue = ClientQueue(max_items=100, max_bytes=10)
        for k in range(5):
            queue.put("x" * 6 + str(k))
        queue.put("y" * 50)  # bigger than the bound alone: still delivered, older ones dropped
        return queue

    queue = asyncio.run(scenario())
    assert len(queue) == 1 and queue.dropped == 5


def test_fanout_refuses_past_max_clients_and_keeps_drop_totals() -> None:
    async def scenario() -> Fanout:
        fanout = Fanout(max_clients=2, client_max_items=1, client_max_bytes=1 << 20)
        first, _ = fanout.add()
        fanout.add()
        with pytest.raises(TooManyClients):
            fanout.add()
        fanout.publish("a")
        fanout.publish("b")
        fanout.remove(first)
        return fanout

    fanout = asyncio.run(scenario())
    stats = fanout.stats()
    assert stats["refused_clients"] == 1
    assert stats["dropped_total"] == 2  # one per client, including the one that left


def test_config_validates_and_loads_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client_max_items"):
        DashConfig(client_max_items=0)
    with pytest.raises(ConfigError, match="port"):
        DashConfig(port=70000)
    path = tmp_path / "dash.toml"
    path.write_text('[dash]\nport = 9000\nhistory_s = 60\n')
    config = load(DashConfig, path, section="dash", host="0.0.0.0")
    assert (config.port, config.history_s, config.host) == (9000, 60.0, "0.0.0.0")
    path.write_text("[dash]\nprot = 9000\n")
    with pytest.raises(ConfigError, match="prot"):
        load(DashConfig, path, section="dash")


def test_config_resolves_the_daemons_telemetry_endpoint(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_RUN_DIR", str(tmp_path))
    assert DashConfig().resolved().telemetry == DaemonConfig().resolved().telemetry
    assert DashConfig(telemetry="ipc:///x").resolved().telemetry == "ipc:///x"


def test_estimate_without_frames_has_no_latency_and_is_kept() -> None:
    est = make_estimate(2, availability={"audio": "dead", "video": "dead", "text": "dead"})
    est["latency_ms"] = None  # the daemon's prior: no capture stamp to measure from
    assert normalise_estimate(est)["latency_ms"] is None
