"""The `Sensor` interface every capture backend implements.

A backend only knows how to talk to its device (or file, or generator) and returns one
`Sample` per read. Threads, buffering, heartbeats and publishing are shared machinery in
`sensors.capture`, written once for all backends. Importing this module imports no device
library: a backend imports cv2 / pyaudio when it is chosen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import numpy as np

# ok: `data` is usable; empty: alive but nothing usable (no speech, no face, nobody talking);
# disabled: switched off for privacy. The watchdog derives stale/dead itself.
SampleState = Literal["ok", "empty", "disabled"]


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One capture: its payload and when it was captured (CLOCK_MONOTONIC and wall, ns)."""

    data: np.ndarray
    t_mono_ns: int
    t_wall_ns: int
    state: SampleState = "ok"
    encoding: str = "raw"  # "raw" (ndarray bytes) or "utf-8" (text, uint8 array)


class SensorError(RuntimeError):
    """The device failed (unplugged, driver error). Capture machinery reconnects with backoff."""


class Sensor(ABC):
    """A source of samples for one modality."""

    modality: str  # "audio" | "video" | "text"

    @abstractmethod
    def connect(self) -> None:
        """Open the device. Raises SensorError when it cannot."""

    @abstractmethod
    def close(self) -> None:
        """Release the device. Safe to call twice."""

    @abstractmethod
    def read(self, timeout_s: float) -> Sample | None:
        """Block at most `timeout_s` for the next sample; None when nothing came in time.

        Raises SensorError when the device fails.
        """

    def device_up(self) -> bool:
        """False while the device is gone and the sensor reconnects by itself, returning None
        from `read` instead of raising SensorError (the capture thread then stops repeating
        the last sample's state: an unplugged microphone is not a silent cabin)."""
        return True

    def __enter__(self) -> Sensor:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
