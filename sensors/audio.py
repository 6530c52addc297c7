"""PyAudio microphone sensor: 16 kHz mono int16 blocks, voice activity, privacy, reconnects.

- Device by name (case-insensitive substring of PortAudio's device name) or by index.
- The stream runs at 16 kHz when the device supports it, else at the device's default rate,
  and blocks are resampled to 16 kHz (`StreamResampler`: windowed-sinc low-pass + linear
  interpolation, state carried across blocks so block edges leave no clicks).
- A reader thread does the blocking `stream.read`; `read(timeout_s)` waits on a bounded queue,
  so a hung driver never hangs the capture process. A stream that delivers nothing for
  `stall_s` is treated like an error.
- On a PortAudio error (device unplugged, driver error) the sensor closes everything,
  including the PortAudio instance (PortAudio only enumerates devices at initialisation, so a
  re-plugged device needs a fresh one), and `read` retries with exponential backoff; every
  attempt is counted. While it is down `read` returns None: the capture process keeps
  heartbeating without frames, which the watchdog reports as `stale`.
- Voice activity: blocks without speech are published as `empty` (no samples). The detector
  is WebRTC's VAD (`webrtcvad-wheels`, a maintained wheel of the Chromium/WebRTC GMM detector,
  no model download); with `vad="energy"` (or when it is not installed) a documented energy
  detector: a 20 ms frame is voiced when its RMS is above `energy_threshold_dbfs`. A block is
  speech when at least `min_voiced_frames` of its 20 ms frames are voiced, and speech is held
  for `hangover_ms` so the pauses inside a sentence are not cut out.
- Privacy: `set_privacy(True)` (or the `privacy_file` existing) closes the device, and `read`
  returns `disabled` samples (no data) once per block until capture is allowed again.
- `replay_t0_ns` is for file-backed devices (the ALSA `file` plugin, which delivers as fast
  as it is read): blocks are released in real time as if the file started at t0, stamped on
  that grid, and a (re)connect skips what was "said" while the sensor was down.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sensors.base import Sample, Sensor, SensorError
from sensors.privacy import PrivacySwitch

RATE_HZ = 16_000  # engines.backend.AUDIO_RATE_HZ; sensors/ does not import engines/
CATCH_UP_NS = 500_000_000  # replay: further behind than this, skip instead of catching up
VAD_FRAME = 320  # 20 ms at 16 kHz: one of the frame sizes WebRTC's VAD accepts


def _mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


@dataclass(frozen=True, kw_only=True)
class AudioConfig:
    device: str  # PortAudio device name (substring) or index
    block_ms: int = 100
    device_rate: int | None = None  # None: 16 kHz if supported, else the device default
    vad: str = "webrtc"  # webrtc | energy | off
    vad_aggressiveness: int = 2  # WebRTC VAD mode 0..3
    energy_threshold_dbfs: float = -40.0
    min_voiced_frames: int = 2
    hangover_ms: int = 300
    queue_blocks: int = 20
    stall_s: float = 2.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    privacy_file: str | None = None
    replay_t0_ns: int | None = None

    def __post_init__(self) -> None:
        if not self.device:
            raise ValueError("audio device is empty")
        if self.block_ms < 20 or self.block_ms % 20:
            raise ValueError(f"block_ms {self.block_ms} must be a positive multiple of 20")
        if self.vad not in ("webrtc", "energy", "off"):
            raise ValueError(f"vad {self.vad!r} not in webrtc|energy|off")
        if not 0 <= self.vad_aggressiveness <= 3:
            raise ValueError("vad_aggressiveness must be 0..3")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff must be 0 < initial <= max")
        if self.queue_blocks < 1 or self.stall_s <= 0:
            raise ValueError("queue_blocks >= 1 and stall_s > 0")

    @property
    def block_samples(self) -> int:
        return RATE_HZ * self.block_ms // 1000


class StreamResampler:
    """Streaming resampler for int16 mono: FIR low-pass below the lower Nyquist, then linear
    interpolation on the output grid. Good enough for speech features; numpy only."""

    def __init__(self, in_rate: int, out_rate: int, taps: int = 63) -> None:
        self.step = in_rate / out_rate
        cutoff = 0.45 * min(1.0, out_rate / in_rate)  # cycles per input sample
        n = np.arange(taps) - (taps - 1) / 2
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
        self._h = h / h.sum()
        self._hist = np.zeros(taps - 1)
        self._last = 0.0  # last filtered sample of the previous block (position -1)
        self._pos = 1.0  # next output position, in [last] + this block's coordinates

    def process(self, x: np.ndarray) -> np.ndarray:
        xf = np.concatenate([self._hist, x.astype(np.float64)])
        y = np.convolve(xf, self._h, mode="valid")
        self._hist = xf[len(xf) - len(self._hist):]
        yy = np.concatenate([[self._last], y])
        end = len(yy) - 1
        positions = np.arange(self._pos, end + 1e-9, self.step)
        out = np.interp(positions, np.arange(len(yy)), yy)
        self._pos = (positions[-1] + self.step - end) if len(positions) else self._pos - end
        self._last = float(yy[-1])
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


class VoiceActivity:
    """Speech / no speech per block, with hangover. WebRTC VAD or the energy detector."""

    def __init__(self, cfg: AudioConfig) -> None:
        self.cfg = cfg
        self.kind = cfg.vad
        self._vad: Any = None
        if cfg.vad == "webrtc":
            try:
                import webrtcvad
            except ImportError:  # documented fallback, visible in `kind`
                self.kind = "energy"
            else:
                self._vad = webrtcvad.Vad(cfg.vad_aggressiveness)
        self._speech_until = -1  # sample index until which speech is held (hangover)
        self._pos = 0

    def _voiced(self, frame: np.ndarray) -> bool:
        if self._vad is not None:
            return bool(self._vad.is_speech(frame.tobytes(), RATE_HZ))
        rms = np.sqrt(np.mean(frame.astype(np.float64) ** 2)) + 1e-9
        return bool(20 * np.log10(rms / 32768.0) > self.cfg.energy_threshold_dbfs)

    def is_speech(self, block: np.ndarray) -> bool:
        self._pos += len(block)
        if self.kind == "off":
            return True
        n = len(block) // VAD_FRAME
        voiced = sum(self._voiced(block[i * VAD_FRAME:(i + 1) * VAD_FRAME]) for i in range(n))
        if voiced >= min(self.cfg.min_voiced_frames, n):
            self._speech_until = self._pos + RATE_HZ * self.cfg.hangover_ms // 1000
        return self._pos <= self._speech_until


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """PortAudio's ALSA/JACK probing prints pages of harmless warnings on fd 2 at start-up."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def list_devices() -> list[dict[str, Any]]:
    """Input devices PortAudio sees: index, name, channels, default rate."""
    import pyaudio

    with _quiet_stderr():
        pa = pyaudio.PyAudio()
    try:
        out = []
        for i in range(pa.get_device_count()):
            d = pa.get_device_info_by_index(i)
            if int(d["maxInputChannels"]) > 0:
                out.append({"index": i, "name": str(d["name"]),
                            "channels": int(d["maxInputChannels"]),
                            "default_rate": float(d["defaultSampleRate"])})
        return out
    finally:
        pa.terminate()


class AudioSensor(Sensor):
    """16 kHz mono int16 blocks of `block_ms`; `empty` without speech; `disabled` for privacy."""

    modality = "audio"

    def __init__(self, cfg: AudioConfig) -> None:
        self.cfg = cfg
        self.counters = {"blocks": 0, "speech_blocks": 0, "dropped": 0, "errors": 0,
                         "reconnect_attempts": 0, "reconnects": 0, "skipped_samples": 0}
        self.device_name = ""
        self.stream_rate = 0
        self.vad_kind = cfg.vad
        self._pa: Any = None
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[tuple[int, np.ndarray]] = queue.Queue(cfg.queue_blocks)
        self._error: str | None = None
        self._last_block_ns = 0
        self._connected = False
        self._privacy = PrivacySwitch(cfg.privacy_file, cfg.block_ms)
        self._backoff_s = cfg.backoff_initial_s
        self._next_attempt_ns = 0
        self._vad: VoiceActivity | None = None
        self._want_open = False
        self.last_error = ""

    # -- Sensor interface -------------------------------------------------------------
    def connect(self) -> None:
        """Open the device now; on failure schedule retries (read() does them) and raise."""
        self._want_open = True
        if self._privacy_on():
            return
        self.counters["reconnect_attempts"] += 1
        try:
            self._open()
        except SensorError:
            self._schedule_retry()
            raise

    def close(self) -> None:
        self._want_open = False
        self._teardown()

    def device_up(self) -> bool:
        return self._connected or not self._want_open or self._privacy_on()

    def read(self, timeout_s: float) -> Sample | None:
        deadline = _mono_ns() + int(max(0.0, timeout_s) * 1e9)
        if self._privacy_on():
            return self._disabled_sample(deadline)
        if not self._connected and not self._try_reconnect(deadline):
            return None
        while True:
            wait = (deadline - _mono_ns()) / 1e9
            try:
                stamp, block = self._queue.get(timeout=max(0.0, min(wait, 0.05)))
            except queue.Empty:
                if self._error is not None or (
                    _mono_ns() - self._last_block_ns > self.cfg.stall_s * 1e9
                ):
                    self._fail(self._error or f"no audio for {self.cfg.stall_s} s (stalled)")
                    return None
                if wait <= 0:
                    return None
                continue
            return self._to_sample(stamp, block)

    # -- privacy ----------------------------------------------------------------------
    def set_privacy(self, on: bool) -> None:
        """Privacy switch: on closes the microphone; off lets read() reopen it."""
        self._privacy.set(on)

    def _privacy_on(self) -> bool:
        return self._privacy.on()

    def _disabled_sample(self, deadline_ns: int) -> Sample | None:
        if self._connected:
            self._teardown()
            self._next_attempt_ns = 0  # reopen at once when privacy ends
        return self._privacy.disabled_sample(deadline_ns, np.zeros(0, np.int16))

    # -- blocks -----------------------------------------------------------------------
    def _to_sample(self, stamp: int, block: np.ndarray) -> Sample:
        assert self._vad is not None
        self.counters["blocks"] += 1
        # Audio flows: the device is healthy again. (Not on open: a device that opens and
        # then stalls must keep backing off.)
        self._backoff_s = self.cfg.backoff_initial_s
        if self._vad.is_speech(block):
            self.counters["speech_blocks"] += 1
            return Sample(data=block, t_mono_ns=stamp, t_wall_ns=time.time_ns())
        return Sample(data=np.zeros(0, np.int16), t_mono_ns=stamp, t_wall_ns=time.time_ns(),
                      state="empty")

    # -- device lifecycle -------------------------------------------------------------
    def _find_device(self, pa: Any) -> int:
        want = self.cfg.device
        inputs = [
            (i, str(pa.get_device_info_by_index(i)["name"]))
            for i in range(pa.get_device_count())
            if int(pa.get_device_info_by_index(i)["maxInputChannels"]) > 0
        ]
        if want.isdigit():
            if any(i == int(want) for i, _ in inputs):
                return int(want)
            raise SensorError(f"no input device with index {want}")
        exact = [i for i, name in inputs if name.lower() == want.lower()]
        partial = [i for i, name in inputs if want.lower() in name.lower()]
        if exact or partial:
            return (exact or partial)[0]
        raise SensorError(f"no input device named {want!r} (have {[n for _, n in inputs]})")

    def _open(self) -> None:
        import pyaudio

        with _quiet_stderr():
            pa = pyaudio.PyAudio()
        try:
            index = self._find_device(pa)
            info = pa.get_device_info_by_index(index)
            rate = self.cfg.device_rate
            if rate is None:
                try:
                    ok = pa.is_format_supported(RATE_HZ, input_device=index, input_channels=1,
                                                input_format=pyaudio.paInt16)
                except ValueError:
                    ok = False
                rate = RATE_HZ if ok else int(info["defaultSampleRate"])
            frames = rate * self.cfg.block_ms // 1000
            with _quiet_stderr():
                stream = pa.open(format=pyaudio.paInt16, channels=1, rate=rate, input=True,
                                 input_device_index=index, frames_per_buffer=frames)
        except (OSError, ValueError) as e:
            pa.terminate()
            raise SensorError(f"cannot open audio device {self.cfg.device!r}: {e}") from e
        except SensorError:
            pa.terminate()
            raise
        self._pa, self._stream = pa, stream
        self.device_name, self.stream_rate = str(info["name"]), rate
        self._vad = VoiceActivity(self.cfg)
        self.vad_kind = self._vad.kind
        self._error = None
        self._queue = queue.Queue(self.cfg.queue_blocks)
        self._stop.clear()
        self._last_block_ns = _mono_ns()
        self._connected = True
        self._thread = threading.Thread(target=self._reader, args=(stream, rate, frames),
                                        name="audio-read", daemon=True)
        self._thread.start()

    def _teardown(self, join_s: float | None = None) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.cfg.stall_s if join_s is None else join_s)
        if thread is not None and thread.is_alive():
            # The driver is hung inside read(); closing under it could crash the process.
            # Abandon this stream and PortAudio instance (the thread is a daemon).
            self._stream = self._pa = None
        for closer in ("stop_stream", "close"):
            if self._stream is not None:
                with contextlib.suppress(OSError):
                    getattr(self._stream, closer)()
        if self._pa is not None:
            self._pa.terminate()
        self._stream = self._pa = None
        self._connected = False

    def _fail(self, why: str) -> None:
        self.counters["errors"] += 1
        self.last_error = why
        self._teardown(join_s=0.05)  # a thread stuck in the driver is abandoned, not awaited
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self._next_attempt_ns = _mono_ns() + int(self._backoff_s * 1e9)
        self._backoff_s = min(self._backoff_s * 2, self.cfg.backoff_max_s)

    def _try_reconnect(self, deadline_ns: int) -> bool:
        """One attempt when it is due (waiting for it within the deadline), else False."""
        if not self._want_open:
            raise SensorError("read() before connect()")
        now = _mono_ns()
        if self._next_attempt_ns > deadline_ns:
            time.sleep(max(0.0, (deadline_ns - now) / 1e9))
            return False
        time.sleep(max(0.0, (self._next_attempt_ns - now) / 1e9))
        self.counters["reconnect_attempts"] += 1
        try:
            self._open()
        except SensorError as e:
            self.last_error = str(e)
            self._schedule_retry()
            return False
        self.counters["reconnects"] += 1
        return True

    # -- reader thread ----------------------------------------------------------------
    def _reader(self, stream: Any, rate: int, frames: int) -> None:
        resampler = StreamResampler(rate, RATE_HZ) if rate != RATE_HZ else None
        t0 = self.cfg.replay_t0_ns
        out_pos = 0  # 16 kHz samples delivered since t0 (replay) / since open
        try:
            if t0 is not None:
                # A file-backed device reads as fast as asked: skip what was "said" while
                # the sensor was down, then pace the rest on t0's grid.
                skip = max(0, (_mono_ns() - t0)) * rate // 1_000_000_000
                skip -= skip % frames
                while skip and not self._stop.is_set():
                    n = min(skip, frames * 10)
                    stream.read(n, exception_on_overflow=False)
                    skip -= n
                    out_pos += n * RATE_HZ // rate
                    self.counters["skipped_samples"] += n * RATE_HZ // rate
            pending = np.zeros(0, np.int16)
            while not self._stop.is_set():
                raw = stream.read(frames, exception_on_overflow=False)
                x = np.frombuffer(raw, dtype="<i2")
                pending = np.concatenate([pending, resampler.process(x) if resampler else x])
                while len(pending) >= self.cfg.block_samples:
                    block = pending[: self.cfg.block_samples].copy()
                    pending = pending[self.cfg.block_samples:]
                    out_pos += len(block)
                    if t0 is not None:
                        stamp = t0 + out_pos * 1_000_000_000 // RATE_HZ
                        if _mono_ns() - stamp > CATCH_UP_NS:
                            # Far behind the drive (the process was stopped): drop the past
                            # instead of bursting it out; the file plugin reads fast.
                            self.counters["skipped_samples"] += len(block)
                            continue
                        while not self._stop.is_set() and (wait := stamp - _mono_ns()) > 0:
                            time.sleep(min(wait / 1e9, 0.05))
                    else:
                        stamp = _mono_ns()
                    self._last_block_ns = _mono_ns()
                    self._put(stamp, block)
        except (OSError, ValueError) as e:  # PortAudio reports device errors as OSError
            self._error = f"audio device error: {e}"

    def _put(self, stamp: int, block: np.ndarray) -> None:
        while True:
            try:
                self._queue.put_nowait((stamp, block))
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.counters["dropped"] += 1
