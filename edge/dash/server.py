"""`edge-dash`: a telemetry subscriber that serves a local page and pushes estimates over a
WebSocket.

    edge-dash [FILE] [--telemetry ENDPOINT] [--host 127.0.0.1] [--port N] [--config TOML]

Live (no FILE): subscribes to the daemon's telemetry PUB socket. With FILE: opens a recorded
MCAP drive and shows it whole, paused, for scrubbing. It is a separate process and only ever
reads from the daemon, so nothing it does (or a browser does to it) can slow the daemon: ZeroMQ
drops for a subscriber that falls behind, and each browser has a bounded drop-oldest queue
(`edge.dash.fanout`).

HTTP routes: `/` the page, `/static/...` its files, `/stats` the counters as JSON, `/ws` the
WebSocket. The server sends `hello` (config + backlog) on connect, then `estimate` messages and
a `stats` message every `stats_interval_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mimetypes
import os
import signal
import sys
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from edge.config import ConfigError, load
from edge.dash.config import DashConfig
from edge.dash.fanout import Fanout, TooManyClients
from edge.dash.foxglove_live import FoxgloveLive
from edge.dash.sources import LiveSource, Recording, load_recording, remember_last_seen
from edge.dash.telemetry import History, TelemetryError, link_table, links_from_estimate

STATIC_DIR = Path(__file__).resolve().parent / "static"
WS_PATH = "/ws"
SHUTDOWN_DEADLINE_S = 2.0
MAX_LINKS = 64  # distinct link names remembered from status documents


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Dashboard:
    """State shared by the reader, the stats ticker and the WebSocket handlers (one loop)."""

    def __init__(
        self,
        config: DashConfig,
        *,
        recording: Recording | None = None,
        foxglove: FoxgloveLive | None = None,
    ) -> None:
        self.config = config
        self.foxglove = foxglove
        self.mode = "file" if recording is not None else "live"
        self.source = str(recording.path) if recording is not None else config.telemetry
        self.fanout = Fanout(
            max_clients=config.max_clients,
            client_max_items=config.client_max_items,
            client_max_bytes=config.client_max_bytes,
        )
        if recording is not None:
            # A recording is shown whole; loading already stopped at file_max_items.
            self.history = History(
                max_items=config.file_max_items, max_bytes=2**62, horizon_ns=2**62
            )
        else:
            self.history = History(
                max_items=config.history_max_items,
                max_bytes=config.history_max_bytes,
                horizon_ns=int(config.history_s * 1e9),
            )
        self.received = 0
        self.malformed = recording.malformed if recording else 0
        self.last_error = recording.last_error if recording else ""
        self.truncated = recording.truncated if recording else False
        self.links: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.last_seen_ns: dict[str, int] = {}
        self.started = time.monotonic()
        for estimate in recording.estimates if recording else ():
            self.on_estimate(estimate)

    # -- inputs -------------------------------------------------------------------------------
    def on_estimate(self, estimate: dict[str, Any]) -> None:
        """Encode once; the same string goes into the backlog and to every browser."""
        if self.mode == "live":
            estimate["recv_wall_ms"] = round(time.time() * 1000, 1)
            if links_from_estimate(estimate) is None:
                estimate["links"] = link_table(estimate, last_seen_ns=self.last_seen_ns)
        self.received += 1
        encoded = json.dumps(estimate, separators=(",", ":"))
        self.history.append(estimate["t_end_ns"], encoded)
        links = links_from_estimate(estimate)
        if links is not None:
            self.links = links
        self.fanout.publish('{"type":"estimate","estimate":' + encoded + "}")
        if self.foxglove is not None:
            self.foxglove.log("estimate", encoded)

    def on_status(self, status: dict[str, Any]) -> None:
        """The daemon's periodic status: its per-link health, shown until the next one."""
        self.status = status
        # When a link changes state the daemon says when it last heard from it: that gives
        # the heartbeat age of a link that went silent.
        remember_last_seen(self.last_seen_ns, status, max_links=MAX_LINKS)
        if self.foxglove is not None:
            self.foxglove.log("status", json.dumps(status, separators=(",", ":")))

    def on_error(self, exc: TelemetryError) -> None:
        self.malformed += 1
        self.last_error = str(exc)

    # -- outputs ------------------------------------------------------------------------------
    def hello(self) -> str:
        head = json.dumps(
            {
                "type": "hello",
                "mode": self.mode,
                "source": self.source,
                "history_s": self.config.history_s,
                "history_max_items": self.config.history_max_items,
                "stats": self.stats(),
            }
        )
        # Splice the already-encoded backlog in rather than decoding and re-encoding it.
        return head[:-1] + ',"history":[' + ",".join(self.history.items()) + "]}"

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "source": self.source,
            "received": self.received,
            "malformed": self.malformed,
            "last_error": self.last_error,
            "truncated": self.truncated,
            "history_len": len(self.history),
            "history_bytes": self.history.n_bytes,
            "links": self.links,
            "status": self.status,
            "rss_bytes": _rss_bytes(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            **self.fanout.stats(),
        }


async def _read_live(dash: Dashboard, source: LiveSource) -> None:
    while True:
        try:
            message = await source.receive()
        except TelemetryError as exc:
            dash.on_error(exc)
            continue
        if message is None:
            continue
        if message.kind == "estimate":
            dash.on_estimate(message.doc)
        else:
            dash.on_status(message.doc)


async def _tick_stats(dash: Dashboard) -> None:
    while True:
        await asyncio.sleep(dash.config.stats_interval_s)
        dash.fanout.publish(json.dumps({"type": "stats", "stats": dash.stats()}))


def _static_response(path: str) -> Response:
    name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
    target = (STATIC_DIR / name).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype.endswith("javascript"):
        ctype += "; charset=utf-8"
    return _response(HTTPStatus.OK, target.read_bytes(), ctype)


def _response(status: HTTPStatus, body: bytes, ctype: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            # The page loads nothing from elsewhere: it must work in a car with no internet.
            ("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def build_handlers(dash: Dashboard) -> tuple[Any, Any]:
    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            return None  # go on with the WebSocket handshake
        if path == "/favicon.ico":
            return _response(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        if path == "/stats":
            body = json.dumps(dash.stats()).encode()
            return _response(HTTPStatus.OK, body, "application/json")
        return _static_response(path)

    async def handler(conn: ServerConnection) -> None:
        # hello snapshot and queue registration happen in one loop step (no await between), so
        # the browser sees every estimate exactly once: in the backlog or in its queue.
        hello = dash.hello()
        try:
            client_id, queue = dash.fanout.add(name=f"{conn.remote_address}")
        except TooManyClients as exc:
            await conn.close(code=1013, reason=str(exc))  # 1013: try again later
            return

        async def drain() -> None:
            await conn.send(hello)
            while True:
                message = await queue.get()
                await conn.send(message)
                queue.sent += 1

        sender = asyncio.create_task(drain())
        try:
            # Browsers send nothing we need; reading keeps close frames and pings flowing.
            async for _ in conn:
                pass
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
            dash.fanout.remove(client_id)

    return process_request, handler


async def run(config: DashConfig, recording_path: Path | None = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    recording = None
    if recording_path is not None:
        recording = load_recording(
            recording_path, max_items=config.file_max_items, max_bytes=config.max_message_bytes
        )
    foxglove = None
    if config.foxglove_port >= 0 and recording is None:
        foxglove = FoxgloveLive(
            host=config.host, port=config.foxglove_port, backlog=config.foxglove_backlog
        )
    dash = Dashboard(config, recording=recording, foxglove=foxglove)
    process_request, handler = build_handlers(dash)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # the handler only sets a flag; the loop acts

    tasks = [asyncio.create_task(_tick_stats(dash))]
    source = None
    if recording is None:
        source = LiveSource(
            config.telemetry, rcvhwm=config.rcvhwm, max_bytes=config.max_message_bytes
        )
        tasks.append(asyncio.create_task(_read_live(dash, source)))
    server: Server = await serve(
        handler,
        config.host,
        config.port,
        process_request=process_request,
        write_limit=config.write_limit_bytes,
        ping_interval=config.ping_interval_s,
        ping_timeout=config.ping_interval_s,
        max_size=64 * 1024,
        close_timeout=1.0,  # a frozen browser cannot hold up shutdown for the default 10 s
    )
    port = next(iter(server.sockets)).getsockname()[1]
    what = (
        f"recording {dash.source} ({dash.received} estimates)"
        if recording
        else f"telemetry {dash.source}"
    )
    print(f"edge-dash: serving http://{config.host}:{port}/ for {what}", flush=True)
    if foxglove is not None:
        print(f"edge-dash: foxglove server ws://{config.host}:{foxglove.port}", flush=True)
    print(f"edge-dash: config {json.dumps(config.to_dict())}", file=sys.stderr, flush=True)
    await stop.wait()
    # Graceful with a deadline: a browser that never answers the close handshake (or an HTTP
    # client holding its connection) must not keep the process alive.
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), SHUTDOWN_DEADLINE_S)
    except TimeoutError:
        print("edge-dash: shutdown deadline passed; dropping open connections", file=sys.stderr)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if source is not None:
        source.close()
    if foxglove is not None:
        foxglove.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-dash", description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", type=Path, help="recorded drive (.mcap) to open")
    parser.add_argument("--telemetry", help="daemon telemetry endpoint (live mode)")
    parser.add_argument("--host", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8765; 0 = any free port)")
    parser.add_argument("--config", type=Path, help="TOML file with a [dash] table")
    parser.add_argument(
        "--foxglove-port",
        type=int,
        help="also serve Foxglove's live protocol here (extra `foxglove`)",
    )
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (
            ("telemetry", args.telemetry),
            ("host", args.host),
            ("port", args.port),
            ("foxglove_port", args.foxglove_port),
        )
        if v is not None
    }
    try:
        config = load(DashConfig, args.config, section="dash", **overrides).resolved()
    except ConfigError as exc:
        parser.error(str(exc))
    if args.file is not None and not args.file.is_file():
        parser.error(f"{args.file}: no such recording")
    try:
        asyncio.run(run(config, args.file))
    except (OSError, RuntimeError) as exc:  # port in use, foxglove extra missing
        print(f"edge-dash: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
