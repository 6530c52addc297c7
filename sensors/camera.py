"""OpenCV camera sensor: device index, video file or stream URL -> 48x48 grayscale face crops.

The capture process publishes what the video expert needs (one face crop per frame), never
full frames: a 640x480 BGR frame is 900 KB, a crop 2.3 KB, and the daemon stays free of cv2.

Why a grab thread: `VideoCapture.read()` has no timeout of its own (the V4L2 backend blocks
10 s on an unplugged camera, a network stream can block forever), so a dedicated thread
decodes and detects, and `read(timeout_s)` waits on a bounded queue. When the consumer is
slower than the camera the oldest sample is dropped and counted.

Face detection uses the Haar cascade that `opencv-python-headless<5` ships
(`cv2.data.haarcascades`, no download; ../shared/notes/opencv-face-detection.md). Detection
runs on a downscaled grayscale copy of the frame (about 4x cheaper at 640x480), the largest
face wins, and the crop is cut from the full-resolution frame.

A camera that vanishes (USB unplugged, a device node that goes away, an IP camera's stream
that ends or stops answering) is a device error, not the end of a file: the grab thread stops,
`read` raises `SensorError`, and the capture thread (`sensors.capture.CaptureThread`) closes
it and calls `connect` again with bounded exponential backoff (``reconnect_min_ms`` ..
``reconnect_max_ms``) until it is back; ``errors`` / ``reconnect_attempts`` / ``reconnects``
count it and ``last_error`` says why. Only a regular file that ends is "finished". While it is
gone the process keeps heartbeating (the link stays up, the daemon reads the camera as
``stale``: alive, no frames; never ``empty``, which means "working, no face in view").

File playback: with `replay_t0_ns` set, frame k counts as captured at t0 + k/fps and is
released at that time (a file decodes far faster than real time); a sensor (re)started late
seeks to where the drive is now, as a camera that was unplugged would not show the past.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sensors.base import Sample, Sensor, SensorError
from sensors.privacy import PrivacySwitch

FACE_SIZE = 48  # engines.backend.FACE_SIZE; sensors/ does not import engines/
CATCH_UP_NS = 500_000_000  # replay: further behind than this, seek instead of catching up


def _mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


@dataclass(frozen=True, kw_only=True)
class CameraConfig:
    """How to open the camera and find the face. `source`: "0" (device index), path or URL."""

    source: str
    detect_width: int = 320  # width the frame is downscaled to for detection
    min_face_frac: float = 0.15  # smallest face, as a fraction of the frame height
    scale_factor: float = 1.1
    min_neighbors: int = 4
    queue_len: int = 4  # samples buffered between the grab thread and read()
    replay_t0_ns: int | None = None  # files only: play in real time as if started at t0
    open_timeout_s: float = 5.0
    privacy_file: str | None = None  # while it exists the camera is released (disabled)

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("camera source is empty")
        if self.detect_width < 64:
            raise ValueError(f"detect_width {self.detect_width} < 64")
        if not 0.0 < self.min_face_frac < 1.0:
            raise ValueError(f"min_face_frac {self.min_face_frac} not in (0, 1)")
        if self.scale_factor <= 1.0:
            raise ValueError("scale_factor must be > 1")
        if self.queue_len < 1:
            raise ValueError("queue_len must be >= 1")


class FaceCropper:
    """Largest frontal face in a frame -> (48, 48) uint8 grayscale crop, or None."""

    def __init__(self, cfg: CameraConfig) -> None:
        import cv2

        self._cv2 = cv2
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise SensorError(f"Haar cascade did not load from {path} (opencv-python-headless<5?)")
        self._cfg = cfg

    def crop(self, frame: np.ndarray) -> np.ndarray | None:
        cv2 = self._cv2
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        h, w = gray.shape
        scale = min(1.0, self._cfg.detect_width / w)
        small = gray if scale == 1.0 else cv2.resize(
            gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
        )
        min_px = max(24, round(self._cfg.min_face_frac * small.shape[0]))
        faces = self._cascade.detectMultiScale(
            small, self._cfg.scale_factor, self._cfg.min_neighbors, minSize=(min_px, min_px)
        )
        if len(faces) == 0:
            return None
        x, y, fw, fh = max(faces, key=lambda b: int(b[2]) * int(b[3]))
        x0, y0 = int(x / scale), int(y / scale)
        x1, y1 = min(w, int((x + fw) / scale)), min(h, int((y + fh) / scale))
        face = gray[y0:y1, x0:x1]
        out = cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(out, dtype=np.uint8)


class CameraSensor(Sensor):
    """Face crops from a camera, file or URL. Sample data: (1, 48, 48) uint8, or (0, 48, 48)
    with state "empty" when no face is in view."""

    modality = "video"

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self._cap: Any = None
        self._cropper: FaceCropper | None = None
        self._queue: queue.Queue[Sample] = queue.Queue(maxsize=cfg.queue_len)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self.finished = False  # a file played to its end
        self.counters = {"frames": 0, "faces": 0, "no_face": 0, "dropped": 0, "skipped": 0,
                         "errors": 0, "reconnect_attempts": 0, "reconnects": 0}
        self.last_error = ""
        self._failed = False  # the device failed or did not open: the next connect retries it
        self._source_is_file = False
        self._fps_window: list[int] = []  # recent frame stamps for a measured frame rate
        self.file_fps = 0.0
        self._privacy = PrivacySwitch(cfg.privacy_file)
        self._want_open = False

    # -- Sensor interface -------------------------------------------------------------
    def connect(self) -> None:
        import cv2

        self._want_open = True
        if self._thread is not None or self._privacy.on():
            return
        src: int | str = int(self.cfg.source) if self.cfg.source.isdigit() else self.cfg.source
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cfg.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.open_timeout_s * 1000)]
        if self._failed:
            self.counters["reconnect_attempts"] += 1
        cap = cv2.VideoCapture(src, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            self._fail(f"cannot open camera source {self.cfg.source!r}")
            raise SensorError(self.last_error)
        if self._failed:
            self.counters["reconnects"] += 1
            self._failed = False
        self._source_is_file = self._regular_file()
        self._cap = cap
        self._cropper = FaceCropper(self.cfg)
        self.file_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if self.cfg.replay_t0_ns is not None and self.file_fps <= 0:
            cap.release()
            raise SensorError(f"{self.cfg.source!r}: replay needs a file with a frame rate")
        self._stop.clear()
        self._error = None
        self.finished = False
        self._thread = threading.Thread(target=self._grab_loop, name="camera-grab", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._want_open = False
        self._release()

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.open_timeout_s + 1.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read(self, timeout_s: float) -> Sample | None:
        if self._privacy.on():
            if self._thread is not None:
                self._release()  # privacy: the camera is really closed, not just ignored
                self._queue = queue.Queue(maxsize=self.cfg.queue_len)
            deadline = _mono_ns() + int(max(0.0, timeout_s) * 1e9)
            return self._privacy.disabled_sample(
                deadline, np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8))
        if self._thread is None and self._want_open:
            self.connect()  # privacy ended: reopen (a replayed file seeks to "now")
        try:
            return self._queue.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            if self._error is not None:
                self._fail(self._error)
                raise SensorError(self._error) from None
            return None

    def _fail(self, reason: str) -> None:
        self.counters["errors"] += 1
        self.last_error = reason
        self._failed = True

    # -- counters ---------------------------------------------------------------------
    def fps(self) -> float:
        """Frames per second over the last ~30 frames (measured, not the nominal rate)."""
        w = self._fps_window
        if len(w) < 2:
            return 0.0
        return (len(w) - 1) * 1e9 / max(1, w[-1] - w[0])

    def stats(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in self.counters.items()}, "fps": round(self.fps(), 2)}

    # -- grab thread ------------------------------------------------------------------
    def _grab_loop(self) -> None:
        import cv2

        cap, cropper = self._cap, self._cropper
        assert cap is not None and cropper is not None
        t0 = self.cfg.replay_t0_ns
        period_ns = round(1e9 / self.file_fps) if self.file_fps > 0 else 0
        if t0 is not None:
            # Started (or restarted) late: begin with the frame the drive is at now.
            late_frames = max(0, (_mono_ns() - t0) // period_ns)
            if late_frames:
                cap.set(cv2.CAP_PROP_POS_FRAMES, float(late_frames))
                self.counters["skipped"] += int(late_frames)
            index = int(late_frames)
        else:
            index = 0
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok:
                if self._is_file():
                    self.finished = True  # a recorded drive played to its end
                else:  # unplugged, stream gone or silent past the read timeout: reconnect
                    self._error = f"camera {self.cfg.source!r} stopped delivering frames"
                return
            if t0 is not None:
                due_ns = t0 + (index + 1) * period_ns
                behind = (_mono_ns() - due_ns) // period_ns
                if behind * period_ns > CATCH_UP_NS:
                    # Far behind the drive (the process was stopped, the host starved us):
                    # jump to "now" like a live camera would, rather than replay the past.
                    cap.set(cv2.CAP_PROP_POS_FRAMES, float(index + 1 + behind))
                    self.counters["skipped"] += int(behind)
                    index += int(behind)
                    continue
                while not self._stop.is_set() and (wait := due_ns - _mono_ns()) > 0:
                    time.sleep(min(wait / 1e9, 0.05))
                stamp = due_ns
            else:
                stamp = _mono_ns()
            index += 1
            self._publish(cropper.crop(frame), stamp)

    def _is_file(self) -> bool:
        """A regular file (a recorded video), not a device index, device node or stream."""
        return self._source_is_file

    def _regular_file(self) -> bool:
        src = self.cfg.source
        if src.isdigit() or "://" in src:
            return False
        try:
            return stat.S_ISREG(os.stat(src).st_mode)  # /dev/video0 is a character device
        except OSError:
            return False

    def _publish(self, crop: np.ndarray | None, stamp_ns: int) -> None:
        self.counters["frames"] += 1
        self._fps_window.append(stamp_ns)
        if len(self._fps_window) > 30:
            del self._fps_window[0]
        if crop is None:
            self.counters["no_face"] += 1
            sample = Sample(data=np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8), t_mono_ns=stamp_ns,
                            t_wall_ns=time.time_ns(), state="empty")
        else:
            self.counters["faces"] += 1
            sample = Sample(data=crop[None], t_mono_ns=stamp_ns, t_wall_ns=time.time_ns())
        if self.cfg.replay_t0_ns is None and self._is_file():
            # A file read as fast as possible is not live: wait for the consumer, drop nothing.
            while not self._stop.is_set():
                try:
                    self._queue.put(sample, timeout=0.1)
                    return
                except queue.Full:
                    continue
            return
        while True:
            try:
                self._queue.put_nowait(sample)
                return
            except queue.Full:
                try:  # the consumer is behind: the newest frame matters most, drop the oldest
                    self._queue.get_nowait()
                    self.counters["dropped"] += 1
                except queue.Empty:
                    pass
