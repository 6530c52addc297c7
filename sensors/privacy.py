"""The privacy switch shared by the real sensors.

Privacy is on while `set(True)` was called or while a flag file exists (e.g.
`/run/emotion-edge/privacy/audio`, written by the car's UI; a file works across processes
and under systemd sandboxing without another socket). While it is on, a sensor releases its
device and `read` returns `disabled` samples with no data, one per `period_ms`, so the
capture process keeps telling the daemon "disabled" rather than falling silent.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sensors.base import Sample


class PrivacySwitch:
    def __init__(self, flag_file: str | None, period_ms: int = 100) -> None:
        self.flag_file = Path(flag_file) if flag_file else None
        self.period_ns = period_ms * 1_000_000
        self._forced = False
        self._next_ns = 0

    def set(self, on: bool) -> None:
        self._forced = on

    def on(self) -> bool:
        return self._forced or (self.flag_file is not None and self.flag_file.exists())

    def disabled_sample(self, deadline_ns: int, empty: np.ndarray) -> Sample | None:
        """The next `disabled` sample when one is due before `deadline_ns`, else None."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        due = max(now, self._next_ns)
        if due > deadline_ns:
            time.sleep(max(0.0, (deadline_ns - now) / 1e9))
            return None
        time.sleep((due - now) / 1e9)
        self._next_ns = due + self.period_ns
        return Sample(data=empty, t_mono_ns=due, t_wall_ns=time.time_ns(), state="disabled")
