"""The optional live Foxglove server (`edge-dash --foxglove-port`, extra `foxglove`): a real
client speaking Foxglove's WebSocket protocol sees the schema'd channel and the estimates."""

from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from websockets.sync.client import connect

from edge import schemas
from tests.dash_support import (
    dash_process,
    encode,
    ipc_endpoint,
    make_estimate,
)

pytest.importorskip("foxglove", reason="the `foxglove` extra (foxglove-sdk) is not installed")


@pytest.mark.timeout(30)
def test_foxglove_client_gets_schema_and_estimates(tmp_path: Path) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = ipc_endpoint(tmp_path)
    pub.bind(endpoint)
    try:
        with dash_process("--telemetry", endpoint, "--foxglove-port", "0") as (proc, base):
            assert proc.stdout is not None
            match = re.search(r"(ws://[\d.]+:\d+)", proc.stdout.readline())
            assert match, "no foxglove server line"
            with connect(match.group(1), subprotocols=["foxglove.sdk.v1",
                                                       "foxglove.websocket.v1"]) as ws:
                ops: dict[str, Any] = {}
                while "advertise" not in ops:
                    msg = json.loads(ws.recv(timeout=5))
                    ops[msg["op"]] = msg
                channel = next(c for c in ops["advertise"]["channels"]
                               if c["topic"] == "/estimate")
                assert channel["encoding"] == "json"
                assert channel["schemaEncoding"] == "jsonschema"
                assert json.loads(channel["schema"]) == schemas.ESTIMATE_SCHEMA
                ws.send(json.dumps({"op": "subscribe",
                                    "subscriptions": [{"id": 7, "channelId": channel["id"]}]}))

                # The subscribe op is handled asynchronously by the SDK's server: keep
                # publishing until a message for our subscription comes back.
                frame: bytes | str = ""
                deadline = time.monotonic() + 20
                while not isinstance(frame, bytes):
                    assert time.monotonic() < deadline, "no estimate reached the Foxglove client"
                    pub.send_multipart(encode(make_estimate(3)))
                    try:
                        frame = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                opcode, sub_id, _log_time = struct.unpack_from("<BIQ", frame)
                assert (opcode, sub_id) == (1, 7)  # MessageData for our subscription
                doc = json.loads(frame[13:])
                assert doc["label"] == make_estimate(3)["label"]
                assert doc["availability"] == make_estimate(3)["availability"]
    finally:
        pub.close(linger=0)
        ctx.term()
