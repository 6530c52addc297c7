"""`edge-sensor KIND [options]`: one capture process = one sensor backend + the publisher.

    edge-sensor list                                  # the backends below
    edge-sensor synthetic-audio --seed 1              # deterministic synthetic microphone
    edge-sensor synthetic-video --connect ipc:///run/emotion-edge/ingress.ipc
    edge-sensor recording --modality video --file drive.mcap --loop
    edge-sensor synthetic-text --disabled             # privacy: heartbeats say "disabled"

Adding a backend is one entry in `BACKENDS`: its modality (None = chosen with --modality),
a help line, a function adding its own options, and a builder returning a `Sensor`. Builders
import their device library lazily, so `edge-sensor list` never imports cv2 or pyaudio.
Common options (endpoints, heartbeat, privacy and fault switches) come from `CaptureConfig`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from edge import config as edge_config
from edge.keys import KeyDirError
from sensors import real_backends
from sensors.base import Sensor
from sensors.capture import CaptureConfig, run_capture

MODALITIES = ("audio", "video", "text")


@dataclass(frozen=True)
class BackendSpec:
    modality: str | None  # None: the user picks it with --modality
    help: str
    build: Callable[[argparse.Namespace], Sensor]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def _synthetic_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="content seed (default 0)")
    parser.add_argument("--mood-s", type=float, default=4.0, help="seconds per synthetic mood")


def _build_synthetic(modality: str) -> Callable[[argparse.Namespace], Sensor]:
    def build(args: argparse.Namespace) -> Sensor:
        from sensors import synthetic

        cls = {
            "audio": synthetic.SyntheticAudio,
            "video": synthetic.SyntheticVideo,
            "text": synthetic.SyntheticText,
        }[modality]
        return cls(seed=args.seed, mood_s=args.mood_s)

    return build


def _recording_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", required=True, help="an edge-record MCAP recording")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--loop", action="store_true")


def _build_recording(args: argparse.Namespace) -> Sensor:
    from sensors.recording import RecordingSensor

    return RecordingSensor(args.file, modality=args.modality, speed=args.speed, loop=args.loop)


BACKENDS: dict[str, BackendSpec] = {
    "audio": BackendSpec(
        "audio",
        "PyAudio microphone: 16 kHz int16 blocks, VAD (empty), privacy, reconnects",
        real_backends.build_audio,
        real_backends.audio_args,
    ),
    "camera": BackendSpec(
        "video",
        "OpenCV camera index, file or URL: 48x48 face crops (empty without a face)",
        real_backends.build_camera,
        real_backends.camera_args,
    ),
    "transcript": BackendSpec(
        "text",
        "voice-assistant utterances from a unix/tcp socket or a JSONL file",
        real_backends.build_transcript,
        real_backends.transcript_args,
    ),
    "synthetic-audio": BackendSpec(
        "audio",
        "synthetic microphone: int16 16 kHz blocks",
        _build_synthetic("audio"),
        _synthetic_args,
    ),
    "synthetic-video": BackendSpec(
        "video",
        "synthetic driver camera: 48x48 face crops, 10 fps",
        _build_synthetic("video"),
        _synthetic_args,
    ),
    "synthetic-text": BackendSpec(
        "text", "synthetic voice-assistant transcript", _build_synthetic("text"), _synthetic_args
    ),
    "recording": BackendSpec(
        None,
        "one modality's frames from an edge-record MCAP file",
        _build_recording,
        _recording_args,
    ),
}


def _common_args(parser: argparse.ArgumentParser, spec: BackendSpec) -> None:
    if spec.modality is None:
        parser.add_argument("--modality", required=True, choices=MODALITIES)
    parser.add_argument("--config", help="TOML file; its [sensor] table sets CaptureConfig")
    parser.add_argument("--sensor-id", help="id on the wire (default: the modality)")
    parser.add_argument(
        "--connect", action="append", help="ingress endpoint(s) to publish to (repeatable)"
    )
    parser.add_argument("--run-dir", help="directory of the default ipc endpoints")
    parser.add_argument("--heartbeat-ms", type=int)
    parser.add_argument("--await-subscribers", type=int, help="wait for N subscribers first")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: never)")
    parser.add_argument("--disabled", action="store_true", help="privacy: never open the device")
    parser.add_argument(
        "--heartbeat-only", action="store_true", help="fault injection: heartbeats, no frames"
    )
    parser.add_argument("--out-dir", help="write the resolved config here")
    parser.add_argument("--curve-dir", help="CurveZMQ key dir (edge-keys) for tcp endpoints")
    parser.add_argument("--curve-key", help="this sensor's client key name (default: client)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-sensor", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    sub.add_parser("list", help="list the sensor backends and the audio/video devices")
    for kind, spec in BACKENDS.items():
        backend_parser = sub.add_parser(kind, help=spec.help)
        _common_args(backend_parser, spec)
        spec.add_arguments(backend_parser)
    return parser


def capture_config(args: argparse.Namespace, modality: str) -> CaptureConfig:
    overrides = {
        key: value
        for key, value in {
            "sensor_id": args.sensor_id,
            "connect": tuple(args.connect) if args.connect else None,
            "run_dir": args.run_dir,
            "heartbeat_ms": args.heartbeat_ms,
            "await_subscribers": args.await_subscribers,
            "seconds": args.seconds,
            "disabled": args.disabled or None,
            "heartbeat_only": args.heartbeat_only or None,
            "curve_dir": args.curve_dir,
            "curve_key": args.curve_key,
        }.items()
        if value is not None
    }
    config = edge_config.load(CaptureConfig, args.config, section="sensor", **overrides)
    return config.resolved(modality)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "list":
        for kind, spec in BACKENDS.items():
            print(f"{kind:18} {spec.modality or '(--modality)':12} {spec.help}")
        print("\n".join(real_backends.device_lines()))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = BACKENDS[args.kind]
    modality = spec.modality or args.modality
    try:
        config = capture_config(args, modality)
    except edge_config.ConfigError as exc:
        print(f"edge-sensor: {exc}", file=sys.stderr)
        return 2
    if args.out_dir:
        edge_config.write_resolved(config, args.out_dir, f"sensor-{config.sensor_id}")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the loop notices within one heartbeat

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sensor = spec.build(args)
    try:
        counters = run_capture(sensor, config, stop)
    except KeyDirError as exc:
        print(f"edge-sensor: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("edge.sensor").info("%s stopped: %s", config.sensor_id, counters)
    own = getattr(sensor, "stats", None) or getattr(sensor, "counters", None)
    if own is not None:  # the backend's own counters (frames, faces, drops, reconnects...)
        own = own() if callable(own) else own
        logging.getLogger("edge.sensor").info("%s backend: %s", config.sensor_id, own)
    return 0


if __name__ == "__main__":
    sys.exit(main())
