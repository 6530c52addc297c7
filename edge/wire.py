"""The wire: the one module that knows how a message looks on ZeroMQ.

Every message is a 3-part multipart message ``[topic, header, payload]``:

- ``topic``   ascii, ``"<modality>/<sensor_id>"`` for sensor traffic, ``"estimate"`` and
  ``"status"`` for what the daemon publishes. SUB sockets filter on its prefix.
- ``header``  compact JSON object (utf-8, at most ``MAX_HEADER_BYTES``), schema ``v`` = 1:
  ``v, sensor, modality, kind, seq, t_mono_ns, t_wall_ns, dtype, shape, encoding, state``.
- ``payload`` the raw bytes of a C-contiguous array (``dtype``/``shape``), sent without
  copies; utf-8 text and JSON documents travel as ``uint8`` arrays with ``encoding`` set.

Decoding never trusts the peer: anything malformed (part count, size limits, JSON, version,
field types, dtype outside the whitelist, shape vs payload size, topic vs header) raises
`WireError` with a short machine-readable ``reason`` that the daemon counts per link. There is
no pickle and no code path that builds objects from the header other than the whitelist.
This module imports no zmq: the shells hand it bytes-like parts (``zmq.Frame`` works too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 4096
DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # 4 MiB: 2 s of video crops is ~46 KB
MAX_NDIM = 4
MAX_ID_CHARS = 64

Kind = Literal["frame", "heartbeat", "estimate", "status"]
KINDS: tuple[str, ...] = ("frame", "heartbeat", "estimate", "status")
SENSOR_KINDS: tuple[str, ...] = ("frame", "heartbeat")
STATES: tuple[str, ...] = ("ok", "empty", "disabled")
ENCODINGS: tuple[str, ...] = ("raw", "utf-8", "json")
# Sensor modalities plus "fusion", the daemon's own channel (estimates, status).
WIRE_MODALITIES: tuple[str, ...] = ("audio", "video", "text", "fusion")
# Little-endian only; the whitelist is the only way a header can choose a dtype.
DTYPES: dict[str, np.dtype[Any]] = {
    "uint8": np.dtype("|u1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
_REQUIRED: dict[str, type] = {
    "v": int,
    "sensor": str,
    "modality": str,
    "kind": str,
    "seq": int,
    "t_mono_ns": int,
    "t_wall_ns": int,
    "dtype": str,
    "shape": list,
    "encoding": str,
    "state": str,
}


class WireError(ValueError):
    """A message that does not follow the wire schema. ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Header:
    sensor: str
    modality: str
    kind: str
    seq: int
    t_mono_ns: int
    t_wall_ns: int
    dtype: str = "uint8"
    shape: tuple[int, ...] = (0,)
    encoding: str = "raw"
    state: str = "ok"
    v: int = SCHEMA_VERSION

    @property
    def topic(self) -> str:
        return topic_for(self.kind, self.modality, self.sensor)

    def to_json(self) -> bytes:
        doc = {
            "v": self.v,
            "sensor": self.sensor,
            "modality": self.modality,
            "kind": self.kind,
            "seq": self.seq,
            "t_mono_ns": self.t_mono_ns,
            "t_wall_ns": self.t_wall_ns,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "encoding": self.encoding,
            "state": self.state,
        }
        return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """A decoded message. ``payload`` is a read-only view on the received bytes (no copy)."""

    header: Header
    payload: np.ndarray

    @property
    def topic(self) -> str:
        return self.header.topic

    def text(self) -> str:
        """The payload as text (utf-8 or json encodings)."""
        try:
            return bytes(self.payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("bad_utf8", str(exc)) from exc

    def json(self) -> Any:
        try:
            return json.loads(self.text())
        except json.JSONDecodeError as exc:
            raise WireError("bad_json_payload", str(exc)) from exc


def topic_for(kind: str, modality: str, sensor: str) -> str:
    if kind in SENSOR_KINDS:
        return f"{modality}/{sensor}"
    return kind  # "estimate" | "status"


def encode(header: Header, payload: np.ndarray | bytes | None = None) -> list[Any]:
    """Parts for ``send_multipart(parts, copy=False)``; the array's buffer is not copied.

    The header's dtype/shape are taken from the array, so they cannot disagree with it.
    """
    if payload is None:
        payload = np.empty(0, dtype=np.uint8)
    if isinstance(payload, bytes | bytearray | memoryview):
        payload = np.frombuffer(payload, dtype=np.uint8)
    array = np.ascontiguousarray(payload)
    dtype_name = next((n for n, d in DTYPES.items() if d == array.dtype), None)
    if dtype_name is None:
        raise WireError("bad_dtype", f"cannot send dtype {array.dtype}")
    if header.dtype != dtype_name or header.shape != tuple(array.shape):
        header = Header(**{**header.__dict__, "dtype": dtype_name, "shape": tuple(array.shape)})
    # flat view first: memoryview cannot cast an n-d buffer with a zero in its shape, e.g. an
    # empty (0, 48, 48) crop batch; reshape(-1) of a contiguous array is a view, not a copy
    flat = memoryview(array.reshape(-1).data).cast("B")
    return [header.topic.encode("ascii"), header.to_json(), flat]


def _as_buffer(part: Any) -> memoryview:
    """bytes, bytearray, memoryview or zmq.Frame (via its .buffer) -> flat memoryview."""
    buf = getattr(part, "buffer", part)
    try:
        view = memoryview(buf)
    except TypeError as exc:
        raise WireError("bad_part", f"part of type {type(part).__name__}") from exc
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode(parts: Sequence[Any], *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Envelope:
    """Parse one multipart message; raise `WireError` for anything that is not a valid one."""
    if len(parts) != 3:
        raise WireError("part_count", f"{len(parts)} parts, expected 3")
    topic_buf, header_buf, payload_buf = (_as_buffer(p) for p in parts)
    if len(header_buf) > MAX_HEADER_BYTES:
        raise WireError("header_too_large", f"{len(header_buf)} bytes")
    if len(payload_buf) > max_payload_bytes:
        raise WireError("payload_too_large", f"{len(payload_buf)} > {max_payload_bytes} bytes")
    try:
        doc = json.loads(bytes(header_buf).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError("bad_header_json", str(exc)[:80]) from exc
    if not isinstance(doc, dict):
        raise WireError("bad_header_json", "header is not an object")
    version = doc.get("v")
    if not _is_int(version) or version != SCHEMA_VERSION:
        raise WireError("bad_version", repr(version)[:20])
    for key, typ in _REQUIRED.items():
        value = doc.get(key)
        ok = _is_int(value) if typ is int else isinstance(value, typ)
        if not ok:
            raise WireError("bad_field", f"{key}={value!r}"[:80])
    header = _validated_header(doc)
    expected_topic = header.topic.encode("ascii")
    if bytes(topic_buf) != expected_topic:
        raise WireError("topic_mismatch", f"{bytes(topic_buf)[:40]!r} vs {expected_topic!r}")
    dtype = DTYPES[header.dtype]
    n_items = 1
    for dim in header.shape:
        n_items *= dim
    if n_items * dtype.itemsize != len(payload_buf):
        raise WireError("size_mismatch", f"{header.shape} {header.dtype} vs {len(payload_buf)} B")
    payload = np.frombuffer(payload_buf, dtype=dtype).reshape(header.shape)
    payload.flags.writeable = False
    return Envelope(header=header, payload=payload)


def _validated_header(doc: dict[str, Any]) -> Header:
    sensor, modality, kind = doc["sensor"], doc["modality"], doc["kind"]
    if not (0 < len(sensor) <= MAX_ID_CHARS) or not sensor.isascii() or "/" in sensor:
        raise WireError("bad_field", f"sensor={sensor[:20]!r}")
    if modality not in WIRE_MODALITIES:
        raise WireError("bad_field", f"modality={modality[:20]!r}")
    if kind not in KINDS:
        raise WireError("bad_kind", kind[:20])
    if (kind in SENSOR_KINDS) == (modality == "fusion"):
        raise WireError("bad_kind", f"{kind} on {modality}")
    if doc["dtype"] not in DTYPES:
        raise WireError("bad_dtype", doc["dtype"][:20])
    shape = doc["shape"]
    if len(shape) > MAX_NDIM or not all(_is_int(d) and 0 <= d < 2**31 for d in shape):
        raise WireError("bad_shape", repr(shape)[:40])
    if doc["encoding"] not in ENCODINGS:
        raise WireError("bad_encoding", doc["encoding"][:20])
    if doc["state"] not in STATES:
        raise WireError("bad_state", doc["state"][:20])
    for key in ("seq", "t_mono_ns", "t_wall_ns"):
        if not 0 <= doc[key] < 2**63:
            raise WireError("bad_field", f"{key} out of range")
    return Header(
        sensor=sensor,
        modality=modality,
        kind=kind,
        seq=doc["seq"],
        t_mono_ns=doc["t_mono_ns"],
        t_wall_ns=doc["t_wall_ns"],
        dtype=doc["dtype"],
        shape=tuple(shape),
        encoding=doc["encoding"],
        state=doc["state"],
    )


def link_of(parts: Sequence[Any]) -> str:
    """Best-effort link name for counting a malformed message: its topic, or "unknown"."""
    if not parts:
        return "unknown"
    try:
        topic = bytes(_as_buffer(parts[0])[: MAX_ID_CHARS + 8]).decode("ascii")
    except (WireError, UnicodeDecodeError):
        return "unknown"
    return topic if topic.isprintable() and topic else "unknown"


def json_message(
    *, kind: Kind, seq: int, t_mono_ns: int, t_wall_ns: int, doc: Any, sensor: str = "daemon"
) -> list[Any]:
    """Parts for a daemon document (estimate / status): JSON payload on the fusion channel."""
    body = json.dumps(doc, separators=(",", ":")).encode()
    header = Header(
        sensor=sensor,
        modality="fusion",
        kind=kind,
        seq=seq,
        t_mono_ns=t_mono_ns,
        t_wall_ns=t_wall_ns,
        encoding="json",
    )
    return encode(header, body)


# --- the same envelopes in a recording file (MCAP) -------------------------------------------
# One MCAP channel per topic, message_encoding RECORD_ENCODING; each MCAP message's data is the
# packed envelope: u32 LE header length, the header JSON, then the payload bytes. The topic is
# the channel's. log_time = the envelope's t_mono_ns (event time, so Foxglove's timeline and
# `log_time_order` are capture order); publish_time = when the recorder received it.
RECORD_ENCODING = "emotion-edge.wire.v1"
RECORD_PROFILE = "emotion-edge"


def pack(parts: Sequence[Any]) -> bytes:
    """Envelope parts (topic, header, payload) -> one MCAP message body (topic excluded)."""
    header, payload = _as_buffer(parts[1]), _as_buffer(parts[2])
    return len(header).to_bytes(4, "little") + bytes(header) + bytes(payload)


def unpack(topic: str, data: bytes | memoryview) -> list[Any]:
    """An MCAP message body back into wire parts; raises WireError when it is not one."""
    view = memoryview(data)
    if len(view) < 4:
        raise WireError("bad_record", "shorter than its length prefix")
    n = int.from_bytes(view[:4], "little")
    if n > MAX_HEADER_BYTES or 4 + n > len(view):
        raise WireError("bad_record", f"header length {n}")
    try:
        topic_bytes = topic.encode("ascii")
    except UnicodeEncodeError as exc:  # a channel topic from a file is untrusted too
        raise WireError("bad_record", f"topic {topic[:20]!r}") from exc
    return [topic_bytes, view[4 : 4 + n], view[4 + n :]]


MAX_CHUNK_BYTES = 64 * 2**20  # a chunk header claiming more is corrupt, not allocated


def iter_recording(path: str, *, topics: Sequence[str] = ()) -> Any:
    """Yield (log_time_ns, topic, parts) for every envelope in an MCAP recording, in file order.

    Reads the file as a stream, so a recording whose writer was killed (no summary, a torn
    last chunk) still yields everything up to its last complete chunk. `topics`: prefixes.
    A file is untrusted input: reading stops at the first record that is torn, fails its
    CRC, or claims a size beyond the limits (never allocated); a message body that is not an
    envelope is skipped. Nothing but the yielded envelopes comes out of it.
    """
    from mcap.records import Channel, Chunk, Message
    from mcap.stream_reader import StreamReader, breakup_chunk

    channels: dict[int, str] = {}
    with open(path, "rb") as stream:
        records = StreamReader(
            stream, record_size_limit=MAX_CHUNK_BYTES, emit_chunks=True, validate_crcs=True
        ).records
        while True:
            try:
                record = next(records)
                if isinstance(record, Chunk):
                    if record.uncompressed_size > MAX_CHUNK_BYTES:
                        return
                    inner = breakup_chunk(record, validate_crc=True)
                else:
                    inner = [record]
            except StopIteration:
                return
            # The mcap reader and its decompressors raise assorted types on corrupt bytes
            # (McapError, ValueError, EOFError, struct.error, OverflowError, ZstdError, ...):
            # all mean "torn or corrupt from here on"; everything before it was yielded.
            except Exception:  # noqa: BLE001
                return
            for item in inner:
                if isinstance(item, Channel):
                    if item.message_encoding == RECORD_ENCODING:
                        channels[item.id] = item.topic
                elif isinstance(item, Message) and item.channel_id in channels:
                    topic = channels[item.channel_id]
                    if topics and not any(topic.startswith(t) for t in topics):
                        continue
                    try:
                        parts = unpack(topic, item.data)
                    except WireError:
                        continue
                    yield item.log_time, topic, parts
