"""Event-time windows over frame stamps: a pure class, no clocks, threads or sockets.

Windows are ``window_ms`` long and end on multiples of ``hop_ms`` of the (CLOCK_MONOTONIC)
time axis, so live and replay cut the same windows. Window W = [end - window, end) holds the
frames *stamped* inside it, whatever order they arrived in. It closes once "now" reaches
``end + max_lag_ms`` and never waits longer for a missing modality; a frame that arrives
after a window it belongs to has closed is late: counted and dropped (keeping it for the
still-open overlapping windows would make those depend on arrival timing). The estimate for
W can only use frames stamped before W's end: it never looks into a future window.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from edge.config import WindowConfig

MS = 1_000_000


@dataclass(frozen=True, kw_only=True)
class Window:
    start_ns: int
    end_ns: int
    close_ns: int  # end + lag: the event time at which it was due
    judged_ns: int  # close - settle: link states are taken as of this instant
    # modality -> payloads stamped in [start, end), in stamp order, and their stamps
    frames: dict[str, list[Any]]
    stamps: dict[str, list[int]]

    def newest_stamp_ns(self) -> int | None:
        newest = [s[-1] for s in self.stamps.values() if s]
        return max(newest) if newest else None


@dataclass
class WindowCounters:
    accepted: int = 0
    late: int = 0  # arrived after its window closed
    future: int = 0  # stamped too far ahead of now
    overflow: int = 0  # dropped because a modality's buffer was full
    skipped_windows: int = 0  # not emitted after a clock jump
    emitted: int = 0


@dataclass
class _Buffer:
    stamps: list[int] = field(default_factory=list)
    payloads: list[Any] = field(default_factory=list)


class Windower:
    def __init__(self, config: WindowConfig, modalities: tuple[str, ...]) -> None:
        self.config = config
        self.modalities = modalities
        self.window_ns = config.window_ms * MS
        self.hop_ns = config.hop_ms * MS
        self.lag_ns = config.max_lag_ms * MS
        self._buffers = {m: _Buffer() for m in modalities}
        self._next_end_ns: int | None = None  # end of the next window to close
        self.counters = WindowCounters()

    def start(self, now_ns: int) -> None:
        """Begin with the first window that ends after `now_ns` (idempotent)."""
        if self._next_end_ns is None:
            self._next_end_ns = (now_ns // self.hop_ns + 1) * self.hop_ns

    @property
    def next_end_ns(self) -> int | None:
        """End of the next window to close (None before `start`)."""
        return self._next_end_ns

    @property
    def closed_until_ns(self) -> int | None:
        """End of the last closed window: frames stamped before it are late."""
        return None if self._next_end_ns is None else self._next_end_ns - self.hop_ns

    def next_close_ns(self) -> int | None:
        return None if self._next_end_ns is None else self._next_end_ns + self.lag_ns

    def next_precompute_ns(self) -> int | None:
        """When the next window's inputs are cut ahead of its close (see `peek`); None when
        there is no next window or precomputing is off (at or after the close)."""
        after_ns = self.config.precompute_after_ms * MS
        if self._next_end_ns is None or after_ns >= self.lag_ns:
            return None
        return self._next_end_ns + after_ns

    def peek(self) -> Window | None:
        """The next window to close, as it stands now, without closing it: the frames
        stamped inside it that have arrived so far (more may arrive before its close)."""
        if self._next_end_ns is None:
            return None
        return self._cut(self._next_end_ns - self.window_ns, self._next_end_ns)

    def add(self, modality: str, t_ns: int, payload: Any, now_ns: int) -> str:
        """Buffer one frame; returns "ok", "late", "future" or "ignored" (unknown modality)."""
        buffer = self._buffers.get(modality)
        if buffer is None:
            return "ignored"
        if t_ns > now_ns + self.config.max_future_ms * MS:
            self.counters.future += 1
            return "future"
        self.start(now_ns)
        closed_until = self.closed_until_ns
        if closed_until is not None and t_ns < closed_until:
            self.counters.late += 1
            return "late"
        index = bisect.bisect_right(buffer.stamps, t_ns)
        buffer.stamps.insert(index, t_ns)
        buffer.payloads.insert(index, payload)
        if len(buffer.stamps) > self.config.max_frames_per_modality:
            buffer.stamps.pop(0)
            buffer.payloads.pop(0)
            self.counters.overflow += 1
        self.counters.accepted += 1
        return "ok"

    def due(self, now_ns: int) -> list[Window]:
        """Close and return every window whose close time is <= now, oldest first."""
        self.start(now_ns)
        assert self._next_end_ns is not None
        n_due = (now_ns - self.lag_ns - self._next_end_ns) // self.hop_ns + 1
        if n_due <= 0:
            return []
        if n_due > self.config.max_catchup_windows:
            skip = n_due - self.config.max_catchup_windows
            self.counters.skipped_windows += skip
            self._next_end_ns += skip * self.hop_ns
            n_due = self.config.max_catchup_windows
        windows = []
        for _ in range(n_due):
            end = self._next_end_ns
            windows.append(self._cut(end - self.window_ns, end))
            self._next_end_ns += self.hop_ns
            self._prune(self._next_end_ns - self.window_ns)
        self.counters.emitted += len(windows)
        return windows

    def _cut(self, start_ns: int, end_ns: int) -> Window:
        frames: dict[str, list[Any]] = {}
        stamps: dict[str, list[int]] = {}
        for modality, buffer in self._buffers.items():
            lo = bisect.bisect_left(buffer.stamps, start_ns)
            hi = bisect.bisect_left(buffer.stamps, end_ns)
            frames[modality] = buffer.payloads[lo:hi]
            stamps[modality] = buffer.stamps[lo:hi]
        return Window(
            start_ns=start_ns,
            end_ns=end_ns,
            close_ns=end_ns + self.lag_ns,
            judged_ns=end_ns + self.lag_ns - self.config.settle_ms * MS,
            frames=frames,
            stamps=stamps,
        )

    def _prune(self, keep_from_ns: int) -> None:
        """Drop frames no open window can contain any more."""
        for buffer in self._buffers.values():
            cut = bisect.bisect_left(buffer.stamps, keep_from_ns)
            if cut:
                del buffer.stamps[:cut]
                del buffer.payloads[:cut]

    def buffered(self) -> dict[str, int]:
        return {m: len(b.stamps) for m, b in self._buffers.items()}
