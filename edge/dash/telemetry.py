"""Pure core of the dashboard: validate estimates, keep a bounded history, track link health.

No sockets, threads or event loops here: the server (`edge.dash.server`) is a thin shell that
feeds messages in and pushes what comes out to browsers. Everything is bounded: the history by
count and by event-time horizon, the link table by number of links.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.schemas import ESTIMATE_SCHEMA

MODALITIES: tuple[str, ...] = ("audio", "video", "text")
AVAILABILITY_REASONS: tuple[str, ...] = ("ok", "dead", "stale", "empty", "disabled")

# Keys every estimate carries: the recording schema is the one place that lists them.
REQUIRED_KEYS: tuple[str, ...] = tuple(ESTIMATE_SCHEMA["required"])


class TelemetryError(ValueError):
    """A telemetry message the dashboard cannot use; counted and dropped, never fatal."""


def _number(value: object, key: str) -> float:
    # bool is an int subclass; a True latency is corruption, not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TelemetryError(f"{key} must be a number, got {type(value).__name__}")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise TelemetryError(f"{key} must be finite, got {value!r}")
    return as_float


def _int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TelemetryError(f"{key} must be an integer, got {type(value).__name__}")
    return value


def normalise_estimate(raw: object) -> dict[str, Any]:
    """Check one estimate against the contract and return the JSON-ready dict the page draws.

    Unknown extra keys are kept (a newer daemon may add fields) except that the dashboard
    only interprets the contract keys plus the optional `links` / `seq` / `counters`.
    Raises TelemetryError naming the first problem found.
    """
    if not isinstance(raw, Mapping):
        raise TelemetryError(f"estimate must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise TelemetryError(f"estimate lacks {', '.join(missing)}")
    t_start = _int(raw["t_start_ns"], "t_start_ns")
    t_end = _int(raw["t_end_ns"], "t_end_ns")
    if t_end < t_start:
        raise TelemetryError(f"window ends before it starts ({t_start} > {t_end})")

    probs_raw = raw["probs"]
    if not isinstance(probs_raw, Mapping) or not probs_raw:
        raise TelemetryError("probs must be a non-empty object label -> p")
    probs: dict[str, float] = {}
    for label, p in probs_raw.items():
        value = _number(p, f"probs[{label}]")
        if not -1e-6 <= value <= 1 + 1e-6:
            raise TelemetryError(f"probs[{label}] = {value} is not a probability")
        probs[str(label)] = value

    label = raw["label"]
    if not isinstance(label, str) or label not in probs:
        raise TelemetryError(f"label {label!r} is not one of the probs' labels")
    confidence = _number(raw["confidence"], "confidence")
    if not -1e-6 <= confidence <= 1 + 1e-6:
        raise TelemetryError(f"confidence {confidence} is not in [0, 1]")

    availability_raw = raw["availability"]
    if not isinstance(availability_raw, Mapping):
        raise TelemetryError("availability must be an object modality -> reason")
    availability: dict[str, str] = {}
    for modality, reason in availability_raw.items():
        if reason not in AVAILABILITY_REASONS:
            raise TelemetryError(f"availability[{modality}] = {reason!r} is not a known reason")
        availability[str(modality)] = reason

    used_raw = raw["used"]
    if not isinstance(used_raw, list | tuple) or not all(isinstance(m, str) for m in used_raw):
        raise TelemetryError("used must be a list of modality names")

    router_raw = raw["router"]
    if not isinstance(router_raw, Mapping):
        raise TelemetryError("router must be an object modality -> {expert: weight}")
    router: dict[str, dict[str, float]] = {}
    for modality, weights in router_raw.items():
        if not isinstance(weights, Mapping):
            raise TelemetryError(f"router[{modality}] must be an object expert -> weight")
        router[str(modality)] = {
            str(e): _number(w, f"router[{modality}][{e}]") for e, w in weights.items()
        }

    # None: no frame entered the window (every modality missing), so there is no capture stamp
    # to measure from; the daemon still publishes the estimate (the prior) every hop.
    latency = None if raw["latency_ms"] is None else _number(raw["latency_ms"], "latency_ms")
    out: dict[str, Any] = dict(raw)  # keep extra fields a newer daemon may add
    out.update(
        t_start_ns=t_start,
        t_end_ns=t_end,
        probs=probs,
        label=label,
        confidence=confidence,
        availability=availability,
        used=list(used_raw),
        router=router,
        latency_ms=latency,
    )
    return out


class History:
    """Bounded ring of encoded messages keyed by event time (ns): at most `max_items` and
    `max_bytes`, and nothing older than `horizon_ns` before the newest item. The server keeps it
    so a newly opened page can pause and scrub over the last minutes right away."""

    def __init__(self, *, max_items: int, max_bytes: int, horizon_ns: int) -> None:
        if max_items < 1 or max_bytes < 1 or horizon_ns <= 0:
            raise ValueError("History needs max_items >= 1, max_bytes >= 1 and horizon_ns > 0")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.horizon_ns = horizon_ns
        self._items: deque[tuple[int, str]] = deque()
        self._bytes = 0
        self.evicted = 0

    def append(self, t_ns: int, item: str) -> None:
        self._items.append((t_ns, item))
        self._bytes += len(item)
        # Event time may jump backwards (a replay restarted): the horizon is relative to the
        # newest stamp, so a backwards jump keeps only what is within the horizon of it.
        cutoff = t_ns - self.horizon_ns
        while self._items and (
            len(self._items) > self.max_items
            or self._bytes > self.max_bytes
            or self._items[0][0] < cutoff
        ):
            _, old = self._items.popleft()
            self._bytes -= len(old)
            self.evicted += 1

    def items(self) -> list[str]:
        return [item for _, item in self._items]

    @property
    def n_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, kw_only=True)
class EnvelopeInfo:
    """What link health needs from one sensor envelope (frame or heartbeat)."""

    link: str  # sensor id (or modality when a sensor id is absent)
    modality: str
    kind: str  # "frame" | "heartbeat"
    seq: int
    t_mono_ns: int


@dataclass
class _LinkStats:
    modality: str
    last_heartbeat_ns: int | None = None
    last_frame_ns: int | None = None
    last_seq: int | None = None
    received: int = 0
    lost: int = 0
    frame_times: deque[int] = field(default_factory=lambda: deque(maxlen=256))


class LinkHealthTracker:
    """Per-link health derived from sensor envelopes: heartbeat age, loss from sequence gaps,
    frame rate over the last second. Used when the dashboard reads a recording (which holds
    every sensor envelope); live, the daemon's own per-link health in the estimate wins.

    One sequence counter per link covers frames and heartbeats (the wire numbers every
    envelope a publisher sends), so a gap is a lost message of either kind.
    """

    def __init__(self, *, max_links: int = 64, rate_window_ns: int = 1_000_000_000) -> None:
        self._links: dict[str, _LinkStats] = {}
        self._max_links = max_links
        self._rate_window_ns = rate_window_ns
        self.rejected_links = 0

    def observe(self, env: EnvelopeInfo) -> None:
        stats = self._links.get(env.link)
        if stats is None:
            if len(self._links) >= self._max_links:
                self.rejected_links += 1  # bounded: a flood of bogus ids cannot grow memory
                return
            stats = self._links[env.link] = _LinkStats(modality=env.modality)
        stats.received += 1
        if stats.last_seq is not None and env.seq > stats.last_seq + 1:
            stats.lost += env.seq - stats.last_seq - 1
        if stats.last_seq is None or env.seq > stats.last_seq or env.seq == 0:
            stats.last_seq = env.seq  # seq 0 again = the sensor restarted
        if env.kind == "heartbeat":
            stats.last_heartbeat_ns = env.t_mono_ns
        elif env.kind == "frame":
            stats.last_frame_ns = env.t_mono_ns
            stats.frame_times.append(env.t_mono_ns)
            if stats.last_heartbeat_ns is None:
                stats.last_heartbeat_ns = env.t_mono_ns

    def snapshot(self, now_ns: int) -> dict[str, dict[str, Any]]:
        """Link id -> health fields the page shows, as of event time `now_ns`."""
        out: dict[str, dict[str, Any]] = {}
        for link, s in self._links.items():
            since = now_ns - self._rate_window_ns
            recent = sum(1 for t in s.frame_times if since < t <= now_ns)
            out[link] = {
                "modality": s.modality,
                "heartbeat_age_ms": _age_ms(now_ns, s.last_heartbeat_ns),
                "frame_age_ms": _age_ms(now_ns, s.last_frame_ns),
                "frame_rate_hz": recent * 1e9 / self._rate_window_ns,
                "received": s.received,
                "lost": s.lost,
            }
        return out


def _age_ms(now_ns: int, then_ns: int | None) -> float | None:
    return None if then_ns is None else round((now_ns - then_ns) / 1e6, 1)


def links_from_estimate(estimate: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """A ready per-link table if the document carries one (`links`: link -> {field: value})."""
    value = estimate.get("links")
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
        return {str(k): dict(v) for k, v in value.items()}
    return None


def _per_modality(health: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = health.get(key)
    return value if isinstance(value, Mapping) else {}


def link_table(
    estimate: Mapping[str, Any],
    *,
    last_seen_ns: Mapping[str, int] | None = None,
    derived: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-modality link health for one estimate, from what the daemon publishes.

    - state: the estimate's availability reason;
    - heartbeat_age_ms: as of the window's close, from the daemon's `health.last_seen_ns` if it
      publishes it, else from `last_seen_ns` (the server learns it from status `changes`, so
      it is known for links that went silent), else from `derived` (a recording's envelopes);
    - frame_rate_hz: measured from envelopes (`derived`) or frames in the window / its length;
    - lost / restarts: the daemon's sequence-gap counters; malformed: its per-link counts.
    """
    health = estimate.get("health")
    health = health if isinstance(health, Mapping) else {}
    frames = _per_modality(estimate, "frames")
    lost, restarts = _per_modality(health, "lost"), _per_modality(health, "restarts")
    daemon_seen = _per_modality(health, "last_seen_ns")
    malformed = _per_modality(health, "malformed")
    now_ns = estimate.get("t_close_ns") or estimate["t_end_ns"]
    window_s = max(1e-9, (estimate["t_end_ns"] - estimate["t_start_ns"]) / 1e9)
    by_modality: dict[str, Mapping[str, Any]] = {}
    for row in (derived or {}).values():
        m = row.get("modality")
        age = row.get("heartbeat_age_ms")
        best = by_modality.get(str(m))
        if best is None or (age is not None and age < (best.get("heartbeat_age_ms") or 1e18)):
            by_modality[str(m)] = row
    table: dict[str, dict[str, Any]] = {}
    for m, reason in estimate["availability"].items():
        seen = daemon_seen.get(m)
        # Only a dead link is silent: an empty or stale one keeps sending heartbeats, so the
        # last state change says nothing about how old its last heartbeat is.
        if not isinstance(seen, int) and reason == "dead" and last_seen_ns:
            seen = last_seen_ns.get(m)
        measured = by_modality.get(m, {})
        age = _age_ms(now_ns, seen) if isinstance(seen, int) else measured.get("heartbeat_age_ms")
        n_frames = frames.get(m)
        rate = measured.get("frame_rate_hz")
        if rate is None and isinstance(n_frames, int):
            rate = round(n_frames / window_s, 1)
        bad = sum(
            sum(c.values())
            for link, c in malformed.items()
            if isinstance(c, Mapping) and (link == m or str(link).startswith(f"{m}/"))
        )
        table[m] = {
            "state": reason,
            "heartbeat_age_ms": age,
            "frame_rate_hz": rate,
            "lost": lost.get(m, measured.get("lost")),
            "restarts": restarts.get(m),
            "malformed": bad,
        }
    return table


def latency_percentiles(values: Iterable[float], qs: tuple[float, ...]) -> dict[str, float]:
    """Nearest-rank percentiles; {} for no values."""
    ordered = sorted(values)
    if not ordered:
        return {}
    out = {}
    for q in qs:
        rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
        out[f"p{q:g}"] = ordered[rank]
    return out
