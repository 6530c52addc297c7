"""`edge-daemon`: the fusion daemon, a thin I/O shell around `edge.fusion.FusionCore`.

    edge-daemon [--config configs/daemon.toml] [--run-dir DIR] [--model-dir DIR]
                [--clock monotonic|event] [--disable MODALITY] [--estimates-jsonl FILE]

SUB binds the ingress endpoint (sensors, or `edge-replay`, connect and publish to it); PUB
binds the telemetry endpoint (estimates on topic ``estimate``, link/health documents on
``status``). Both have bounded high-water marks: a flood is dropped at the ingress and
counted through sequence gaps, and a slow telemetry subscriber loses messages instead of
slowing or growing the daemon. Malformed messages are counted per link and reason, never
raised. Signals only set a flag; the loop finishes its step and shuts down within
``shutdown_deadline_s`` (a timer hard-exits the process if it does not). With
``--clock event`` (replay) time is the newest event stamp, so a recording replayed at any
speed gives the estimates it gave live.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import zmq

import edge.threads  # noqa: F401 - first: limits BLAS threads before numpy loads
from edge import config as edge_config
from edge import keys, wire
from edge.clock import EventClock, MonotonicClock, monotonic_ns, wall_ns
from edge.config import DaemonConfig
from edge.fusion import ClosedWindow, FusionCore, Inference, run_model
from edge.notify import Notifier
from engines.backend import Backend, available_backends, load_backend

log = logging.getLogger("edge.daemon")
MAX_LINK_NAMES = 64  # distinct malformed-link names tracked; the rest count as "other"
# zmq_poll can wake this much after its timeout (measured here: a 9 ms timeout returned
# after 13.2 ms, consistently ~4 ms late, a coarse-clock tick); within this margin of a
# deadline the loop sleeps precisely instead.
POLL_OVERSHOOT_MS = 5
MAX_BATCH = 256  # messages handled between two window checks
ENGINE_BUILD_TIMEOUT_S = 900  # start-up time asked of systemd while a TensorRT engine builds


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        backend: Backend,
        *,
        ctx: zmq.Context[Any] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.ctx = ctx or zmq.Context.instance()
        self.notifier = notifier or Notifier()
        self.event_clock = EventClock() if config.clock == "event" else None
        self.clock = self.event_clock or MonotonicClock()
        self.core = FusionCore(config, backend)
        # Replay only: the model runs closed windows on worker threads, published in order.
        self._model_pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[tuple[ClosedWindow, Future[Inference]]] = deque()
        if (self.event_clock is not None and config.replay_workers > 1
                and getattr(backend, "thread_safe", False)):
            self._model_pool = ThreadPoolExecutor(config.replay_workers, "model")
        self.malformed: dict[str, Counter[str]] = {}  # link -> reason -> count
        self.received = 0
        self.published = 0
        self.stop_requested = False
        self._jsonl: TextIO | None = None
        self._last_status_ns = 0
        self._last_ping = 0.0
        self._last_progress = time.monotonic()
        self.ingress = self.ctx.socket(zmq.SUB)
        self.ingress.setsockopt(zmq.LINGER, 0)
        self.ingress.setsockopt(zmq.RCVHWM, config.rcv_hwm)
        # transport-level guard far above the decode limit, so oversize still gets counted
        self.ingress.setsockopt(zmq.MAXMSGSIZE, 4 * config.max_payload_bytes + 65536)
        self.ingress.setsockopt(zmq.SUBSCRIBE, b"")
        self.telemetry = self.ctx.socket(zmq.PUB)
        self.telemetry.setsockopt(zmq.LINGER, 0)
        self.telemetry.setsockopt(zmq.SNDHWM, config.snd_hwm)
        # tcp links leave the device: CURVE server + a ZAP handler that admits only the
        # public keys in curve_dir/authorized (config validation forbids tcp without keys)
        self.authenticator = None
        for sock, endpoint in ((self.ingress, config.ingress), (self.telemetry, config.telemetry)):
            if config.curve_dir and keys.uses_tcp([endpoint]):
                if self.authenticator is None:
                    self.authenticator = keys.start_authenticator(self.ctx, config.curve_dir)
                keys.secure_server(sock, config.curve_dir)

    # -- lifecycle ------------------------------------------------------------------------
    def bind(self) -> None:
        if self.config.run_dir:
            edge_config.ensure_private_dir(self.config.run_dir)
        for endpoint in (self.config.ingress, self.config.telemetry):
            if endpoint.startswith("ipc://"):  # 0700: only the service user reaches the sockets
                edge_config.ensure_private_dir(Path(endpoint[len("ipc://") :]).parent)
        self.ingress.bind(self.config.ingress)
        self.telemetry.bind(self.config.telemetry)
        if self.config.estimates_jsonl:
            self._jsonl = open(self.config.estimates_jsonl, "a", buffering=1)  # noqa: SIM115

    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def run(self, *, max_seconds: float | None = None) -> int:
        """Serve until stop is requested (or `max_seconds` pass). Returns an exit code."""
        self.notifier.ready(self.status_line())
        self._last_progress = time.monotonic()
        if self.event_clock is None:
            self.core.windower.start(self.clock.now_ns())
        started = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.ingress, zmq.POLLIN)
        try:
            while not self.stop_requested:
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                if self._wait(poller):
                    self._drain()
                self._step()
                self._housekeeping()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        deadline = threading.Timer(self.config.shutdown_deadline_s, _hard_exit)
        deadline.daemon = True
        deadline.start()
        try:
            self.notifier.stopping()
            if self._model_pool is not None:
                self._publish_estimates(self._finished(wait_all=True))
                self._model_pool.shutdown()
            self._publish("status", self.status_doc())
            self.ingress.close(linger=0)
            self.telemetry.close(linger=0)
            if self._jsonl is not None:
                self._jsonl.close()
            if self.authenticator is not None:
                self.authenticator.stop()
            self.notifier.close()
        finally:
            deadline.cancel()

    # -- the loop -------------------------------------------------------------------------
    def _wait(self, poller: zmq.Poller) -> bool:
        """Wait for a message or the next timed step; True when messages are waiting."""
        cap_ms = max(1, self.config.watchdog.heartbeat_ms // 4)  # link changes, housekeeping
        if self._in_flight:
            cap_ms = 1  # replay: publish windows as the model finishes them
        until_ms = self._until_deadline_ms()
        if until_ms is None or until_ms > cap_ms + POLL_OVERSHOOT_MS:
            return bool(poller.poll(cap_ms))
        if until_ms > POLL_OVERSHOOT_MS:
            return bool(poller.poll(int(until_ms - POLL_OVERSHOOT_MS)))
        # Close to a window's close or precompute: sleep precisely (messages wait in the
        # socket meanwhile), so the estimate leaves on time.
        if until_ms > 0:
            time.sleep(until_ms / 1000)
        return bool(poller.poll(0))

    def _until_deadline_ms(self) -> float | None:
        """Milliseconds to the next window precompute or close (live); None on event time."""
        if self.event_clock is not None:
            return None  # time moves with messages only
        now = self.clock.now_ns()
        due = [t for t in (self.core.next_precompute_ns(), self.core.windower.next_close_ns())
               if t is not None]
        return max(0.0, (min(due) - now) / 1e6) if due else None

    def _drain(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                parts = self.ingress.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.received += 1
            self.handle(parts)
            if self.event_clock is not None:
                self._step()  # replay: close windows as event time passes them

    def handle(self, parts: list[Any]) -> None:
        try:
            envelope = wire.decode(parts, max_payload_bytes=self.config.max_payload_bytes)
            if self.event_clock is not None and envelope.header.kind in wire.SENSOR_KINDS:
                self.event_clock.observe(envelope.header.t_mono_ns)
            self.core.ingest(envelope, self.clock.now_ns())
        except wire.WireError as exc:
            self._count_malformed(wire.link_of(parts), exc.reason)

    def _count_malformed(self, link: str, reason: str) -> None:
        if link not in self.malformed and len(self.malformed) >= MAX_LINK_NAMES:
            link = "other"
        self.malformed.setdefault(link, Counter())[reason] += 1
        total = sum(self.malformed[link].values())
        if total & (total - 1) == 0:  # log at 1, 2, 4, 8, ... per link: visible, not a flood
            log.warning("malformed message on %s: %s (%d so far)", link, reason, total)

    def _step(self) -> None:
        if self.event_clock is not None and not self.event_clock.started:
            return  # replay: no time exists before the first event
        if self._model_pool is None:
            estimates = self.core.step(self.clock.now_ns())
        else:
            for closed in self.core.close(self.clock.now_ns()):
                future = self._model_pool.submit(run_model, self.backend, closed)
                self._in_flight.append((closed, future))
            estimates = self._finished()
        if estimates:
            self._last_progress = time.monotonic()
        self._publish_estimates(estimates)
        if self.event_clock is None:
            # Live: run the model for the next window ahead of its close. (On event time,
            # replay, there is no wall-clock latency to win.)
            self.core.precompute(self.clock.now_ns())

    def _finished(self, *, wait_all: bool = False) -> list[dict[str, Any]]:
        """Estimates of the in-flight windows whose model has finished, in window order; waits
        for the oldest while more than 2 per worker are in flight (the bound), or for all."""
        bound = 2 * self.config.replay_workers
        done = []
        while self._in_flight:
            closed, future = self._in_flight[0]
            if not (future.done() or wait_all or len(self._in_flight) > bound):
                break
            self._in_flight.popleft()
            done.append(self.core.finish(closed, future.result()))
        return done

    def _publish_estimates(self, estimates: list[dict[str, Any]]) -> None:
        for estimate in estimates:
            estimate["clock"] = self.config.clock
            estimate["health"] = self.health()
            # stamped last, so the stamp is the send: building the health report is the
            # daemon's work, not the wire's, and belongs before it (in beyond_close_ms)
            t_publish = self.clock.now_ns() if self.event_clock else monotonic_ns()
            newest = estimate["newest_frame_ns"]
            estimate["t_publish_ns"] = t_publish
            estimate["latency_ms"] = None if newest is None else (t_publish - newest) / 1e6
            estimate["beyond_close_ms"] = (t_publish - estimate["t_close_ns"]) / 1e6
            self._publish("estimate", estimate)
            if self._jsonl is not None:
                self._jsonl.write(json.dumps(estimate, separators=(",", ":")) + "\n")

    def _publish(self, kind: str, doc: dict[str, Any]) -> None:
        parts = wire.json_message(
            kind=kind,  # type: ignore[arg-type]
            seq=self.published,
            t_mono_ns=monotonic_ns(),
            t_wall_ns=wall_ns(),
            doc=doc,
        )
        try:
            self.telemetry.send_multipart(parts, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # PUB drops for a subscriber at its high-water mark; never block here
        self.published += 1

    def _housekeeping(self) -> None:
        now_ns = self.clock.now_ns()
        changes = self.core.watchdog.changes(now_ns) if now_ns else []
        interval_ns = self.config.status_interval_ms * 1_000_000
        if changes or now_ns - self._last_status_ns >= interval_ns:
            self._last_status_ns = now_ns
            doc = self.status_doc()
            doc["changes"] = [
                {
                    "modality": m,
                    "from": old,
                    "to": new,
                    "last_seen_ns": self.core.watchdog.last_seen_ns(m),
                }
                for m, old, new in changes
            ]
            self._publish("status", doc)
            self.notifier.status(self.status_line())
        self._ping_watchdog()

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 at half of WatchdogSec, only while windows keep closing on time."""
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        now = time.monotonic()
        if self.event_clock is None:
            hop_s = self.config.window.hop_ms / 1000
            progressing = (
                now - self._last_progress <= 2 * hop_s + self.config.window.max_lag_ms / 1000
            )
        else:
            progressing = True  # replay: no input, no windows; the loop itself is alive
        if progressing and now - self._last_ping >= interval:
            self._last_ping = now
            self.notifier.watchdog()

    # -- reporting ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {
            **self.core.health(),
            "received": self.received,
            "malformed": {link: dict(c) for link, c in self.malformed.items()},
        }

    def status_doc(self) -> dict[str, Any]:
        now_ns = self.clock.now_ns()
        return {
            "t_mono_ns": now_ns,
            "links": self.core.watchdog.states_at(now_ns),
            "estimates": self.core.seq,
            "health": self.health(),
        }

    def status_line(self) -> str:
        links = self.core.watchdog.states_at(self.clock.now_ns())
        malformed = sum(sum(c.values()) for c in self.malformed.values())
        states = " ".join(f"{m}={s}" for m, s in links.items())
        return f"{states} estimates={self.core.seq} malformed={malformed}"


def _hard_exit() -> None:
    log.error("shutdown deadline passed; exiting hard")
    os._exit(3)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-daemon", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="TOML file with a [daemon] table")
    parser.add_argument("--run-dir")
    parser.add_argument("--ingress")
    parser.add_argument("--telemetry")
    parser.add_argument("--model-dir")
    parser.add_argument("--backend", choices=available_backends())
    parser.add_argument("--clock", choices=("monotonic", "event"))
    parser.add_argument("--disable", action="append", choices=("audio", "video", "text"))
    parser.add_argument("--estimates-jsonl")
    parser.add_argument("--out-dir", help="where the resolved config is written")
    parser.add_argument("--curve-dir", help="CurveZMQ key dir (edge-keys) for tcp endpoints")
    parser.add_argument("--seconds", type=float, help="exit after this long")
    return parser


def load_config(args: argparse.Namespace) -> DaemonConfig:
    overrides = {
        "run_dir": args.run_dir,
        "ingress": args.ingress,
        "telemetry": args.telemetry,
        "model_dir": args.model_dir,
        "backend": args.backend,
        "clock": args.clock,
        "disabled": tuple(args.disable) if args.disable else None,
        "estimates_jsonl": args.estimates_jsonl,
        "out_dir": args.out_dir,
        "curve_dir": args.curve_dir,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    return edge_config.load(DaemonConfig, args.config, section="daemon", **given).resolved()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except edge_config.ConfigError as exc:
        print(f"edge-daemon: {exc}", file=sys.stderr)
        return 2
    written = edge_config.write_resolved(config, config.out_dir, "daemon")
    log.info("config: %s", written)
    daemon: Daemon | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if daemon is not None:
            daemon.request_stop()
        else:
            raise SystemExit(0)  # still loading the model: nothing to drain

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where is it stuck?
    t0 = time.monotonic()
    if config.backend.startswith("tensorrt"):
        # A first engine build on a new GPU/TensorRT/model takes minutes; later starts load it
        # from the cache in a second. READY still comes only after the warm-up below.
        Notifier().extend_timeout(ENGINE_BUILD_TIMEOUT_S)
    try:
        backend = load_backend(config.model_dir, config.backend)
        backend.warmup()
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        print(f"edge-daemon: cannot load model from {config.model_dir}: {exc}", file=sys.stderr)
        return 1
    log.info(
        "backend %s loaded and warmed up in %.2f s %s",
        backend.name,
        time.monotonic() - t0,
        getattr(backend, "status", ""),
    )
    try:
        daemon = Daemon(config, backend)
        daemon.bind()
    except (keys.KeyDirError, edge_config.ConfigError, zmq.ZMQError) as exc:
        print(f"edge-daemon: {exc}", file=sys.stderr)
        return 2
    log.info("ingress %s telemetry %s clock %s", config.ingress, config.telemetry, config.clock)
    # What is loaded by now (modules, the model, its graphs: ~40k objects) lives as long as
    # the process. Freezing it takes it out of the cyclic GC's scans: a full collection in
    # the loop then costs ~0 ms instead of ~10 ms, and never stalls a window's close.
    gc.collect()
    gc.freeze()
    code = daemon.run(max_seconds=args.seconds)
    log.info("stopped: %s", daemon.status_line())
    return code


if __name__ == "__main__":
    sys.exit(main())
