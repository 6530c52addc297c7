"""Heartbeat watchdog: a pure state machine over message stamps and an injected "now".

Per link (one per modality) it answers "what was this link's state at time t?":

- ``dead``     no message (heartbeat or frame) for more than ``miss_limit`` heartbeat
               intervals, or never heard from. A link is up after its first message, not
               after a socket connected (PUB/SUB drops what is sent before a peer joins).
- ``disabled`` the sensor says it is switched off (privacy).
- ``empty``    the sensor is alive but has nothing usable (no face, no speech).
- ``stale``    heartbeats say ok but no frame for longer than ``stale_ms``: a capture thread
               stuck inside a live process, which transport heartbeats cannot see.
- ``ok``       otherwise.

The answer depends only on the stamps of messages observed so far, not on the order they
arrived in, because each link keeps a short sorted history: the daemon asks for the state as
of a window's close time, so live and replay agree even when a message stamped just before
the close arrives just after a later one. Sequence numbers give loss and restart counters.
Imports no zmq, threads or clocks.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal

from edge.config import WatchdogConfig

LinkState = Literal["ok", "stale", "empty", "dead", "disabled"]
LINK_STATES: tuple[str, ...] = ("ok", "stale", "empty", "dead", "disabled")


@dataclass
class LinkCounters:
    frames: int = 0
    heartbeats: int = 0
    lost: int = 0  # messages missing from sequence gaps
    restarts: int = 0  # sequence went backwards: the sensor process restarted
    duplicates: int = 0


@dataclass
class _Link:
    # Sorted by stamp: (t_ns, is_frame, reported_state). Bounded by WatchdogConfig.history.
    stamps: list[int] = field(default_factory=list)
    events: list[tuple[int, bool, str]] = field(default_factory=list)
    # What fell off the front of the history, so old questions still get sane answers.
    pruned_last_ns: int | None = None
    pruned_last_frame_ns: int | None = None
    last_seq: dict[str, int] = field(default_factory=dict)
    counters: LinkCounters = field(default_factory=LinkCounters)


class Watchdog:
    def __init__(
        self,
        config: WatchdogConfig,
        modalities: tuple[str, ...],
        *,
        disabled: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.modalities = modalities
        self.disabled = frozenset(disabled)
        self._links = {m: _Link() for m in modalities}
        self._announced: dict[str, str] = {}

    def observe(
        self, modality: str, *, sensor: str, kind: str, seq: int, t_ns: int, state: str
    ) -> None:
        """Record one message (``kind`` frame|heartbeat) from a link."""
        link = self._links.get(modality)
        if link is None:
            return
        is_frame = kind == "frame"
        if is_frame:
            link.counters.frames += 1
        else:
            link.counters.heartbeats += 1
        self._count_sequence(link, sensor, seq)
        entry = (t_ns, is_frame, "ok" if is_frame else state)
        index = bisect.bisect_right(link.stamps, t_ns)
        link.stamps.insert(index, t_ns)
        link.events.insert(index, entry)
        while len(link.stamps) > self.config.history:
            t_old, was_frame, _ = link.events.pop(0)
            link.stamps.pop(0)
            link.pruned_last_ns = max(link.pruned_last_ns or t_old, t_old)
            if was_frame:
                link.pruned_last_frame_ns = max(link.pruned_last_frame_ns or t_old, t_old)

    @staticmethod
    def _count_sequence(link: _Link, sensor: str, seq: int) -> None:
        last = link.last_seq.get(sensor)
        link.last_seq[sensor] = seq
        if last is None:
            return
        if seq > last + 1:
            link.counters.lost += seq - last - 1
        elif seq == last:
            link.counters.duplicates += 1
        elif seq < last:
            link.counters.restarts += 1

    def state_at(self, modality: str, t_ns: int) -> LinkState:
        """The link's state as of time ``t_ns``, using only messages stamped at or before it."""
        if modality in self.disabled:
            return "disabled"
        link = self._links.get(modality)
        if link is None:
            return "dead"
        index = bisect.bisect_right(link.stamps, t_ns)
        if index == 0:
            pruned = link.pruned_last_ns
            if pruned is None or t_ns - pruned > self.config.dead_after_ns:
                return "dead"
            return "stale"  # alive long ago per the pruned history; nothing finer known
        last_ns, _, reported = link.events[index - 1]
        if t_ns - last_ns > self.config.dead_after_ns:
            return "dead"
        if reported == "disabled":
            return "disabled"
        if reported == "empty":
            return "empty"
        fresh_for_ns = t_ns - self._fresh_since(link, index)
        return "ok" if fresh_for_ns <= self.config.stale_ms * 1_000_000 else "stale"

    def _fresh_since(self, link: _Link, index: int) -> int:
        """Newest frame stamp at or before events[index-1], or the start of the current alive
        run when no frame came since it began (a sensor that just came up is not stale)."""
        run_start = link.events[index - 1][0]
        for i in range(index - 1, -1, -1):
            t_i, is_frame, _ = link.events[i]
            if run_start - t_i > self.config.dead_after_ns:
                return run_start  # a silent gap: the current alive run began after it
            run_start = t_i
            if is_frame:
                return t_i
        if link.pruned_last_frame_ns is not None:
            return link.pruned_last_frame_ns
        return run_start

    def states_at(self, t_ns: int) -> dict[str, LinkState]:
        return {m: self.state_at(m, t_ns) for m in self.modalities}

    def changes(self, t_ns: int) -> list[tuple[str, str, str]]:
        """(modality, old, new) for links whose state changed since the last call."""
        out: list[tuple[str, str, str]] = []
        for modality, state in self.states_at(t_ns).items():
            old = self._announced.get(modality, "dead")
            if state != old:
                out.append((modality, old, state))
                self._announced[modality] = state
        return out

    def last_seen_ns(self, modality: str) -> int | None:
        link = self._links.get(modality)
        if link is None:
            return None
        return link.stamps[-1] if link.stamps else link.pruned_last_ns

    def last_at_or_before(
        self, modality: str, t_ns: int, *, frames_only: bool = False
    ) -> int | None:
        """Stamp of the newest message (or frame) from a link stamped at or before `t_ns`."""
        link = self._links.get(modality)
        if link is None:
            return None
        for i in range(bisect.bisect_right(link.stamps, t_ns) - 1, -1, -1):
            if link.events[i][1] or not frames_only:
                return link.events[i][0]
        return link.pruned_last_frame_ns if frames_only else link.pruned_last_ns

    def counters(self) -> dict[str, LinkCounters]:
        return {m: link.counters for m, link in self._links.items()}
