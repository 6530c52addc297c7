"""Dashboard settings: a frozen, keyword-only dataclass, validated on construction, loaded
from the `[dash]` table of a TOML file with `edge.config.load` like every other config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from edge.config import ConfigError, DaemonConfig


@dataclass(frozen=True, kw_only=True)
class DashConfig:
    # The daemon's telemetry PUB endpoint (live mode); "" -> the daemon's default.
    telemetry: str = ""
    # Loopback by default: the page shows the driver's state and must not leave the car.
    host: str = "127.0.0.1"
    port: int = 8765
    # Server-side backlog a newly opened page receives, for pause/scrub over the last minutes.
    history_s: float = 300.0
    history_max_items: int = 6000
    history_max_bytes: int = 32 << 20
    # Per-browser queue of pending updates; a browser that stops reading loses the oldest.
    client_max_items: int = 256
    client_max_bytes: int = 4 << 20
    max_clients: int = 16
    # WebSocket write buffer high-water mark before `send` waits (per client).
    write_limit_bytes: int = 64 * 1024
    # Bounds what queues in the SUB socket when the dashboard itself falls behind.
    rcvhwm: int = 1000
    max_message_bytes: int = 1 << 20
    stats_interval_s: float = 1.0
    ping_interval_s: float = 20.0
    # A recording opened with `edge-dash FILE` is shown whole, up to this many estimates.
    file_max_items: int = 36_000  # 5 h of driving at one estimate per 0.5 s
    # Optional live Foxglove server (extra `foxglove`): -1 = off, 0 = any free port.
    foxglove_port: int = -1
    foxglove_backlog: int = 256

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not a TCP port")
        if not -1 <= self.foxglove_port <= 65535:
            raise ConfigError(f"foxglove_port {self.foxglove_port}: -1 (off) or a TCP port")
        positive = {
            "history_s": self.history_s,
            "history_max_items": self.history_max_items,
            "history_max_bytes": self.history_max_bytes,
            "client_max_items": self.client_max_items,
            "client_max_bytes": self.client_max_bytes,
            "max_clients": self.max_clients,
            "write_limit_bytes": self.write_limit_bytes,
            "rcvhwm": self.rcvhwm,
            "max_message_bytes": self.max_message_bytes,
            "stats_interval_s": self.stats_interval_s,
            "ping_interval_s": self.ping_interval_s,
            "file_max_items": self.file_max_items,
            "foxglove_backlog": self.foxglove_backlog,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")

    def resolved(self) -> DashConfig:
        """Fill in the machine-dependent endpoint exactly as the daemon resolves its own."""
        if self.telemetry:
            return self
        return dataclasses.replace(self, telemetry=DaemonConfig().resolved().telemetry)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
