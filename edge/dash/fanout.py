"""Per-browser bounded queues: a slow or frozen browser loses its oldest updates, nobody waits.

The telemetry reader only ever calls `Fanout.publish`, which appends to every client's queue
and returns at once; each client has its own sender task that drains its queue into its
WebSocket. When a browser stops reading, its TCP buffer fills, then the WebSocket write buffer
(`write_limit`), then its sender task blocks in `send()` and its queue fills; from then on each
new update evicts the oldest one and bumps that client's `dropped` counter. Memory per client is
therefore bounded by `max_items` / `max_bytes` plus the socket buffers, and the reader - and the
daemon behind ZeroMQ - never slows down.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ClientQueue:
    """A drop-oldest queue of encoded messages for one browser, bounded by count and bytes."""

    def __init__(self, *, max_items: int, max_bytes: int, name: str = "") -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("ClientQueue needs max_items >= 1 and max_bytes >= 1")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.name = name
        self.dropped = 0
        self.sent = 0
        self._items: deque[str] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()

    def put(self, message: str) -> None:
        """Never blocks. Evicts (and counts) the oldest messages while over a bound; the newest
        message is always kept, so a browser that catches up sees the current state."""
        self._items.append(message)
        self._bytes += len(message)
        while len(self._items) > 1 and (
            len(self._items) > self.max_items or self._bytes > self.max_bytes
        ):
            self._bytes -= len(self._items.popleft())
            self.dropped += 1
        self._ready.set()

    async def get(self) -> str:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        message = self._items.popleft()
        self._bytes -= len(message)
        return message

    @property
    def n_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


class TooManyClients(RuntimeError):
    """The page is open in more browsers than `max_clients`; the newest is refused."""


class Fanout:
    """The set of connected browsers. `publish` is O(clients) and never awaits."""

    def __init__(self, *, max_clients: int, client_max_items: int, client_max_bytes: int) -> None:
        self.max_clients = max_clients
        self._client_max_items = client_max_items
        self._client_max_bytes = client_max_bytes
        self._clients: dict[int, ClientQueue] = {}
        self._next_id = 0
        self.dropped_disconnected = 0  # drops counted for clients that have since left
        self.refused = 0

    def add(self, name: str = "") -> tuple[int, ClientQueue]:
        if len(self._clients) >= self.max_clients:
            self.refused += 1
            raise TooManyClients(f"already serving {self.max_clients} browsers")
        self._next_id += 1
        queue = ClientQueue(
            max_items=self._client_max_items, max_bytes=self._client_max_bytes, name=name
        )
        self._clients[self._next_id] = queue
        return self._next_id, queue

    def remove(self, client_id: int) -> None:
        queue = self._clients.pop(client_id, None)
        if queue is not None:
            self.dropped_disconnected += queue.dropped

    def publish(self, message: str) -> None:
        for queue in self._clients.values():
            queue.put(message)

    def stats(self) -> dict[str, object]:
        clients = [
            {
                "id": cid,
                "name": q.name,
                "queued": len(q),
                "queued_bytes": q.n_bytes,
                "dropped": q.dropped,
                "sent": q.sent,
            }
            for cid, q in self._clients.items()
        ]
        dropped_live = sum(q.dropped for q in self._clients.values())
        return {
            "clients": clients,
            "refused_clients": self.refused,
            "dropped_total": self.dropped_disconnected + dropped_live,
        }
