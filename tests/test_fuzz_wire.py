"""Fuzzing the wire decoder (hypothesis; bench/fuzz_atheris.py runs the same targets for
millions of inputs): whatever bytes arrive, `wire.decode` returns a valid Envelope or raises
`WireError` -- never another exception -- and never allocates more than the message it was
given (a header cannot make it build a big array out of a small payload)."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge import wire

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def valid_parts(seq: int = 7) -> list[bytes]:
    header = wire.Header(
        sensor="mic", modality="audio", kind="frame", seq=seq, t_mono_ns=123, t_wall_ns=456
    )
    return [bytes(p) for p in wire.encode(header, np.arange(16, dtype=np.int16))]


def decode_or_wire_error(parts: list[Any]) -> wire.Envelope | None:
    try:
        envelope = wire.decode(parts, max_payload_bytes=1 << 16)
    except wire.WireError as exc:
        assert exc.reason and " " not in exc.reason  # a counter key
        return None
    # what decode accepts is self-consistent: it re-encodes to the same bytes
    again = [bytes(p) for p in wire.encode(envelope.header, envelope.payload)]
    assert wire.decode(again).header == envelope.header
    assert not envelope.payload.flags.writeable
    return envelope


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
FIELDS = list(wire._REQUIRED)


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=5))
@example([b"", b"", b""])
@example([b"audio/x", b"[]", b""])
@example([b"audio/x", b'{"v":1e999}', b""])
@example([b"audio/x", b"[" * 5000, b""])
def test_arbitrary_parts_decode_or_raise_wire_error(parts: list[bytes]) -> None:
    decode_or_wire_error(parts)


@SETTINGS
@given(st.sampled_from(FIELDS), json_values)
def test_any_value_in_any_header_field(field: str, value: Any) -> None:
    topic, header, payload = valid_parts()
    doc = json.loads(header)
    doc[field] = value
    decode_or_wire_error([topic, json.dumps(doc).encode(), payload])


@SETTINGS
@given(st.data())
def test_flipped_bytes_in_a_valid_envelope(data: st.DataObject) -> None:
    parts = [bytearray(p) for p in valid_parts()]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, 2))
        if parts[i]:
            j = data.draw(st.integers(0, len(parts[i]) - 1))
            parts[i][j] = data.draw(st.integers(0, 255))
    decode_or_wire_error([bytes(p) for p in parts])


@SETTINGS
@given(
    st.sampled_from(list(wire.DTYPES)),
    st.lists(st.integers(0, 6), max_size=wire.MAX_NDIM),
    st.integers(0, 2**63 - 1),
)
def test_every_valid_array_round_trips(dtype: str, shape: list[int], seq: int) -> None:
    array = np.random.default_rng(seq % 1000).integers(0, 100, shape).astype(wire.DTYPES[dtype])
    header = wire.Header(
        sensor="s", modality="video", kind="frame", seq=seq, t_mono_ns=1, t_wall_ns=2
    )
    envelope = wire.decode(wire.encode(header, array))
    assert envelope.header.seq == seq and envelope.header.dtype == dtype
    np.testing.assert_array_equal(envelope.payload, array)


@SETTINGS
@given(st.binary(max_size=200), st.text(max_size=30))
def test_recording_bodies_unpack_or_raise_wire_error(body: bytes, topic: str) -> None:
    try:
        parts = wire.unpack(topic, body)
    except wire.WireError:
        return
    assert len(parts) == 3 and wire.pack(parts) == body
    decode_or_wire_error(parts)
    assert isinstance(wire.link_of(parts), str)


ADVERSARIAL_SHAPES = [[2**31 - 1, 2**31 - 1], [2**30] * 4, [0, 2**31 - 1], [65536, 65536]]


@pytest.mark.parametrize("shape", ADVERSARIAL_SHAPES, ids=str)
def test_a_header_claiming_a_huge_shape_allocates_nothing(shape: list[int]) -> None:
    topic, header, payload = valid_parts()
    doc = json.loads(header)
    doc.update(shape=shape, dtype="float64")
    parts = [topic, json.dumps(doc).encode(), payload]
    tracemalloc.start()
    try:
        for _ in range(100):
            decode_or_wire_error(parts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"decode of a 32-byte payload peaked at {peak} bytes"


def test_payload_limit_is_checked_before_anything_is_parsed() -> None:
    topic, header, _ = valid_parts()
    big = bytes(2 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(wire.WireError, match="payload_too_large"):
            wire.decode([topic, header, big], max_payload_bytes=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # no copy of the 2 MiB payload was made
