"""`edge-replay FILE [--speed X | --fast]`: republish a recorded drive to the daemon.

    edge-daemon --clock event --run-dir R &      # time = event stamps, not the wall
    edge-replay drive.mcap --fast --run-dir R    # same envelopes, same topics, same ingress

Sends the recording's sensor envelopes (frames and heartbeats; `--topics` to choose) byte for
byte on the topics they were recorded on, through one socket connected to the daemon's
ingress, in capture-stamp order (a bounded reorder buffer of `--reorder-ms` fixes the few
inversions of the recorder's arrival order). One socket keeps that order end to end, and the
daemon's event clock does the rest: the estimates are those of the live run, at any speed.
`--fast` sends as fast as the daemon takes them: the XPUB socket does not drop (XPUB_NODROP),
so a full queue makes the replay wait instead of losing messages.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import zmq

from edge import wire
from edge.config import default_run_dir

log = logging.getLogger("edge.replay")
SENSOR_TOPICS = ("audio/", "video/", "text/")


def ordered(
    path: str, topics: tuple[str, ...], reorder_ns: int
) -> Iterator[tuple[int, str, list[Any]]]:
    """Envelopes in log_time (capture stamp) order, holding at most `reorder_ns` of them back."""
    heap: list[tuple[int, int, str, list[Any]]] = []
    newest = 0
    for index, (log_time, topic, parts) in enumerate(wire.iter_recording(path, topics=topics)):
        heapq.heappush(heap, (log_time, index, topic, parts))
        newest = max(newest, log_time)
        while heap and heap[0][0] < newest - reorder_ns:
            t, _, top, p = heapq.heappop(heap)
            yield t, top, p
    while heap:
        t, _, top, p = heapq.heappop(heap)
        yield t, top, p


def replay(
    path: str,
    endpoint: str,
    *,
    speed: float | None,
    topics: tuple[str, ...] = SENSOR_TOPICS,
    reorder_ms: int = 1000,
    await_timeout_s: float = 10.0,
    ctx: zmq.Context[Any] | None = None,
) -> dict[str, Any]:
    """Send the recording; `speed` None = as fast as possible. Returns a summary."""
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 2000)  # let the tail of a fast replay reach the daemon
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.setsockopt(zmq.SNDTIMEO, 10_000)
    sock.connect(endpoint)
    try:
        if not sock.poll(int(await_timeout_s * 1000), zmq.POLLIN):
            raise TimeoutError(f"no subscriber on {endpoint} after {await_timeout_s} s")
        sock.recv()  # the daemon's subscription: from now on nothing is dropped
        sent = 0
        first_t = last_t = None
        started = time.monotonic()
        started_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for log_time, _topic, parts in ordered(path, topics, reorder_ms * 1_000_000):
            if first_t is None:
                first_t = log_time
            last_t = log_time
            if speed is not None:
                due = started + (log_time - first_t) / 1e9 / speed
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
            sock.send_multipart([bytes(p) for p in parts], copy=False)
            sent += 1
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    span_s = 0.0 if first_t is None or last_t is None else (last_t - first_t) / 1e9
    return {
        "file": path,
        "messages": sent,
        "span_s": round(span_s, 3),
        "elapsed_s": round(elapsed, 3),
        "t_start_mono_ns": started_ns,
        "x_real_time": round(span_s / elapsed, 1) if elapsed > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="edge-replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="an edge-record MCAP recording")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="multiple of real time (default 1)")
    pace.add_argument("--fast", action="store_true", help="as fast as the daemon takes them")
    parser.add_argument("--connect", help="daemon ingress (default ipc://RUN_DIR/ingress.ipc)")
    parser.add_argument("--run-dir")
    parser.add_argument("--topics", nargs="+", default=list(SENSOR_TOPICS), help="topic prefixes")
    parser.add_argument("--reorder-ms", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if not args.fast and args.speed <= 0:
        parser.error("--speed must be > 0")
    run_dir = args.run_dir or str(default_run_dir())
    endpoint = args.connect or f"ipc://{run_dir}/ingress.ipc"
    try:
        summary = replay(
            args.file,
            endpoint,
            speed=None if args.fast else args.speed,
            topics=tuple(args.topics),
            reorder_ms=args.reorder_ms,
        )
    except (OSError, TimeoutError, zmq.ZMQError) as exc:
        print(f"edge-replay: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"replayed {summary['messages']} messages: {summary['span_s']} s of drive in "
            f"{summary['elapsed_s']} s = {summary['x_real_time']}x real time"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
