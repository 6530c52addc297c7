"""Fault matrix: the camera device vanishes and returns, on the real OpenCV backend.

The "camera" is an IP camera: a real HTTP server process streaming MJPEG
(``multipart/x-mixed-replace``, what IP cameras serve) of frames with a real CK+ face pasted
in, read by a real ``edge-sensor camera --source http://...`` process (OpenCV's FFmpeg
backend, Haar face detection) that publishes to a real ``edge-daemon`` (real onnxruntime
model). Killing the server is the camera vanishing (the stream ends mid-frame, then every
connect is refused); starting it again on the same port is the camera coming back.

Asserted: the daemon publishes every hop and the camera process stays alive; while the
camera is gone its heartbeats go on, so the daemon reads ``stale`` (alive, no frames) -- never
``dead`` and never ``empty`` (not even when the last thing the camera saw was no face: gone
is not "no face in view"); the sensor reconnects with bounded exponential backoff (counted)
and face crops flow again (``ok``), or ``empty`` when the returning camera sees no face.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge.clock import monotonic_ns
from tests.faults.support import HEARTBEAT_MS, HOP_MS, WINDOW_MS, hops_ok, rig
from tests.helpers import spawn, stop

pytest.importorskip("cv2")

SERVER = r"""
import sys, time, http.server, socketserver
import numpy as np, cv2
port, face_png = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
frame = np.full((480, 640, 3), 110, np.uint8)
frame += rng.integers(0, 12, frame.shape, dtype=np.uint8)
if face_png != "-":
    face = cv2.imread(face_png, cv2.IMREAD_GRAYSCALE)
    frame[140:332, 224:416] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)[..., None]
jpg = cv2.imencode(".jpg", frame)[1].tobytes()
head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
part = head + jpg + b"\r\n"

class Camera(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        while True:
            self.wfile.write(part)
            time.sleep(1 / 15)
    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

Server(("127.0.0.1", port), Camera).serve_forever()
"""

GONE_S = 3.0  # > reconnect backoff steps 0.1 + 0.2 + 0.4 + 0.8 s: several refused attempts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def camera(port: int, face: Path | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(face or "-")])


def wait_listening(port: int, timeout_s: float = 20.0) -> None:
    """Until the camera server accepts connections (its Python start takes a while)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the camera server never listened"
            time.sleep(0.05)


def video(e: dict[str, Any]) -> str:
    return str(e["availability"]["video"])


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.timeout(120)
def test_camera_vanishes_and_returns(tmp_path: Path, shared_data: Path) -> None:
    face = sorted((shared_data / "ckplus48" / "happy").glob("*.png"))[-1]
    port = free_port()
    server = camera(port, face)
    # the first connect must succeed, or the sensor's first open counts as a reconnect
    wait_listening(port)
    with rig(tmp_path, sensors=()) as r:
        col = r.collector
        sensor = spawn(
            "edge-sensor", "camera", "--source", f"http://127.0.0.1:{port}/cam.mjpg",
            *("--run-dir", str(r.run), "--heartbeat-ms", str(HEARTBEAT_MS)),
            log=tmp_path / "camera.log",
        )
        try:
            assert col.wait_for(lambda e: video(e) == "ok", 40), r.log_tail()
            t_start = monotonic_ns()
            spans = []  # (gone, back, what the returning camera sees)
            for returning in (None, face):  # comes back showing no face, then a face
                server.kill()
                server.wait(5)
                gone = monotonic_ns()
                time.sleep(GONE_S)
                server = camera(port, returning)
                back = monotonic_ns()
                want = "ok" if returning else "empty"
                seen = col.wait_for(lambda e, b=back, w=want: e["t_close_ns"] > b
                                    and video(e) == w, 20)
                assert seen is not None, (tmp_path / "camera.log").read_text()[-3000:]
                spans.append((gone, back, seen["t_close_ns"], want))
            assert sensor.poll() is None, "the camera process survived its device"
            assert r.daemon is not None and r.daemon.poll() is None
            estimates = col.since(t_start)
        finally:
            stop(server)
            stop(sensor)
    log = (tmp_path / "camera.log").read_text()

    assert hops_ok(estimates), "an estimate every hop"
    assert all(video(e) != "dead" for e in estimates), "heartbeats went on while it was gone"
    for gone, back, returned, _want in spans:
        # windows still holding frames from before it went are ok; then stale until it is back
        settled = gone + (WINDOW_MS + HOP_MS) * 1_000_000
        while_gone = [e for e in estimates if settled < e["t_close_ns"] < back]
        assert while_gone and {video(e) for e in while_gone} == {"stale"}, [
            video(e) for e in while_gone]
        reconnecting = [e for e in estimates if back < e["t_close_ns"] < returned]
        assert {video(e) for e in reconnecting} <= {"stale", "ok", "empty"}
        assert returned - back < 8_000_000_000, "back within the backoff cap + open time"
    assert video(estimates[-1]) == "ok"

    # the backend's counters (logged at exit): two vanishings, two reconnects, and a bounded
    # number of attempts -- exponential backoff, not a busy loop (at a fixed 100 ms, ~30 each)
    counters = {k: float(v) for k, v in re.findall(r"'(\w+)': ([0-9.]+)", log.splitlines()[-1])}
    assert counters["reconnects"] == 2, log[-2000:]
    assert 2 <= counters["errors"] and 2 <= counters["reconnect_attempts"] <= 16, counters
    assert counters["faces"] > 0 and counters["no_face"] > 0
    assert "stopped delivering frames" in log and "cannot open camera source" in log
    assert "Traceback" not in log
