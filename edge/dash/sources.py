"""Where the dashboard's estimates come from: the daemon's telemetry socket, or a recording.

Both sources hand out already-validated estimates (dicts from `normalise_estimate`); anything
that does not decode raises `TelemetryError`, which the server counts and drops.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from edge import wire
from edge.dash.telemetry import (
    EnvelopeInfo,
    LinkHealthTracker,
    TelemetryError,
    link_table,
    links_from_estimate,
    normalise_estimate,
)
from edge.schemas import MESSAGE_ENCODING

# The daemon's telemetry socket carries these topics (edge.wire.topic_for); sensor traffic,
# should a socket carry it too, is filtered out by ZeroMQ before it reaches us.
TELEMETRY_TOPICS: tuple[bytes, ...] = (b"estimate", b"status")


@dataclass(frozen=True)
class Telemetry:
    """One decoded telemetry message: an estimate (normalised) or a status document."""

    kind: str  # "estimate" | "status"
    doc: dict[str, Any]


def decode_telemetry(parts: list[Any], *, max_bytes: int) -> Telemetry | None:
    """One telemetry multipart message -> Telemetry, None for kinds the page does not show.

    `edge.wire` is the one module that knows the layout; its WireError (and a bad estimate)
    become TelemetryError, which the server counts and drops.
    """
    try:
        envelope = wire.decode(parts, max_payload_bytes=max_bytes)
        if envelope.header.kind not in ("estimate", "status"):
            return None
        doc = envelope.json()
    except wire.WireError as exc:
        raise TelemetryError(f"wire: {exc}") from exc
    if envelope.header.kind == "estimate":
        return Telemetry("estimate", normalise_estimate(doc))
    if not isinstance(doc, dict):
        raise TelemetryError("status must be a JSON object")
    return Telemetry("status", doc)


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TelemetryError(f"{what} is not valid JSON: {exc}") from exc


class LiveSource:
    """A SUB socket on the daemon's telemetry PUB endpoint.

    The socket's receive high-water mark bounds what queues up if the dashboard falls behind;
    past it ZeroMQ's PUB drops for this subscriber only, so the daemon never waits for us.
    """

    def __init__(self, endpoint: str, *, rcvhwm: int, max_bytes: int) -> None:
        self.endpoint = endpoint
        self._max_bytes = max_bytes
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for topic in TELEMETRY_TOPICS:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._sock.connect(endpoint)

    async def receive(self) -> Telemetry | None:
        """Wait for the next message and decode it (see `decode_telemetry`)."""
        parts = await self._sock.recv_multipart(copy=False)
        return decode_telemetry(list(parts), max_bytes=self._max_bytes)

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


@dataclass
class Recording:
    """A recorded drive loaded for viewing: its estimates in order and what was skipped."""

    path: Path
    estimates: list[dict[str, Any]] = field(default_factory=list)
    malformed: int = 0
    truncated: bool = False
    last_error: str = ""


class _Drive:
    """Estimates and link health from one kind of channel (wire envelopes or JSON views)."""

    def __init__(self) -> None:
        self.estimates: list[dict[str, Any]] = []
        self.tracker = LinkHealthTracker()
        self.last_seen_ns: dict[str, int] = {}

    def on_estimate(self, estimate: dict[str, Any], published_ns: int) -> None:
        if links_from_estimate(estimate) is None:
            derived = self.tracker.snapshot(published_ns)
            estimate["links"] = link_table(
                estimate, last_seen_ns=self.last_seen_ns, derived=derived
            )
        self.estimates.append(estimate)


def load_recording(path: Path, *, max_items: int, max_bytes: int) -> Recording:
    """Read a recorded MCAP drive: its estimates (validated), each with per-link health as of
    its publication (the daemon's counters, plus heartbeat age and frame rate measured from the
    recorded sensor envelopes).

    Reads the wire channels `edge-record` writes (through `edge.wire`, the one module that
    knows the layout); a file that only has the JSON view channels of `edge.schemas`
    (`/estimate`, `/links/...`) is read from those. The file is read as a stream, so a
    recording torn by a crash shows everything up to its last complete chunk.
    """
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message
    from mcap.stream_reader import StreamReader

    rec = Recording(path=path)
    drives = {"wire": _Drive(), "view": _Drive()}
    channels: dict[int, tuple[str, str]] = {}  # id -> (topic, "wire" | "view")
    with path.open("rb") as stream:
        records = StreamReader(stream, record_size_limit=max(max_bytes, 1 << 20)).records
        while max(len(d.estimates) for d in drives.values()) < max_items:
            try:
                record = next(records)
            except StopIteration:
                break
            except (McapError, EOFError, ValueError, OSError, struct.error) as exc:
                rec.last_error = f"recording ends early: {exc}"[:200]
                break
            if isinstance(record, Channel):
                if record.message_encoding == wire.RECORD_ENCODING:
                    channels[record.id] = (record.topic, "wire")
                elif record.message_encoding == MESSAGE_ENCODING:
                    channels[record.id] = (record.topic, "view")
                continue
            if not isinstance(record, Message) or record.channel_id not in channels:
                continue
            topic, source = channels[record.channel_id]
            try:
                if source == "wire":
                    _wire_record(drives["wire"], topic, record.data, max_bytes=max_bytes)
                else:
                    _view_record(drives["view"], topic, record.data, max_bytes=max_bytes)
            except TelemetryError as exc:
                rec.malformed += 1
                rec.last_error = str(exc)
        else:
            rec.truncated = True
    chosen = drives["wire"] if drives["wire"].estimates else drives["view"]
    rec.estimates = chosen.estimates[:max_items]
    return rec


def _wire_record(drive: _Drive, topic: str, data: bytes, *, max_bytes: int) -> None:
    try:
        envelope = wire.decode(wire.unpack(topic, data), max_payload_bytes=max_bytes)
        header = envelope.header
        if header.kind in wire.SENSOR_KINDS:
            drive.tracker.observe(
                EnvelopeInfo(
                    link=f"{header.modality}/{header.sensor}",
                    modality=header.modality,
                    kind=header.kind,
                    seq=header.seq,
                    t_mono_ns=header.t_mono_ns,
                )
            )
            return
        doc = envelope.json()
    except wire.WireError as exc:
        raise TelemetryError(f"wire: {exc}") from exc
    if header.kind == "estimate":
        drive.on_estimate(normalise_estimate(doc), header.t_mono_ns)
    elif header.kind == "status" and isinstance(doc, dict):
        remember_last_seen(drive.last_seen_ns, doc)


def _view_record(drive: _Drive, topic: str, data: bytes, *, max_bytes: int) -> None:
    doc = _record_json(topic, data, max_bytes=max_bytes)
    if topic == "/estimate":
        estimate = normalise_estimate(doc)
        drive.on_estimate(estimate, estimate.get("t_close_ns") or estimate["t_end_ns"])
    elif topic == "/status" and isinstance(doc, dict):
        remember_last_seen(drive.last_seen_ns, doc)
    elif topic.startswith("/links/"):
        drive.tracker.observe(_envelope_info(doc))


def remember_last_seen(
    last_seen_ns: dict[str, int], status: dict[str, Any], *, max_links: int = 64
) -> None:
    """Status `changes` say when the daemon last heard from a link that changed state."""
    changes = status.get("changes")
    for change in changes if isinstance(changes, list) else ():
        if isinstance(change, dict) and isinstance(change.get("last_seen_ns"), int):
            modality = str(change.get("modality"))
            if modality in last_seen_ns or len(last_seen_ns) < max_links:
                last_seen_ns[modality] = change["last_seen_ns"]


def _record_json(topic: str, data: bytes, *, max_bytes: int) -> Any:
    if len(data) > max_bytes:
        raise TelemetryError(f"record on {topic} of {len(data)} bytes exceeds the limit")
    return _json(data, f"record on {topic}")


def _envelope_info(doc: Any) -> EnvelopeInfo:
    if not isinstance(doc, dict):
        raise TelemetryError("link record must be a JSON object")
    try:
        return EnvelopeInfo(
            link=f"{doc['modality']}/{doc['sensor']}",
            modality=str(doc["modality"]),
            kind=str(doc["kind"]),
            seq=int(doc["seq"]),
            t_mono_ns=int(doc["t_mono_ns"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TelemetryError(f"link record lacks a usable {exc}") from exc
