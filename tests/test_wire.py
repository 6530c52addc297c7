"""The wire format: round trips, zero-copy payloads and one typed error for everything bad."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import wire
from edge.wire import Header, WireError


def frame_header(**overrides: object) -> Header:
    fields: dict = dict(
        sensor="mic0", modality="audio", kind="frame", seq=7, t_mono_ns=123, t_wall_ns=456
    )
    fields.update(overrides)
    return Header(**fields)


def as_bytes(parts: list) -> list[bytes]:
    return [bytes(p) for p in parts]


def test_round_trip_keeps_array_dtype_shape_and_stamps() -> None:
    audio = (np.arange(1600) - 800).astype(np.int16)
    parts = wire.encode(frame_header(), audio)
    assert parts[0] == b"audio/mic0"
    env = wire.decode(as_bytes(parts))
    assert env.header.seq == 7 and env.header.t_mono_ns == 123 and env.header.t_wall_ns == 456
    assert env.header.dtype == "int16" and env.header.shape == (1600,)
    np.testing.assert_array_equal(env.payload, audio)
    assert not env.payload.flags.writeable


def test_encode_sends_the_array_buffer_without_copying() -> None:
    crops = np.zeros((2, 48, 48), np.uint8)
    payload = wire.encode(frame_header(modality="video"), crops)[2]
    crops[0, 0, 0] = 99
    assert payload[0] == 99  # the part is a view on the caller's array


def test_decode_payload_is_a_view_on_the_received_buffer() -> None:
    parts = as_bytes(wire.encode(frame_header(), np.ones(4, np.int16)))
    received = [parts[0], parts[1], bytearray(parts[2])]
    env = wire.decode(received)
    received[2][0] = 5
    assert env.payload[0] == 5


def test_text_and_json_documents() -> None:
    text = "I am fine, really."
    parts = wire.encode(frame_header(modality="text", encoding="utf-8"), text.encode())
    assert wire.decode(as_bytes(parts)).text() == text
    doc = {"label": "happy", "probs": {"happy": 0.25}}
    parts = wire.json_message(kind="estimate", seq=1, t_mono_ns=5, t_wall_ns=6, doc=doc)
    env = wire.decode(as_bytes(parts))
    assert env.topic == "estimate" and env.header.modality == "fusion" and env.json() == doc


def test_heartbeat_has_empty_payload_and_state() -> None:
    parts = wire.encode(frame_header(kind="heartbeat", state="empty"))
    env = wire.decode(as_bytes(parts))
    assert env.header.kind == "heartbeat" and env.header.state == "empty"
    assert env.payload.size == 0


def good_parts() -> list[bytes]:
    return as_bytes(wire.encode(frame_header(), np.zeros(10, np.int16)))


def with_header(**changes: object) -> list[bytes]:
    topic, header, payload = good_parts()
    doc = json.loads(header)
    doc.update(changes)
    return [topic, json.dumps(doc).encode(), payload]


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        (good_parts()[:2], "part_count"),
        (good_parts() + [b"x"], "part_count"),
        ([good_parts()[0], b"\xff\xfe", good_parts()[2]], "bad_header_json"),
        ([good_parts()[0], b"[1,2]", good_parts()[2]], "bad_header_json"),
        ([good_parts()[0], b"{" * 5000, good_parts()[2]], "header_too_large"),
        (with_header(v=2), "bad_version"),
        (with_header(v=True), "bad_version"),
        (with_header(seq="7"), "bad_field"),
        (with_header(seq=-1), "bad_field"),
        (with_header(t_mono_ns=1.5), "bad_field"),
        (with_header(sensor="a/b"), "bad_field"),
        (with_header(modality="smell"), "bad_field"),
        (with_header(kind="estimate"), "bad_kind"),
        (with_header(kind="frame", modality="fusion"), "bad_kind"),
        (with_header(dtype="object"), "bad_dtype"),
        (with_header(dtype="O"), "bad_dtype"),
        (with_header(shape=[11]), "size_mismatch"),
        (with_header(shape=[-10]), "bad_shape"),
        (with_header(shape=[1, 1, 1, 1, 10]), "bad_shape"),
        (with_header(encoding="pickle"), "bad_encoding"),
        (with_header(state="great"), "bad_state"),
        ([b"video/mic0", good_parts()[1], good_parts()[2]], "topic_mismatch"),
    ],
)
def test_malformed_messages_raise_one_typed_error(parts: list[bytes], reason: str) -> None:
    with pytest.raises(WireError) as info:
        wire.decode(parts)
    assert info.value.reason == reason


def test_oversized_payload_is_rejected_before_parsing() -> None:
    parts = as_bytes(wire.encode(frame_header(), np.zeros(1000, np.int16)))
    with pytest.raises(WireError) as info:
        wire.decode(parts, max_payload_bytes=1999)
    assert info.value.reason == "payload_too_large"
    assert wire.decode(parts, max_payload_bytes=2000).payload.size == 1000


def test_link_of_names_the_topic_or_unknown() -> None:
    assert wire.link_of([b"audio/mic0", b"", b""]) == "audio/mic0"
    assert wire.link_of([b"\xff\x00"]) == "unknown"
    assert wire.link_of([]) == "unknown"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_decode_of_arbitrary_bytes_raises_only_wire_error(parts: list[bytes]) -> None:
    try:
        env = wire.decode(parts)
    except WireError:
        return
    assert env.header.v == wire.SCHEMA_VERSION  # only a fully valid message gets here


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(sorted(wire._REQUIRED) + ["x"]), json_values),
    st.binary(max_size=32),
)
def test_decode_of_arbitrary_headers_raises_only_wire_error(header: dict, payload: bytes) -> None:
    base = json.loads(good_parts()[1])
    base.update(header)
    try:
        env = wire.decode([b"audio/mic0", json.dumps(base).encode(), payload])
    except WireError:
        return
    assert env.payload.nbytes == len(payload)
