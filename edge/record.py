"""`edge-record`: write every envelope it receives to an MCAP recording.

    edge-record --out drive.mcap [--bind ipc://RUN/record.ipc] [--connect ipc://RUN/telemetry.ipc]

One SUB socket binds a recorder ingress that sensors publish to (next to the daemon's: a
sensor's XPUB connects to both) and connects to the daemon's telemetry, so frames,
heartbeats, estimates and status documents all land in one file, one MCAP channel per topic
(layout: `edge.wire`, "the same envelopes in a recording file"). Chunks are flushed at least
every ``flush_ms``: if the recorder is killed, the file is readable up to its last flushed
chunk (`edge.wire.iter_recording` reads it as a stream). A clean stop (SIGTERM/SIGINT) writes
the index and summary, so Foxglove and `mcap info` can seek in it.

An existing file is never truncated by accident (a restarted recorder must not destroy the
drive it recorded before): by default ``edge-record`` refuses to start (exit 73, EX_CANTCREAT,
with the reason on stderr); ``--new-file`` records to the next free ``NAME-1.mcap``,
``NAME-2.mcap``, ... instead (what a supervisor that restarts the recorder wants; the path is
logged, in the READY status and in the resolved config); ``--overwrite`` replaces the file.

Links that leave the device (tcp) use CurveZMQ like `edge-daemon` / `edge-sensor`
(``--curve-dir`` from `edge-keys`, ``--curve-key``): a tcp ``--bind`` is a CURVE server with
the key dir's ``server`` keypair and a ZAP handler admitting only ``authorized/`` keys (the
sensors' one XPUB socket reaches daemon and recorder with the same server key); a tcp
``--connect`` (the daemon's telemetry) is a CURVE client with key ``--curve-key``. So each
role has its own socket. A tcp endpoint without ``--curve-dir`` is a config error (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Literal

import zmq
from mcap.writer import CompressionType, Writer

from edge import config as edge_config
from edge import keys, schemas, wire
from edge.clock import monotonic_ns
from edge.config import ConfigError, default_run_dir, require_curve_for_tcp
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
    # what to do when `out` exists: refuse (default; never truncate a recording), "new"
    # (record to the next free NAME-1.mcap, NAME-2.mcap, ...) or "overwrite"
    on_exists: Literal["refuse", "new", "overwrite"] = "refuse"
    curve_dir: str = ""  # CurveZMQ key dir (edge-keys); required when an endpoint is tcp://
    curve_key: str = keys.DEFAULT_CLIENT  # client key for tcp --connect (daemon telemetry)

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("out is required")
        if self.flush_ms <= 0 or self.chunk_kb <= 0:
            raise ConfigError("flush_ms and chunk_kb must be > 0")
        if self.on_exists not in ("refuse", "new", "overwrite"):
            raise ConfigError(f"on_exists must be refuse|new|overwrite, got {self.on_exists!r}")
        require_curve_for_tcp(self.bind + self.connect, self.curve_dir)

    def resolved(self) -> RecordConfig:
        run_dir = self.run_dir or str(default_run_dir())
        return dataclasses.replace(
            self,
            run_dir=run_dir,
            bind=self.bind or (f"ipc://{run_dir}/record.ipc",),
            connect=self.connect or (f"ipc://{run_dir}/telemetry.ipc",),
        )


class RecordingExists(FileExistsError):
    """`out` holds an earlier recording and the config says not to replace it."""


MAX_NEW_FILES = 10_000


def open_output(path: Path, on_exists: str) -> tuple[BinaryIO, Path]:
    """Open the recording file without ever truncating one by accident (O_EXCL, no race).

    Returns the file and the path actually opened (``NAME-k.SUFFIX`` with ``on_exists="new"``
    when ``path`` exists)."""
    if on_exists == "overwrite":
        return open(path, "wb"), path  # noqa: SIM115 - the Recorder closes it
    candidates = [path]
    if on_exists == "new":
        candidates += [path.with_name(f"{path.stem}-{k}{path.suffix}") for k in
                       range(1, MAX_NEW_FILES)]
    for candidate in candidates:
        try:
            return open(candidate, "xb"), candidate  # noqa: SIM115
        except FileExistsError:
            continue
    if on_exists == "new":
        raise RecordingExists(f"{path}: no free name up to {candidates[-1].name}")
    raise RecordingExists(
        f"{path} exists (an earlier recording); not overwriting it. Pass --overwrite to "
        f"replace it, --new-file to record to {candidates[0].stem}-1{path.suffix}, "
        "or choose another --out"
    )


class Recorder:
    def __init__(self, config: RecordConfig, ctx: zmq.Context[Any] | None = None) -> None:
        self.config = config
        # the file first: a recorder that may not write there binds nothing
        self._file, self.path = open_output(Path(config.out), config.on_exists)
        self.ctx = ctx or zmq.Context.instance()
        self.authenticator: Any = None
        try:
            self.socks = self._sockets(config)
        except BaseException:
            self._file.close()
            if config.on_exists != "overwrite":
                self.path.unlink(missing_ok=True)  # ours and empty: do not block a retry
            if self.authenticator is not None:
                self.authenticator.stop()
            raise
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

    def _sockets(self, config: RecordConfig) -> list[zmq.Socket[Any]]:
        """One SUB for the recorder's own ingress (binds: sensors connect) and one for the
        telemetry (connects): on tcp they are a CURVE server and a CURVE client, two roles a
        single socket cannot take. Plain ipc keeps one socket, as before."""
        curve = bool(config.curve_dir) and keys.uses_tcp(config.bind + config.connect)
        groups = [(config.bind, ()), ((), config.connect)] if curve else [
            (config.bind, config.connect)]
        socks = []
        for bind, connect in groups:
            if not bind and not connect:
                continue
            sock = self.ctx.socket(zmq.SUB)
            socks.append(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, config.rcv_hwm)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            if curve and keys.uses_tcp(bind):
                if self.authenticator is None:  # admits only curve_dir/authorized keys
                    self.authenticator = keys.start_authenticator(self.ctx, config.curve_dir)
                keys.secure_server(sock, config.curve_dir)
            if curve and keys.uses_tcp(connect):
                keys.secure_client(sock, config.curve_dir, config.curve_key)
            for endpoint in bind:
                sock.bind(endpoint)
            for endpoint in connect:
                sock.connect(endpoint)
        return socks

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
        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        while not self.stop_requested:
            if self.config.seconds and time.monotonic() - started >= self.config.seconds:
                break
            for sock, _ in poller.poll(min(100, self.config.flush_ms)):
                for _ in range(1000):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.write(parts)
            if time.monotonic() - last_flush >= flush_s:
                self.writer.flush()  # closes the open chunk: it survives a crash from now on
                last_flush = time.monotonic()

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
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
    exists = parser.add_mutually_exclusive_group()
    exists.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (default: refuse)"
    )
    exists.add_argument(
        "--new-file", action="store_true",
        help="if --out exists, record to the next free NAME-1.mcap, NAME-2.mcap, ...",
    )
    parser.add_argument("--curve-dir", help="CurveZMQ key dir (edge-keys) for tcp endpoints")
    parser.add_argument("--curve-key", help="client key name for tcp --connect (default: client)")
    args = parser.parse_args(argv)
    overrides = {
        "out": args.out,
        "bind": tuple(args.bind) if args.bind else None,
        "connect": tuple(args.connect) if args.connect else None,
        "run_dir": args.run_dir,
        "flush_ms": args.flush_ms,
        "seconds": args.seconds,
        "video_frames": args.video_frames or None,
        "on_exists": "overwrite" if args.overwrite else "new" if args.new_file else None,
        "curve_dir": args.curve_dir,
        "curve_key": args.curve_key,
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
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        recorder = Recorder(config)
    except RecordingExists as exc:
        print(f"edge-record: {exc}", file=sys.stderr)
        return 73  # EX_CANTCREAT
    except (keys.KeyDirError, OSError, zmq.ZMQError) as exc:
        print(f"edge-record: {exc}", file=sys.stderr)
        return 2
    out = recorder.path
    if out != Path(config.out):
        log.warning("%s exists: recording to %s instead (--new-file)", config.out, out)
    edge_config.write_resolved(
        dataclasses.replace(config, out=str(out)), out.parent, f"{out.stem}.record"
    )
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
