"""Fault matrix, recorder: SIGKILL in the middle of a chunk, the disk filling up while
recording, and the privacy default (no camera pixels on disk unless asked for).

Flushed means on disk: after a kill or a full disk the recording reads back (as a stream) as
a gap-free prefix of what was sent that holds at least everything sent before the last flush.
(The basic kill-after-flush case and a clean stop's index are in tests/test_record_replay.py.)
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edge import wire
from tests.faults.support import envelope
from tests.helpers import entry_point, short_tmp, stop

FULL_BYTES = 1024 * 1024


@contextlib.contextmanager
def recorder(
    run: Path, out: Path, *args: str, preexec: Any = None
) -> Iterator[tuple[subprocess.Popen[bytes], zmq.Socket[Any]]]:
    """edge-record up (READY over a notify socket) and a PUB connected to its ingress."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(run / "notify"))
    notify.settimeout(30)
    with open(run / "record.err", "wb") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [*entry_point("edge-record"), "--out", str(out), "--run-dir", str(run), *args],
            env={**os.environ, "NOTIFY_SOCKET": str(run / "notify")},
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=preexec,
        )
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    try:
        assert b"READY=1" in notify.recv(4096)
        pub.connect(f"ipc://{run}/record.ipc")
        time.sleep(0.3)
        yield proc, pub
    finally:
        pub.close(linger=0)
        ctx.term()
        stop(proc)
        notify.close()


def frames(first: int, n: int, *, modality: str = "video", noise: bool = False) -> list[Any]:
    rng = np.random.default_rng(first)
    out = []
    for seq in range(first, first + n):
        if modality == "video":  # incompressible when noise: fills a disk at its real size
            payload = rng.integers(0, 255, (1, 48, 48), dtype=np.uint8) if noise else None
        else:
            payload = np.full(800, seq, np.int16)
        out.append(envelope(modality, "cam" if modality == "video" else "mic", seq,
                            payload=payload))
    return out


def recorded_seqs(path: Path, topic: str) -> list[int]:
    return [
        wire.decode(p).header.seq for _, _, p in wire.iter_recording(str(path), topics=(topic,))
    ]


@pytest.mark.timeout(60)
def test_recorder_sigkilled_mid_chunk_keeps_every_flushed_envelope() -> None:
    with short_tmp() as run:
        out = run / "mid.mcap"
        with recorder(run, out, "--flush-ms", "700") as (proc, pub):
            for parts in frames(0, 200, modality="audio"):
                pub.send_multipart(parts)
            time.sleep(1.2)  # a flush has passed since the first batch
            for parts in frames(200, 200, modality="audio"):
                pub.send_multipart(parts)
            time.sleep(0.05)  # second batch received, its chunk still open
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
        seqs = recorded_seqs(out, "audio/")
        assert seqs == list(range(len(seqs))), "a gap-free prefix, nothing corrupted"
        assert 200 <= len(seqs) <= 400, len(seqs)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_BYTES, FULL_BYTES))


@contextlib.contextmanager
def small_disk(run: Path, kind: str) -> Iterator[tuple[Path, Any]]:
    """``tmpfs``: a 1 MiB tmpfs (a real ENOSPC; needs root). ``rlimit``: a 1 MiB
    RLIMIT_FSIZE on the recorder (EFBIG), which works for any user."""
    mount = run / "disk"
    mount.mkdir()
    if kind == "rlimit":
        yield mount, _limit_file_size
        return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FULL_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode()[:100]}")
    try:
        yield mount, None
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["tmpfs", "rlimit"])
def test_disk_full_stops_the_recording_cleanly_and_keeps_what_was_flushed(kind: str) -> None:
    with short_tmp() as run, small_disk(run, kind) as (disk, preexec):
        out = disk / "full.mcap"
        with recorder(run, out, "--flush-ms", "100", "--video-frames", preexec=preexec) as (
            proc,
            pub,
        ):
            sent = 0
            for parts in frames(0, 800, noise=True):  # ~1.9 MB of crops: twice the disk
                pub.send_multipart(parts)
                sent += 1
                time.sleep(0.002)
                if proc.poll() is not None:
                    break
            code = proc.wait(10)
        err = (run / "record.err").read_text()
        assert code == 74, err[-2000:]  # EX_IOERR: a clear exit, not a crash
        assert "recording stopped" in err and "Traceback" not in err, err[-2000:]
        seqs = recorded_seqs(out, "video/")
        assert seqs == list(range(len(seqs))) and len(seqs) > 100, len(seqs)
        assert len(seqs) < sent


@pytest.mark.timeout(60)
def test_recordings_hold_no_camera_pixels_unless_asked_for() -> None:
    from mcap.reader import make_reader

    with short_tmp() as run:
        for name, args in (("default", ()), ("opt_in", ("--video-frames",))):
            out = run / f"{name}.mcap"
            with recorder(run, out, *args) as (proc, pub):
                for parts in [*frames(0, 20), *frames(0, 20, modality="audio")]:
                    pub.send_multipart(parts)
                time.sleep(0.5)
                assert stop(proc) == 0
            (run / "notify").unlink()
            with open(out, "rb") as f:
                summary = make_reader(f).get_summary()
            assert summary is not None and summary.statistics is not None
            per_channel = summary.statistics.channel_message_counts
            topics = {c.topic: per_channel.get(cid, 0) for cid, c in summary.channels.items()}
            assert topics["audio/mic"] == 20 and topics["/links/video/cam"] == 20
            if name == "default":
                assert "video/cam" not in topics  # no face crop on disk
                assert recorded_seqs(out, "video/") == []
            else:
                assert topics["video/cam"] == 20
                assert recorded_seqs(out, "video/") == list(range(20))


def test_recorder_config_defaults_to_no_video(tmp_path: Path) -> None:
    from edge.record import RecordConfig

    assert RecordConfig(out=str(tmp_path / "x.mcap")).video_frames is False
