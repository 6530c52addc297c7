"""`edge-record`: write every envelope it receives to an MCAP recording.

    edge-record --out drive.mcap [--bind ipc://RUN/record.ipc] [--connect ipc://RUN/telemetry.ipc]

One SUB socket binds a recorder ingress that sensors publish to (next to the daemon's: a
sensor's XPUB connects to both) and connects to the daemon's telemetry, so frames,
heartbeats, estimates and status documents all land in one file, one MCAP channel per topic
(layout: `edge.wire`, "the same envelopes in a recording file"). Chunks are flushed at least
every ``flush_ms``: if the recorder is killed, the file is readable up to its last flushed
chunk (`edge.wire.iter_recording` reads it as a stream). A clean stop (SIGTERM/SIGINT) writes
the index and summary, so Foxglove and `mcap info` can seek in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zmq
from mcap.writer import CompressionType, Writer

from edge import config as edge_config
from edge import schemas, wire
from edge.clock import monotonic_ns
from edge.config import ConfigError, default_run_dir
from edge.notify import Notifier

log = logging.getLogger("edge.record")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordConfig:
    out: str
    bind: tuple[str, ...] = ()  # () -> ipc://{run_dir}/record.ipc
    connect: tuple[str, ...] = ()  # () -> ipc://{run_dir}/telemetry.ipc
    run_dir: str = ""
    flush_ms: int = 500  # at most this much is lost when the recorder is killed
    chunk_kb: int = 512
    rcv_hwm: int = 10_000
    max_payload_bytes: int = 4 * 1024 * 1024
    seconds: float = 0.0  # 0: until SIGTERM
    # The camera's face crops are images of the driver: recorded only when asked for. Without
    # them a recording keeps every video header (timing, seq, state) but no pixels, and a
    # replay reads the camera as "stale".
    video_frames: bool = False

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("out is required")
        if self.flush_ms <= 0 or self.chunk_kb <= 0:
            raise ConfigError("flush_ms and chunk_kb must be > 0")

    def resolved(self) -> RecordConfig:
        run_dir = self.run_dir or str(default_run_dir())
        return dataclasses.replace(
            self,
            run_dir=run_dir,
            bind=self.bind or (f"ipc://{run_dir}/record.ipc",),
            connect=self.connect or (f"ipc://{run_dir}/telemetry.ipc",),
        )


class Recorder:
    def __init__(self, config: RecordConfig, ctx: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, config.rcv_hwm)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        for endpoint in config.bind:
            self.sock.bind(endpoint)
        for endpoint in config.connect:
            self.sock.connect(endpoint)
        self._file = open(config.out, "wb")  # noqa: SIM115 - closed in close()
        self.writer = Writer(
            self._file, chunk_size=config.chunk_kb * 1024, compression=CompressionType.ZSTD
        )
        self.writer.start(profile=wire.RECORD_PROFILE, library="emotion-edge edge-record")
        self.channels: dict[str, int] = {}
        # JSON "view" channels (edge.schemas) next to the bit-exact envelope channels, so
        # Foxglove / Lichtblick / edge-dash can plot a recording; replay ignores them.
        self.views = schemas.ViewChannels(self.writer)
        self.recorded = 0
        self.skipped = 0  # malformed: not an envelope, so not recordable on a topic channel
        self.stop_requested = False
        self.withheld = 0  # video frames not written (video_frames off)
        self.write_error: str | None = None  # disk full / I/O error: recording stopped

    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def _channel(self, topic: str) -> int:
        if topic not in self.channels:
            self.channels[topic] = self.writer.register_channel(
                topic=topic, message_encoding=wire.RECORD_ENCODING, schema_id=0
            )
        return self.channels[topic]

    def write(self, parts: list[Any]) -> None:
        try:
            envelope = wire.decode(parts, max_payload_bytes=self.config.max_payload_bytes)
        except wire.WireError:
            self.skipped += 1
            return
        header = envelope.header
        received = monotonic_ns()
        if header.kind == "frame" and header.modality == "video" and not self.config.video_frames:
            self.withheld += 1  # privacy default: no pixels on disk; the header view is kept
            self.views.write(header.__dict__, b"", log_time=header.t_mono_ns, publish_time=received)
            return
        sequence = header.seq & 0xFFFFFFFF
        self.writer.add_message(
            channel_id=self._channel(envelope.topic),
            log_time=header.t_mono_ns,
            data=wire.pack(parts),
            publish_time=received,
            sequence=sequence,
        )
        view_payload = envelope.payload.data.cast("B")
        self.views.write(
            header.__dict__, view_payload, log_time=header.t_mono_ns, publish_time=received
        )
        self.recorded += 1

    def run(self) -> None:
        """Record until stopped. A write error (disk full) ends the recording, not the process
        with a traceback: what was flushed before it stays readable (`wire.iter_recording`)."""
        try:
            self._loop()
        except OSError as exc:
            self.write_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "cannot write %s (%s): recording stopped after %d envelopes; the file is "
                "readable up to its last flushed chunk", self.config.out, exc, self.recorded,
            )

    def _loop(self) -> None:
        flush_s = self.config.flush_ms / 1000
        last_flush = started = time.monotonic()
        while not self.stop_requested:
            if self.config.seconds and time.monotonic() - started >= self.config.seconds:
                break
            if self.sock.poll(min(100, self.config.flush_ms)):
                for _ in range(1000):
                    try:
                        parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.write(parts)
            if time.monotonic() - last_flush >= flush_s:
                self.writer.flush()  # closes the open chunk: it survives a crash from now on
                last_flush = time.monotonic()

    def close(self) -> None:
        self.sock.close(linger=0)
        try:
            if self.write_error is None:
                self.writer.finish()
            self._file.close()
        except OSError as exc:  # a full disk cannot take the summary either; the chunks stand
            self.write_error = self.write_error or f"{type(exc).__name__}: {exc}"
            log.error("cannot finish %s: %s", self.config.out, exc)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="edge-record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="MCAP file to write")
    parser.add_argument("--config", help="TOML file with a [record] table")
    parser.add_argument("--bind", action="append", help="recorder ingress (sensors connect)")
    parser.add_argument("--connect", action="append", help="telemetry endpoint(s) to record")
    parser.add_argument("--run-dir")
    parser.add_argument("--flush-ms", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument(
        "--video-frames", action="store_true", help="also record the camera's face crops"
    )
    args = parser.parse_args(argv)
    overrides = {
        "out": args.out,
        "bind": tuple(args.bind) if args.bind else None,
        "connect": tuple(args.connect) if args.connect else None,
        "run_dir": args.run_dir,
        "flush_ms": args.flush_ms,
        "seconds": args.seconds,
        "video_frames": args.video_frames or None,
    }
    try:
        config = edge_config.load(
            RecordConfig,
            args.config,
            section="record",
            **{k: v for k, v in overrides.items() if v is not None},
        ).resolved()
    except ConfigError as exc:
        print(f"edge-record: {exc}", file=sys.stderr)
        return 2
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    edge_config.write_resolved(config, out.parent, f"{out.stem}.record")
    recorder = Recorder(config)
    signal.signal(signal.SIGTERM, recorder.request_stop)
    signal.signal(signal.SIGINT, recorder.request_stop)
    Notifier().ready(f"recording to {out}")
    try:
        recorder.run()
    finally:
        recorder.close()
    log.info(
        "recorded %d envelopes on %d topics to %s (%d video frames withheld)",
        recorder.recorded, len(recorder.channels), out, recorder.withheld,
    )
    if recorder.write_error is not None:
        print(f"edge-record: recording stopped: {recorder.write_error}", file=sys.stderr)
        return 74  # EX_IOERR
    return 0


if __name__ == "__main__":
    sys.exit(main())
