"""Shared capture machinery, written once for every backend.

A capture process is one `Sensor` + this module:

- `CaptureThread` calls ``sensor.read(timeout)`` in a background thread (every blocking read
  has a timeout), reconnects with bounded backoff on `SensorError`, and puts samples into a
  `SampleBuffer`: bounded, drops the oldest when full (counted), and answers "latest sample
  no older than X".
- `run_capture` is the publishing loop in the main thread: it sends every usable sample as a
  frame and a heartbeat every ``heartbeat_ms`` *even when it has nothing to send*, with the
  state the sensor last reported (ok / empty / disabled). A capture thread stuck inside a
  live process therefore still heartbeats, and the daemon sees it as ``stale`` from the frame
  age; a dead process stops heartbeating and turns ``dead``. While the read thread is
  reconnecting after a device error (raised, or reported by ``Sensor.device_up``) the
  heartbeat says ``ok`` (alive, no frames: ``stale``), not the last sample's ``empty``: a
  camera that is gone is not a camera that sees no face.

The publisher is an XPUB socket that *connects* to the daemon's (and recorder's) ingress
endpoints: XPUB lets us wait until N subscribers have joined before the first frame, so a
recording holds everything the daemon saw from the very first message.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from typing import Any

import zmq

from edge import keys, wire
from edge.clock import monotonic_ns, wall_ns
from edge.config import ConfigError, default_run_dir, require_curve_for_tcp
from sensors.base import Sample, Sensor, SensorError

log = logging.getLogger("edge.sensor")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CaptureConfig:
    sensor_id: str = ""  # "" -> the modality name
    connect: tuple[str, ...] = ()  # () -> ipc://{run_dir}/ingress.ipc
    run_dir: str = ""
    heartbeat_ms: int = 100
    read_timeout_ms: int = 100  # a read never blocks longer than this
    buffer_size: int = 64  # samples waiting to be published
    snd_hwm: int = 1000  # per connected peer; a stalled daemon costs drops, never memory
    await_subscribers: int = 0  # wait for this many subscribers before publishing
    await_timeout_s: float = 5.0
    disabled: bool = False  # privacy switch: never open the device, heartbeat "disabled"
    heartbeat_only: bool = False  # fault injection: capture but send no frames ("stale")
    seconds: float = 0.0  # stop after this long; 0 = until SIGTERM
    reconnect_min_ms: int = 100
    reconnect_max_ms: int = 2000
    curve_dir: str = ""  # CurveZMQ key dir (edge-keys); required for tcp:// endpoints
    curve_key: str = keys.DEFAULT_CLIENT  # this sensor's client key name in curve_dir

    def __post_init__(self) -> None:
        for name in ("heartbeat_ms", "read_timeout_ms", "buffer_size", "snd_hwm"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.await_subscribers < 0 or self.seconds < 0:
            raise ConfigError("await_subscribers and seconds must be >= 0")
        require_curve_for_tcp(self.connect, self.curve_dir)

    def resolved(self, modality: str) -> CaptureConfig:
        run_dir = self.run_dir or str(default_run_dir())
        return dataclasses.replace(
            self,
            sensor_id=self.sensor_id or modality,
            run_dir=run_dir,
            connect=self.connect or (f"ipc://{run_dir}/ingress.ipc",),
        )


class SampleBuffer:
    """Bounded FIFO between the read thread and the publisher; drops the oldest when full."""

    def __init__(self, maxlen: int) -> None:
        self._samples: deque[Sample] = deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self.dropped = 0
        self._latest: Sample | None = None

    def put(self, sample: Sample) -> None:
        with self._cond:
            if len(self._samples) == self._samples.maxlen:
                self.dropped += 1
            self._samples.append(sample)
            self._latest = sample
            self._cond.notify()

    def drain(self, timeout_s: float = 0.0) -> list[Sample]:
        """Everything buffered, waiting up to `timeout_s` for the first sample."""
        with self._cond:
            if not self._samples and timeout_s > 0:
                self._cond.wait(timeout_s)
            out = list(self._samples)
            self._samples.clear()
            return out

    def latest(self, max_age_ns: int, now_ns: int) -> Sample | None:
        """The newest sample if it is at most `max_age_ns` old, else None."""
        with self._cond:
            sample = self._latest
        if sample is None or now_ns - sample.t_mono_ns > max_age_ns:
            return None
        return sample


class CaptureThread(threading.Thread):
    """Reads a sensor in the background; survives device errors by reconnecting."""

    def __init__(self, sensor: Sensor, buffer: SampleBuffer, config: CaptureConfig) -> None:
        super().__init__(name=f"capture-{sensor.modality}", daemon=True)
        self.sensor, self.buffer, self.config = sensor, buffer, config
        self.stop_event = threading.Event()
        self.errors = 0
        self.reads = 0
        # False from a device error until the next sample: the heartbeat then stops repeating
        # the last sample's state (an unplugged camera is not "empty", i.e. no face in view)
        self.device_ok = True

    def run(self) -> None:
        backoff_ms = self.config.reconnect_min_ms
        connected = False
        timeout_s = self.config.read_timeout_ms / 1000
        while not self.stop_event.is_set():
            try:
                if not connected:
                    self.sensor.connect()
                    connected = True
                sample = self.sensor.read(timeout_s)
                self.reads += 1
                backoff_ms = self.config.reconnect_min_ms
            except Exception as exc:  # a backend bug must not kill the heartbeat: reconnect
                self.errors += 1
                self.device_ok = False
                kind = "device error" if isinstance(exc, SensorError) else "backend bug"
                log.warning(
                    "%s on %s: %s; retry in %d ms", kind, self.sensor.modality, exc, backoff_ms
                )
                if connected:
                    self._close()
                    connected = False
                self.stop_event.wait(backoff_ms / 1000)
                backoff_ms = min(2 * backoff_ms, self.config.reconnect_max_ms)
                continue
            if sample is not None:
                self.device_ok = True
                self.buffer.put(sample)
            elif not self.sensor.device_up():
                self.device_ok = False  # gone, and the sensor reconnects by itself
        if connected:
            self._close()

    def _close(self) -> None:
        try:
            self.sensor.close()
        except Exception as exc:  # closing a broken device may fail too; nothing to do
            log.warning("close failed: %s", exc)


class Publisher:
    """Sends frames and heartbeats for one sensor on an XPUB socket (no copies)."""

    def __init__(self, ctx: zmq.Context[Any], config: CaptureConfig, modality: str) -> None:
        self.config, self.modality = config, modality
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, config.snd_hwm)
        # every subscriber's subscription, not only the first of a kind: we count them
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        if config.curve_dir and keys.uses_tcp(config.connect):  # a link leaving the device
            keys.secure_client(self.sock, config.curve_dir, config.curve_key)
        for endpoint in config.connect:
            self.sock.connect(endpoint)
        self.seq = 0
        self.subscribers = 0
        self.sent = {"frame": 0, "heartbeat": 0}

    def poll_subscriptions(self, timeout_ms: int = 0) -> None:
        """Count subscription messages (first byte 1 = subscribe, 0 = unsubscribe)."""
        while self.sock.poll(timeout_ms, zmq.POLLIN):
            msg = self.sock.recv()
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
            timeout_ms = 0

    def await_subscribers(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.subscribers < n and time.monotonic() < deadline:
            self.poll_subscriptions(timeout_ms=50)
        return self.subscribers >= n

    def send(
        self, kind: str, *, t_mono_ns: int, t_wall_ns: int, state: str, sample: Sample | None = None
    ) -> None:
        header = wire.Header(
            sensor=self.config.sensor_id,
            modality=self.modality,
            kind=kind,
            seq=self.seq,
            t_mono_ns=t_mono_ns,
            t_wall_ns=t_wall_ns,
            encoding=sample.encoding if sample is not None else "raw",
            state=state,
        )
        parts = wire.encode(header, sample.data if sample is not None else None)
        try:
            self.sock.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # XPUB drops at the high-water mark anyway; the daemon counts the seq gap
        self.seq += 1
        self.sent[kind] += 1

    def close(self) -> None:
        self.sock.close(linger=0)


def run_capture(
    sensor: Sensor,
    config: CaptureConfig,
    stop: threading.Event,
    ctx: zmq.Context[Any] | None = None,
) -> dict[str, Any]:
    """Capture and publish until `stop` is set (or `config.seconds` pass). Returns counters."""
    ctx = ctx or zmq.Context.instance()
    modality = sensor.modality
    publisher = Publisher(ctx, config, modality)
    buffer = SampleBuffer(config.buffer_size)
    reader: CaptureThread | None = None
    try:
        if config.await_subscribers and not publisher.await_subscribers(
            config.await_subscribers, config.await_timeout_s
        ):
            log.warning(
                "only %d of %d subscribers joined", publisher.subscribers, config.await_subscribers
            )
        if not config.disabled:  # privacy: a disabled sensor's device is never opened
            reader = CaptureThread(sensor, buffer, config)
            reader.start()
        state = "disabled" if config.disabled else "ok"
        hb_ns = config.heartbeat_ms * 1_000_000
        started = monotonic_ns()
        next_hb = started
        while not stop.is_set():
            now = monotonic_ns()
            if config.seconds and now - started >= config.seconds * 1e9:
                break
            for sample in buffer.drain(timeout_s=max(0.0, (next_hb - now) / 1e9)):
                state = sample.state
                if sample.state == "ok" and not config.heartbeat_only:
                    publisher.send(
                        "frame",
                        t_mono_ns=sample.t_mono_ns,
                        t_wall_ns=sample.t_wall_ns,
                        state="ok",
                        sample=sample,
                    )
            now = monotonic_ns()
            if now >= next_hb:
                # device down (reconnecting): alive, no frames -> the daemon reads "stale"
                hb_state = state if reader is None or reader.device_ok else "ok"
                publisher.send("heartbeat", t_mono_ns=now, t_wall_ns=wall_ns(), state=hb_state)
                # keep the cadence, but after a long pause (SIGSTOP) restart it from now
                next_hb = next_hb + hb_ns if now - next_hb < hb_ns else now + hb_ns
            publisher.poll_subscriptions()
    finally:
        if reader is not None:
            reader.stop_event.set()
            reader.join(timeout=2.0)
        publisher.close()
    return {
        "sent": dict(publisher.sent),
        "dropped": buffer.dropped,
        "read_errors": reader.errors if reader else 0,
    }
