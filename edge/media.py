"""`edge-demo --media DRIVE`: the real capture processes on a scripted drive, faults included.

A drive (edge-make-drive) is three files and a timeline. This module starts one real
`edge-sensor` process per modality on them and plays the timeline's faults:

- audio: `edge-sensor audio` (PyAudio) on an ALSA `file` PCM whose infile is the drive's
  WAV (ALSA_CONFIG_PATH points at a config written into the run directory);
- video: `edge-sensor camera` (OpenCV) decoding the drive's mp4;
- text:  `edge-sensor transcript` on the drive's JSONL.

All three replay from one CLOCK_MONOTONIC start (`--replay-t0-ns`), so their stamps share the
drive's time axis, and a process restarted mid-drive seeks to where the drive is.
Faults, at drive time: `unplugged` SIGKILLs the process and starts it again at the fault's
end; `stalled` SIGSTOPs it and SIGCONTs it at the end (both: the watchdog must say `dead`);
`privacy` creates the sensor's privacy flag file (the sensor releases its device and reports
`disabled`) and removes it at the end.

`edge/` never imports `sensors/`: this only builds command lines and sends signals.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edge.media")

MODALITIES = ("audio", "video", "text")
ALSA_PCM = "edgedrive"


@dataclass(frozen=True, kw_only=True)
class FaultAction:
    at_s: float  # drive time
    modality: str
    action: str  # kill | start | stop | cont | privacy_on | privacy_off


def _monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def fault_actions(timeline: dict) -> list[FaultAction]:
    """The timeline's faults as process actions, in time order."""
    begin = {"unplugged": "kill", "stalled": "stop", "privacy": "privacy_on"}
    end = {"unplugged": "start", "stalled": "cont", "privacy": "privacy_off"}
    out = []
    for f in timeline.get("faults", []):
        out.append(FaultAction(at_s=f["start_s"], modality=f["modality"], action=begin[f["kind"]]))
        out.append(FaultAction(at_s=f["end_s"], modality=f["modality"], action=end[f["kind"]]))
    return sorted(out, key=lambda a: a.at_s)


class MediaRunner:
    """Starts the three capture processes on a drive and plays its faults on time."""

    def __init__(
        self,
        drive: Path,
        run_dir: Path,
        connect: list[str],
        *,
        start_delay_s: float = 3.0,
        extra_args: tuple[str, ...] = (),
        modalities: tuple[str, ...] = MODALITIES,
        disabled: tuple[str, ...] = (),
        log_dir: Path | None = None,
    ) -> None:
        self.drive, self.run_dir = drive, run_dir
        self.start_delay_s = start_delay_s
        self.log_dir = log_dir or run_dir
        self.timeline = json.loads((drive / "timeline.json").read_text())
        for name in ("audio.wav", "video.mp4", "transcript.jsonl"):
            if not (drive / name).exists():
                raise FileNotFoundError(f"{drive / name} missing: build it with edge-make-drive")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "privacy").mkdir(exist_ok=True)
        alsa = run_dir / "asound.conf"
        alsa.write_text(
            "</usr/share/alsa/alsa.conf>\n"
            f'pcm.{ALSA_PCM} {{ type file slave.pcm "null" file "/dev/null" '
            f'infile "{(drive / "audio.wav").resolve()}" format "wav" }}\n'
        )
        self.env = {**os.environ, "ALSA_CONFIG_PATH": str(alsa)}
        # Processes need ~1-2 s to import cv2/pyaudio; the drive starts after they are up.
        self.t0_ns = _monotonic_ns() + round(start_delay_s * 1e9)
        common = [
            *[a for c in connect for a in ("--connect", c)],
            "--replay-t0-ns",
            str(self.t0_ns),
            *extra_args,
        ]
        self.argv = {
            "audio": ["audio", "--device", ALSA_PCM],
            "video": ["camera", "--source", str(drive / "video.mp4")],
            "text": ["transcript", "--source", str(drive / "transcript.jsonl")],
        }
        for m in self.argv:
            self.argv[m] += [*common, "--privacy-file", str(run_dir / "privacy" / m)]
        self.modalities = modalities
        for m in disabled:  # privacy for the whole drive (edge-demo --disable)
            (run_dir / "privacy" / m).touch()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pending = [a for a in fault_actions(self.timeline) if a.modality in modalities]
        self.done: list[dict] = []
        self.duration_s = float(self.timeline["duration_s"])

    def _spawn(self, modality: str) -> None:
        cmd = [sys.executable, "-m", "sensors.cli", *self.argv[modality]]
        log_file = (self.log_dir / f"sensor-{modality}.log").open("ab")
        self.procs[modality] = subprocess.Popen(
            cmd, env=self.env, stdout=log_file, stderr=subprocess.STDOUT
        )
        log_file.close()

    def start(self) -> None:
        for m in self.modalities:
            self._spawn(m)
        (self.log_dir / "media.json").write_text(
            json.dumps(
                {"media_t0_ns": self.t0_ns, "drive": str(self.drive), "argv": self.argv}, indent=1
            )
        )

    def drive_time_s(self) -> float:
        return (_monotonic_ns() - self.t0_ns) / 1e9

    def finished(self) -> bool:
        return self.drive_time_s() >= self.duration_s

    def tick(self) -> None:
        """Apply every fault action that is due. Call it often (every ~50 ms)."""
        now_s = self.drive_time_s()
        while self.pending and self.pending[0].at_s <= now_s:
            a = self.pending.pop(0)
            proc = self.procs.get(a.modality)
            if a.action == "kill" and proc is not None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            elif a.action == "start":
                self._spawn(a.modality)
            elif a.action == "stop" and proc is not None:
                proc.send_signal(signal.SIGSTOP)
            elif a.action == "cont" and proc is not None:
                proc.send_signal(signal.SIGCONT)
            elif a.action == "privacy_on":
                (self.run_dir / "privacy" / a.modality).touch()
            elif a.action == "privacy_off":
                (self.run_dir / "privacy" / a.modality).unlink(missing_ok=True)
            self.done.append(
                {
                    "at_s": a.at_s,
                    "applied_s": round(now_s, 3),
                    "modality": a.modality,
                    "action": a.action,
                }
            )
            log.info("drive %.2f s: %s %s", now_s, a.action, a.modality)

    def stop(self, timeout_s: float = 5.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                p.terminate()
        deadline = time.monotonic() + timeout_s
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        (self.log_dir / "media_faults.json").write_text(json.dumps(self.done, indent=1))
