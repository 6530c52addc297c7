"""Fuzzing the recording reader (hypothesis; bench/fuzz_atheris.py for the long run): a
recording cut anywhere, with bytes flipped or garbage spliced in, reads back through
`wire.iter_recording` as envelopes or stops -- it never raises, never yields a message that
does not decode or raises WireError, and never allocates far beyond the file's size."""

from __future__ import annotations

import io
import tempfile
import tracemalloc
from functools import cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcap.writer import CompressionType, Writer

from edge import wire

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_MESSAGES = 60


@cache
def recording(n_messages: int = N_MESSAGES) -> bytes:
    """A real recording as edge-record writes it: zstd chunks, one channel per topic."""
    buf = io.BytesIO()
    writer = Writer(buf, chunk_size=2048, compression=CompressionType.ZSTD)
    writer.start(profile=wire.RECORD_PROFILE, library="test")
    channels: dict[str, int] = {}
    for seq in range(n_messages):
        modality = ("audio", "video", "text")[seq % 3]
        payload = {
            "audio": np.full(200, seq, np.int16),
            "video": np.full((1, 48, 48), seq, np.uint8),
            "text": np.frombuffer(f"utterance {seq}".encode(), np.uint8),
        }[modality]
        header = wire.Header(
            sensor="s", modality=modality, kind="frame", seq=seq, t_mono_ns=seq * 10**8,
            t_wall_ns=0, encoding="utf-8" if modality == "text" else "raw",
        )
        parts = wire.encode(header, payload)
        topic = header.topic
        if topic not in channels:
            channels[topic] = writer.register_channel(
                topic=topic, message_encoding=wire.RECORD_ENCODING, schema_id=0
            )
        writer.add_message(
            channel_id=channels[topic], log_time=header.t_mono_ns, data=wire.pack(parts),
            publish_time=header.t_mono_ns, sequence=seq,
        )
        if seq % 10 == 9:
            writer.flush()
    writer.finish()
    return buf.getvalue()


def read_all(data: bytes) -> list[int]:
    """Seqs of the envelopes that read back and decode; asserts nothing else escapes."""
    with tempfile.NamedTemporaryFile(suffix=".mcap") as f:
        f.write(data)
        f.flush()
        seqs = []
        for _, _, parts in wire.iter_recording(f.name):
            try:
                seqs.append(wire.decode(parts).header.seq)
            except wire.WireError:
                pass
    return seqs


def test_the_intact_recording_reads_back_whole() -> None:
    assert read_all(recording()) == list(range(N_MESSAGES))


@SETTINGS
@given(cut=st.integers(0, 1 << 20))
def test_a_recording_cut_anywhere_reads_as_a_prefix(cut: int) -> None:
    data = recording()
    cut %= len(data) + 1
    seqs = read_all(data[:cut])
    assert seqs == list(range(len(seqs)))  # what is there is in order and intact


@SETTINGS
@given(st.data())
def test_flipped_bytes_and_spliced_garbage_never_escape(data: st.DataObject) -> None:
    blob = bytearray(recording())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(blob) - 1))
        if data.draw(st.booleans()):
            blob[at] = data.draw(st.integers(0, 255))
        else:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    seqs = read_all(bytes(blob))
    assert all(0 <= s < 2**63 for s in seqs)


def test_a_chunk_claiming_a_huge_uncompressed_size_is_not_allocated() -> None:
    """The chunk header's uncompressed_size is the peer's word: 2^40 must not be allocated."""
    data = bytearray(recording())
    # MCAP chunk record: opcode 0x06, u64 length, u64 start, u64 end, u64 uncompressed_size
    at = data.index(b"\x06", 8 + 1)
    while data[at] != 0x06:
        at = data.index(b"\x06", at + 1)
    size_at = at + 1 + 8 + 8 + 8
    data[size_at : size_at + 8] = (1 << 40).to_bytes(8, "little")
    tracemalloc.start()
    try:
        read_all(bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak} bytes"
