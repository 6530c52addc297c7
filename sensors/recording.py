"""A sensor that plays one modality's frames back out of an `edge-record` MCAP recording.

Unlike `edge-replay` (which republishes a whole drive with its original stamps for a daemon on
event time), this is a *live* source: frames are re-stamped with the capture clock and paced
by their recorded spacing (scaled by `speed`), so a recorded camera or microphone can stand in
for a real one next to other live sensors. Heartbeats are not replayed: the capture machinery
makes its own. Streams the file; `loop` starts over at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge import wire
from edge.clock import monotonic_ns, wall_ns
from sensors.base import Sample, Sensor, SensorError


class RecordingSensor(Sensor):
    def __init__(
        self,
        path: str | Path,
        *,
        modality: str,
        speed: float = 1.0,
        loop: bool = False,
        clock: Callable[[], int] = monotonic_ns,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.path, self.modality, self.speed, self.loop = Path(path), modality, speed, loop
        self._clock = clock
        self._frames: Iterator[wire.Envelope] | None = None
        self._pending: wire.Envelope | None = None
        self._origin: tuple[int, int] | None = None  # (recorded t0, live t0)
        self.skipped = 0  # malformed records

    def connect(self) -> None:
        if not self.path.is_file():
            raise SensorError(f"no recording at {self.path}")
        self._frames = self._iter_frames()
        self._pending, self._origin = None, None

    def close(self) -> None:
        self._frames = None

    def _iter_frames(self) -> Iterator[wire.Envelope]:
        for _, _, parts in wire.iter_recording(str(self.path), topics=(f"{self.modality}/",)):
            try:
                envelope = wire.decode(parts)
            except wire.WireError:
                self.skipped += 1
                continue
            if envelope.header.kind == "frame":
                yield envelope

    def read(self, timeout_s: float) -> Sample | None:
        if self._frames is None:
            raise SensorError("not connected")
        if self._pending is None:
            self._pending = next(self._frames, None)
            if self._pending is None:
                if not self.loop:
                    time.sleep(timeout_s)  # the drive is over: alive, nothing more to send
                    return Sample(
                        data=np.empty(0, np.uint8),
                        t_mono_ns=self._clock(),
                        t_wall_ns=wall_ns(),
                        state="empty",
                    )
                self.connect()
                return None
        header = self._pending.header
        if self._origin is None:
            self._origin = (header.t_mono_ns, self._clock())
        rec_t0, live_t0 = self._origin
        due = live_t0 + int((header.t_mono_ns - rec_t0) / self.speed)
        wait_s = (due - self._clock()) / 1e9
        if wait_s > timeout_s:
            time.sleep(timeout_s)
            return None
        if wait_s > 0:
            time.sleep(wait_s)
        envelope, self._pending = self._pending, None
        data: Any = np.array(envelope.payload)  # own the bytes: the file buffer is transient
        return Sample(
            data=data,
            t_mono_ns=self._clock(),
            t_wall_ns=wall_ns(),
            encoding=envelope.header.encoding,
        )
