"""`edge-dash` as a real process: a real ZeroMQ PUB feeds it, real WebSocket clients read it."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq
from websockets.sync.client import connect

from tests.dash_support import (
    dash_process,
    encode,
    get_stats,
    ipc_endpoint,
    make_estimate,
    wait_for,
)


@pytest.fixture
def publisher(tmp_path: Path) -> Any:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = ipc_endpoint(tmp_path)
    pub.bind(endpoint)
    yield pub, endpoint
    pub.close(linger=0)
    ctx.term()


def _ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


def _publish_until_received(pub: zmq.Socket[bytes], base: str) -> None:
    """PUB drops what is sent before the subscriber joined: probe until one gets through."""

    def probe() -> bool:
        pub.send_multipart(encode(make_estimate(0)))
        return bool(get_stats(base)["received"])

    wait_for(probe, timeout_s=10, interval_s=0.1)


@pytest.mark.timeout(30)
def test_serves_page_backlog_and_live_estimates(publisher: Any) -> None:
    pub, endpoint = publisher
    with dash_process("--telemetry", endpoint) as (_, base):
        page = urllib.request.urlopen(f"{base}/", timeout=5).read().decode()
        assert "<canvas id=\"probs-chart\"" in page and "/static/dash.js" in page
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/static/../server.py", timeout=5)
        assert missing.value.code == 404
        missing.value.close()

        _publish_until_received(pub, base)
        for i in range(1, 6):
            pub.send_multipart(encode(make_estimate(i)))
        pub.send_multipart([b"estimate", b"{}", b"not json"])  # malformed: counted, dropped
        pub.send_multipart([b"estimate", b"{}"])  # wrong part count
        wait_for(lambda: get_stats(base)["malformed"] == 2, timeout_s=5)

        with connect(_ws_url(base), open_timeout=5) as ws:
            hello = json.loads(ws.recv(timeout=5))
            assert hello["type"] == "hello" and hello["mode"] == "live"
            backlog_ends = [e["t_end_ns"] for e in hello["history"]]
            assert backlog_ends[-5:] == [make_estimate(i)["t_end_ns"] for i in range(1, 6)]
            assert hello["stats"]["malformed"] == 2
            assert "part_count" in hello["stats"]["last_error"]  # the last malformed one

            live = make_estimate(6, availability={"audio": "dead", "video": "ok", "text": "ok"})
            pub.send_multipart(encode(live))
            while True:
                msg = json.loads(ws.recv(timeout=5))
                if msg["type"] == "estimate":
                    break
            assert msg["estimate"]["availability"]["audio"] == "dead"
            assert msg["estimate"]["t_end_ns"] == live["t_end_ns"]


def _frozen_client(host: str, port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast
    sock.settimeout(5)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # byte by byte: leave everything after the headers unread
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


@pytest.mark.timeout(60)
def test_frozen_browser_loses_oldest_and_slows_nothing(
    publisher: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pub, endpoint = publisher
    config = tmp_path / "dash.toml"
    config.write_text(
        "[dash]\nclient_max_items = 16\nwrite_limit_bytes = 16384\nhistory_max_items = 50\n"
        "stats_interval_s = 0.2\n"
    )
    n_messages, pad = 1500, "x" * 16_000  # ~24 MB towards the frozen browser
    with dash_process("--telemetry", endpoint, "--config", str(config)) as (_, base):
        host, port = base.removeprefix("http://").split(":")
        _publish_until_received(pub, base)
        frozen = _frozen_client(host, int(port))
        request.addfinalizer(frozen.close)
        wait_for(lambda: len(get_stats(base)["clients"]) == 1, timeout_s=5)

        received: list[int] = []
        arrival: dict[int, float] = {}

        def healthy_reader() -> None:
            with connect(_ws_url(base), open_timeout=5, max_size=None) as ws:
                while True:
                    msg = json.loads(ws.recv(timeout=10))
                    if msg["type"] == "estimate":
                        i = msg["estimate"]["n"]
                        received.append(i)
                        arrival[i] = time.monotonic()
                        if i == n_messages - 1:
                            return

        reader = threading.Thread(target=healthy_reader, daemon=True)
        reader.start()
        wait_for(lambda: len(get_stats(base)["clients"]) == 2, timeout_s=5)
        rss_before = get_stats(base)["rss_bytes"]
        received_before = get_stats(base)["received"]

        sent_at: dict[int, float] = {}
        for i in range(n_messages):
            sent_at[i] = time.monotonic()
            pub.send_multipart(encode(make_estimate(i, n=i, pad=pad)))
            time.sleep(0.0015)
        reader.join(timeout=15)
        assert not reader.is_alive(), "the healthy browser never got the last estimate"

        stats = get_stats(base)
        frozen_stats = min(stats["clients"], key=lambda c: c["sent"])
        # The frozen browser lost the oldest updates; its queue stayed within its bounds.
        assert frozen_stats["dropped"] > n_messages // 2
        assert frozen_stats["queued"] <= 16
        # The reader kept up with the telemetry stream despite the frozen browser ...
        assert stats["received"] - received_before >= 0.95 * n_messages
        # ... and the healthy browser got the newest estimate promptly.
        last = n_messages - 1
        assert arrival[last] - sent_at[last] < 1.0
        assert len(received) >= 0.5 * n_messages
        # Memory did not grow with what the frozen browser failed to read (~24 MB).
        assert stats["rss_bytes"] - rss_before < 12 * 2**20
        assert stats["history_len"] <= 50
