"""JSON schemas for what the runtime publishes, so a recorded drive opens meaningfully in
Foxglove / Lichtblick.

The recorder keeps every wire envelope bit-exact on its own channels (for replay); those use a
private message encoding no viewer understands. Next to them it writes *view* channels with
`message_encoding = "json"` whose schemas (`encoding = "jsonschema"`) are defined here:

- `/estimate`            one message per estimate: the estimate document itself
                         (Plot `/estimate.probs.happy`, State Transitions
                         `/estimate.availability.audio`, Raw Messages, ...).
- `/status`              the daemon's periodic status document (link states and counters).
- `/links/<modality>/<sensor>`  the header of every sensor frame and heartbeat (seq, stamps,
                         state), so per-link rate and gaps can be plotted.

Schema names are namespaced `emotion_edge.*`. This module has no I/O and no MCAP import: the
recorder hands its writer to `ViewChannels`, which registers `SCHEMAS` and writes each
envelope's view (`view_message`) next to the envelope itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

SCHEMA_ENCODING = "jsonschema"
MESSAGE_ENCODING = "json"

_REASONS = ["ok", "dead", "stale", "empty", "disabled"]
_MODALITIES = ["audio", "video", "text"]

ESTIMATE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "emotion_edge.Estimate",
    "description": "One fused, calibrated emotion estimate for an event-time window.",
    "type": "object",
    "required": [
        "t_start_ns",
        "t_end_ns",
        "probs",
        "label",
        "confidence",
        "availability",
        "used",
        "router",
        "latency_ms",
    ],
    "properties": {
        "t_start_ns": {"type": "integer", "description": "window start, CLOCK_MONOTONIC ns"},
        "t_end_ns": {"type": "integer", "description": "window end, CLOCK_MONOTONIC ns"},
        "probs": {
            "type": "object",
            "description": "calibrated probability per label",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "label": {"type": "string", "description": "most probable label"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "availability": {
            "type": "object",
            "description": "per modality: ok, or why it is missing",
            "properties": {m: {"type": "string", "enum": _REASONS} for m in _MODALITIES},
            "additionalProperties": {"type": "string", "enum": _REASONS},
        },
        "used": {"type": "array", "items": {"type": "string", "enum": _MODALITIES}},
        "router": {
            "type": "object",
            "description": "per used modality: its soft router's weight per expert",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {"type": "number"},
            },
        },
        "latency_ms": {
            "type": ["number", "null"],
            "description": "newest frame's capture stamp to publication; null: no frames",
        },
    },
    "additionalProperties": True,
}

STATUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "emotion_edge.Status",
    "description": "The daemon's periodic status: link states, counters, health.",
    "type": "object",
    "additionalProperties": True,
}

ENVELOPE_HEADER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "emotion_edge.EnvelopeHeader",
    "description": "The wire header of one sensor frame or heartbeat (payload not included).",
    "type": "object",
    "required": ["v", "sensor", "modality", "kind", "seq", "t_mono_ns", "t_wall_ns"],
    "properties": {
        "v": {"type": "integer"},
        "sensor": {"type": "string"},
        "modality": {"type": "string", "enum": [*_MODALITIES, "fusion"]},
        "kind": {"type": "string", "enum": ["frame", "heartbeat", "estimate", "status"]},
        "seq": {"type": "integer", "minimum": 0},
        "t_mono_ns": {"type": "integer"},
        "t_wall_ns": {"type": "integer"},
        "dtype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "encoding": {"type": "string"},
        "state": {"type": "string", "enum": ["ok", "empty", "disabled"]},
    },
    "additionalProperties": True,
}

# schema name -> JSON schema; the recorder registers each once.
SCHEMAS: dict[str, dict[str, Any]] = {
    "emotion_edge.Estimate": ESTIMATE_SCHEMA,
    "emotion_edge.Status": STATUS_SCHEMA,
    "emotion_edge.EnvelopeHeader": ENVELOPE_HEADER_SCHEMA,
}


def schema_data(name: str) -> bytes:
    """The schema's bytes as an MCAP Schema record carries them."""
    return json.dumps(SCHEMAS[name], separators=(",", ":")).encode()


def view_message(
    header: Mapping[str, Any], payload: bytes | memoryview
) -> tuple[str, str, bytes] | None:
    """What to write on a JSON view channel for one envelope: (topic, schema name, data).

    `header` is the decoded wire header (a dict, or `edge.wire.Header.__dict__`); `payload`
    the envelope's payload bytes. Returns None for envelopes that have no view (e.g. a daemon
    document that is not JSON).
    """
    kind = header.get("kind")
    if kind in ("estimate", "status"):
        if header.get("encoding") != "json":
            return None
        name = "emotion_edge.Estimate" if kind == "estimate" else "emotion_edge.Status"
        return f"/{kind}", name, bytes(payload)
    if kind in ("frame", "heartbeat"):
        doc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in header.items()}
        data = json.dumps(doc, separators=(",", ":")).encode()
        return (
            f"/links/{header.get('modality')}/{header.get('sensor')}",
            "emotion_edge.EnvelopeHeader",
            data,
        )
    return None


class McapWriter(Protocol):
    """The part of `mcap.writer.Writer` the view channels use."""

    def register_schema(self, name: str, encoding: str, data: bytes) -> int: ...

    def register_channel(
        self, topic: str, message_encoding: str, schema_id: int, metadata: Any = ...
    ) -> int: ...

    def add_message(
        self, channel_id: int, log_time: int, data: bytes, publish_time: int, sequence: int = ...
    ) -> None: ...


class ViewChannels:
    """Writes the JSON view of every recorded envelope on schema'd channels of `writer`.

    Bounded: at most `max_channels` view topics (one per sensor link plus /estimate and
    /status); envelopes of links beyond that are counted in `skipped`, never an error.
    """

    def __init__(self, writer: McapWriter, *, max_channels: int = 256) -> None:
        self._writer = writer
        self._max_channels = max_channels
        self._schema_ids = {
            name: writer.register_schema(
                name=name, encoding=SCHEMA_ENCODING, data=schema_data(name)
            )
            for name in SCHEMAS
        }
        self._channels: dict[str, int] = {}
        self.written = 0
        self.skipped = 0

    def write(
        self,
        header: Mapping[str, Any],
        payload: bytes | memoryview,
        *,
        log_time: int,
        publish_time: int,
    ) -> None:
        view = view_message(header, payload)
        if view is None:
            return
        topic, schema_name, data = view
        channel_id = self._channels.get(topic)
        if channel_id is None:
            if len(self._channels) >= self._max_channels:
                self.skipped += 1
                return
            channel_id = self._channels[topic] = self._writer.register_channel(
                topic=topic,
                message_encoding=MESSAGE_ENCODING,
                schema_id=self._schema_ids[schema_name],
            )
        self._writer.add_message(
            channel_id=channel_id, log_time=log_time, data=data, publish_time=publish_time
        )
        self.written += 1
