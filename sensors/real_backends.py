"""Options and builders of the real-device backends for `edge-sensor` (see sensors/cli.py).

    edge-sensor audio --device "USB Audio"            # PyAudio microphone, by name or index
    edge-sensor camera --source 0                     # OpenCV: device index, file or URL
    edge-sensor transcript --source unix:/run/emotion-edge/assistant.sock

`--replay-t0-ns T` plays a file-backed source (a WAV behind the ALSA file plugin, a video
file, a transcript JSONL) in real time as if it started at CLOCK_MONOTONIC T, so processes
restarted mid-drive pick up where the drive is (edge-demo --media uses it). Builders import
cv2 / pyaudio only when their backend is chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sensors.base import Sensor


def _replay_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replay-t0-ns", type=int, default=None,
                        help="play a file-backed source in real time from this CLOCK_MONOTONIC")
    parser.add_argument("--privacy-file", default=None,
                        help="privacy: while this file exists the device is released and the "
                             "sensor reports disabled")


def audio_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", required=True, help="PortAudio input name (substring) or index")
    parser.add_argument("--device-rate", type=int, default=None,
                        help="force the stream rate (default: 16000 if supported, else the "
                             "device's; resampled to 16 kHz)")
    parser.add_argument("--block-ms", type=int, default=100)
    parser.add_argument("--vad", choices=("webrtc", "energy", "off"), default="webrtc")
    _replay_arg(parser)


def build_audio(args: argparse.Namespace) -> Sensor:
    from sensors.audio import AudioConfig, AudioSensor

    return AudioSensor(AudioConfig(device=args.device, device_rate=args.device_rate,
                                   block_ms=args.block_ms, vad=args.vad,
                                   privacy_file=args.privacy_file,
                                   replay_t0_ns=args.replay_t0_ns))


def camera_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="device index, video file or URL")
    parser.add_argument("--detect-width", type=int, default=320,
                        help="frame width used for face detection (speed vs smallest face)")
    _replay_arg(parser)


def build_camera(args: argparse.Namespace) -> Sensor:
    from sensors.camera import CameraConfig, CameraSensor

    return CameraSensor(CameraConfig(source=args.source, detect_width=args.detect_width,
                                     replay_t0_ns=args.replay_t0_ns,
                                     privacy_file=args.privacy_file))


def transcript_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help="unix:PATH or tcp:HOST:PORT to listen on, or a JSONL file")
    parser.add_argument("--idle-s", type=float, default=0.5)
    _replay_arg(parser)


def build_transcript(args: argparse.Namespace) -> Sensor:
    from sensors.transcript import TranscriptConfig, TranscriptSensor

    return TranscriptSensor(TranscriptConfig(source=args.source, idle_s=args.idle_s,
                                             replay_t0_ns=args.replay_t0_ns,
                                             privacy_file=args.privacy_file))


def device_lines() -> list[str]:
    """Audio inputs PortAudio sees and V4L2 video devices, for `edge-sensor list`."""
    lines = []
    try:
        from sensors.audio import list_devices

        audio = list_devices()
    except Exception as exc:  # no PortAudio here: say so instead of failing the listing
        lines.append(f"audio devices: unavailable ({type(exc).__name__}: {exc})")
    else:
        lines.append(f"audio devices ({len(audio)}):")
        lines += [f"  {d['index']:>3}  {d['name']}  ({d['channels']} ch, "
                  f"{d['default_rate']:.0f} Hz)" for d in audio]
    video = sorted(Path("/sys/class/video4linux").glob("video*"))
    lines.append(f"video devices ({len(video)}):")
    for v in video:
        name = (v / "name").read_text().strip() if (v / "name").exists() else "?"
        lines.append(f"  {v.name[5:]:>3}  /dev/{v.name}  {name}")
    return lines
