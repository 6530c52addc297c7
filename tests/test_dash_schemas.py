"""Recordings carry JSON schemas a viewer (Foxglove, Lichtblick) can use, and `edge-dash FILE`
shows a recorded drive."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from mcap.reader import make_reader
from websockets.sync.client import connect

from edge import schemas
from edge.dash.sources import load_recording
from tests.dash_support import dash_process, make_estimate, write_view_recording


@pytest.mark.parametrize("name", sorted(schemas.SCHEMAS))
def test_schemas_are_valid_json_schemas(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(schemas.schema_data(name)))


def test_contract_estimate_validates_and_bad_ones_do_not() -> None:
    validator = jsonschema.Draft202012Validator(schemas.ESTIMATE_SCHEMA)
    validator.validate(make_estimate(4))
    bad = make_estimate(4)
    bad["availability"]["audio"] = "gone"
    assert not validator.is_valid(bad)
    assert not validator.is_valid({k: v for k, v in make_estimate(4).items() if k != "probs"})


def test_view_message_topics() -> None:
    est = schemas.view_message({"kind": "estimate", "encoding": "json"}, b"{}")
    assert est == ("/estimate", "emotion_edge.Estimate", b"{}")
    assert schemas.view_message({"kind": "estimate", "encoding": "raw"}, b"\x00") is None
    header = {"kind": "frame", "modality": "video", "sensor": "cam0", "seq": 3, "shape": (2, 48)}
    topic, name, data = schemas.view_message(header, b"") or ("", "", b"")
    assert (topic, name) == ("/links/video/cam0", "emotion_edge.EnvelopeHeader")
    assert json.loads(data)["shape"] == [2, 48]


def test_recording_carries_schemas_every_message_validates(tmp_path: Path) -> None:
    path = tmp_path / "drive.mcap"
    write_view_recording(path, 20)
    checked = 0
    with path.open("rb") as stream:
        for schema, channel, message in make_reader(stream).iter_messages():
            assert schema is not None and schema.encoding == "jsonschema"
            assert channel.message_encoding == "json"
            validator = jsonschema.Draft202012Validator(json.loads(schema.data))
            doc = json.loads(message.data)
            if doc == {"label": 3}:  # the deliberately malformed estimate
                assert not validator.is_valid(doc)
                continue
            validator.validate(doc)
            checked += 1
    assert checked == 20 + 20 * 5 - 1  # estimates + heartbeats (one lost)


def test_load_recording_derives_link_health_and_counts_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "drive.mcap"
    write_view_recording(path, 20, dead_audio=range(10, 14))
    rec = load_recording(path, max_items=1000, max_bytes=1 << 20)
    assert len(rec.estimates) == 20
    assert rec.malformed == 1 and "lacks" in rec.last_error
    link = rec.estimates[-1]["links"]["audio"]
    assert link["lost"] == 1 and link["state"] == "ok"
    assert link["heartbeat_age_ms"] == pytest.approx(0.0)
    during_outage = rec.estimates[13]["links"]["audio"]
    assert during_outage["state"] == "dead"
    assert during_outage["heartbeat_age_ms"] == pytest.approx(2000.0)  # 4 hops of silence
    assert [e["availability"]["audio"] for e in rec.estimates[9:15]] == [
        "ok", "dead", "dead", "dead", "dead", "ok"]
    assert load_recording(path, max_items=5, max_bytes=1 << 20).truncated


def test_load_recording_survives_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "drive.mcap"
    write_view_recording(path, 50)
    torn = tmp_path / "torn.mcap"
    torn.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    rec = load_recording(torn, max_items=1000, max_bytes=1 << 20)
    assert 0 < len(rec.estimates) < 50
    assert "ends early" in rec.last_error


@pytest.mark.timeout(30)
def test_edge_dash_file_serves_the_whole_drive(tmp_path: Path) -> None:
    path = tmp_path / "drive.mcap"
    write_view_recording(path, 30)
    with dash_process(str(path)) as (_, base):
        with connect(base.replace("http://", "ws://") + "/ws", open_timeout=5,
                     max_size=None) as ws:
            hello = json.loads(ws.recv(timeout=5))
    assert hello["mode"] == "file" and hello["source"] == str(path)
    assert [e["label"] for e in hello["history"]] == [make_estimate(i)["label"] for i in range(30)]
    assert hello["stats"]["malformed"] == 1
