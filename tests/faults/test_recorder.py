"""Fault matrix, recorder restarts and recorder links: a restarted `edge-record` never
truncates a recording (refused, --new-file, --overwrite), and on tcp the recorder speaks
CurveZMQ like the daemon and the sensors (a keyed recorder records, unkeyed peers are
refused both ways). Real edge-record / edge-daemon / edge-sensor processes, real sockets."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge import keys, wire
from tests.faults.support import daemon_toml
from tests.faults.test_recording_faults import frames, recorded_seqs, recorder
from tests.faults.test_security import _frame_parts, free_port
from tests.helpers import MODEL_DIR, entry_point, short_tmp, spawn, stop


def record_some(out: Path, first: int, n: int, *args: str) -> None:
    """A recorder run (its own run dir) that records audio seq first..first+n, stops cleanly."""
    with short_tmp() as run, recorder(run, out, *args) as (proc, pub):
        for parts in frames(first, n, modality="audio"):
            pub.send_multipart(parts)
        time.sleep(0.8)
        assert proc.poll() is None


@pytest.mark.timeout(90)
def test_a_restarted_recorder_never_truncates_the_recording(tmp_path: Path) -> None:
    out = tmp_path / "drive.mcap"
    with short_tmp() as run, recorder(run, out) as (proc, pub):  # crashes after a flush
        for parts in frames(0, 50, modality="audio"):
            pub.send_multipart(parts)
        time.sleep(1.0)
        proc.kill()
        proc.wait(5)
    first = out.read_bytes()
    assert recorded_seqs(out, "audio/") == list(range(50))

    # restarted with the same command: refused, clear error, the recording untouched
    with short_tmp() as run:
        done = subprocess.run(
            [*entry_point("edge-record"), "--out", str(out), "--run-dir", str(run)],
            capture_output=True, text=True, timeout=60,
        )
        assert not (run / "record.ipc").exists(), "a refused recorder binds nothing"
    assert done.returncode == 73, done.stderr
    assert "exists" in done.stderr and "--overwrite" in done.stderr and "--new-file" in done.stderr
    assert "Traceback" not in done.stderr
    assert out.read_bytes() == first

    # --new-file (what a supervisor restarting the recorder passes): next free name, each time
    for k, start in ((1, 100), (2, 200)):
        record_some(out, start, 20, "--new-file")
        segment = tmp_path / f"drive-{k}.mcap"
        assert recorded_seqs(segment, "audio/") == list(range(start, start + 20))
        resolved = json.loads((tmp_path / f"drive-{k}.record.resolved.json").read_text())
        assert resolved["out"] == str(segment) and resolved["on_exists"] == "new"
    assert out.read_bytes() == first

    # --overwrite replaces it, when asked for
    record_some(out, 300, 10, "--overwrite")
    assert recorded_seqs(out, "audio/") == list(range(300, 310))
    assert sorted(p.name for p in tmp_path.glob("*.mcap")) == [
        "drive-1.mcap", "drive-2.mcap", "drive.mcap"]


def topics_in(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, topic, _ in wire.iter_recording(str(path)):
        counts[topic] = counts.get(topic, 0) + 1
    return counts


def count(counts: dict[str, int], prefix: str) -> int:
    return sum(n for t, n in counts.items() if t.startswith(prefix))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_curve_recorder_on_tcp_records_keyed_peers_and_refuses_unkeyed_ones(
    tmp_path: Path,
) -> None:
    key_dir = keys.generate(tmp_path / "curve", ("client", "recorder", "intruder"))
    (key_dir / keys.AUTHORIZED / "intruder.key").unlink()  # a key pair nobody admitted
    d_in, d_tel, r_in = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    good, intruder = tmp_path / "good.mcap", tmp_path / "intruder.mcap"

    # tcp without keys is a config error, as for the daemon and the sensors
    no_keys = subprocess.run(
        [*entry_point("edge-record"), "--out", str(tmp_path / "plain.mcap"), "--bind", r_in],
        capture_output=True, text=True, timeout=60,
    )
    assert no_keys.returncode == 2 and "curve_dir" in no_keys.stderr
    assert not (tmp_path / "plain.mcap").exists()

    ctx = zmq.Context()
    socks: list[zmq.Socket[Any]] = []
    procs: list[subprocess.Popen[bytes]] = []
    with short_tmp() as run:
        for sub in ("rt", "rec", "rec2"):
            (run / sub).mkdir(mode=0o700)
        curve = ("--curve-dir", str(key_dir))
        try:
            procs.append(spawn(
                "edge-daemon", "--run-dir", str(run / "rt"), "--model-dir", str(MODEL_DIR),
                "--config", daemon_toml(run), "--ingress", d_in, "--telemetry", d_tel, *curve,
                log=tmp_path / "daemon.log",
            ))
            procs.append(spawn(  # the keyed recorder: CURVE server on its ingress, client of
                "edge-record", "--out", str(good), "--run-dir", str(run / "rec"),  # telemetry
                "--bind", r_in, "--connect", d_tel, *curve, "--curve-key", "recorder",
                "--flush-ms", "200", log=tmp_path / "record.log",
            ))
            procs.append(spawn(  # a recorder whose key the daemon does not know
                "edge-record", "--out", str(intruder), "--run-dir", str(run / "rec2"),
                "--connect", d_tel, *curve, "--curve-key", "intruder", "--flush-ms", "200",
                log=tmp_path / "record2.log",
            ))
            procs.append(spawn(  # one XPUB to both the daemon and the recorder
                "edge-sensor", "synthetic-audio", "--connect", d_in, "--connect", r_in, *curve,
                "--heartbeat-ms", "50", log=tmp_path / "sensor.log",
            ))
            plain_pub = ctx.socket(zmq.PUB)  # no CURVE at all, claims to be the camera
            rogue_pub = ctx.socket(zmq.PUB)  # CURVE, knows the server key, key not admitted
            rogue_pub.curve_publickey, rogue_pub.curve_secretkey = zmq.curve_keypair()
            rogue_pub.curve_serverkey = keys.server_public_key(key_dir)
            for s in (plain_pub, rogue_pub):
                s.setsockopt(zmq.LINGER, 0)
                s.connect(r_in)
                socks.append(s)
            deadline, seq = time.monotonic() + 60, 0
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                plain_pub.send_multipart(_frame_parts("video", "cam", seq))
                rogue_pub.send_multipart(_frame_parts("text", "va", seq))
                seq += 1
                time.sleep(0.05)
                if seq % 20 == 0 and good.exists():
                    counts = topics_in(good)
                    if count(counts, "audio/") >= 20 and count(counts, "estimate") >= 5:
                        break
            time.sleep(1.0)  # the peers kept knocking for another second
            assert all(p.poll() is None for p in procs), (tmp_path / "record.log").read_text()
        finally:
            for s in socks:
                s.close(linger=0)
            ctx.term()
            codes = [stop(p) for p in reversed(procs)]
    assert codes[:3] == [0, 0, 0], codes  # sensor, recorders: clean stops (index written)

    counts = topics_in(good)
    assert count(counts, "audio/") >= 20, counts  # the keyed sensor, through the CURVE bind
    assert count(counts, "estimate") >= 5 and count(counts, "status") >= 1, counts
    assert count(counts, "video/") == 0 and count(counts, "text/") == 0, counts  # refused
    assert seq >= 20  # the refused peers really sent
    refused = topics_in(intruder)
    assert count(refused, "estimate") == 0 and count(refused, "status") == 0, refused
    assert os.stat(good).st_size > 0
