"""`edge-demo`: the whole pipeline on one machine, with faults on demand.

    edge-demo --seconds 20                       # synthetic sensors -> daemon -> console
    edge-demo --json --seconds 10 > out.jsonl    # one JSON estimate per line
    edge-demo --kill audio@3+4                   # SIGKILL the mic's process at 3 s, restart at 7 s
    edge-demo --stall video@5+2                  # SIGSTOP the camera's process at 5 s for 2 s
    edge-demo --heartbeat-only text              # a sensor whose frames never come (stale)
    edge-demo --disable video                    # privacy: the camera reports "disabled"
    edge-demo --record drive.mcap                # also record everything (edge-replay it later)
    edge-demo --media runs/commute --json        # real capture processes on a scripted drive

Starts `edge-daemon` (waits for its READY=1 over a notify socket, exactly as systemd would),
optionally `edge-record`, one `edge-sensor synthetic-<modality>` per modality, and subscribes
to the estimates itself. Everything runs as subprocesses: `edge/` never imports `sensors/`.
Writes estimates.jsonl, the processes' logs and every resolved config into `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from edge import config as edge_config
from edge import wire
from edge.config import MODALITIES, REPO_ROOT
from edge.media import MediaRunner
from engines.backend import available_backends

STATE_MARK = {"ok": "ok", "dead": "DEAD", "stale": "stale", "empty": "empty", "disabled": "off"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fault:
    action: str  # kill | stall
    modality: str
    at_s: float
    for_s: float | None  # restart / resume after this long; None = never

    @classmethod
    def parse(cls, action: str, text: str) -> Fault:
        """'audio@3' or 'audio@3+2' (for 2 s)."""
        try:
            modality, when = text.split("@")
            at, _, length = when.partition("+")
            fault = cls(
                action=action,
                modality=modality,
                at_s=float(at),
                for_s=float(length) if length else None,
            )
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected MODALITY@SECONDS[+SECONDS]"
            ) from None
        if modality not in MODALITIES:
            raise argparse.ArgumentTypeError(f"{modality!r}: choose one of {', '.join(MODALITIES)}")
        return fault


def command(name: str) -> list[str]:
    """An installed entry point next to this interpreter, else `python -m module`."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found:
        return [found]
    module = "sensors.cli" if name == "edge-sensor" else f"edge.{name.removeprefix('edge-')}"
    return [sys.executable, "-m", module]


class Processes:
    """The demo's children: started with logs in the out dir, stopped with a deadline."""

    def __init__(self, out_dir: Path, run_dir: Path) -> None:
        self.out_dir, self.run_dir = out_dir, run_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv[name] = argv
        with open(self.out_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=REPO_ROOT,
            )

    def restart(self, name: str) -> None:
        self.start(name, self.argv[name])

    def signal(self, name: str, signum: int) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)
            if signum == signal.SIGKILL:
                proc.wait(5)

    def stop(self, names: list[str], timeout_s: float = 5.0) -> dict[str, int | None]:
        for name in names:
            self.signal(name, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.signal(name, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name in names:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(5)
        return codes


def wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for READY=1 on the notify socket while the process is alive."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        sock.settimeout(0.1)
        try:
            if b"READY=1" in sock.recv(4096).split(b"\n"):
                return True
        except TimeoutError:
            continue
    return False


def format_line(est: dict[str, Any], t0_ns: int) -> str:
    t = (est["t_end_ns"] - t0_ns) / 1e9
    avail = " ".join(f"{m}={STATE_MARK.get(s, s):5}" for m, s in est["availability"].items())
    latency = "-" if est["latency_ms"] is None else f"{est['latency_ms']:.0f}ms"
    used = est["pattern"] or "none"
    label = f"{est['label']:8} {est['confidence']:.2f}"
    return f"t={t:6.1f}s  {label}  {avail}  used={used:16} latency={latency}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="default 20; with --media: the drive")
    parser.add_argument(
        "--media", help="an edge-make-drive folder: real audio/camera/transcript capture on it"
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.add_argument("--disable", action="append", default=[], choices=MODALITIES)
    parser.add_argument(
        "--kill",
        action="append",
        default=[],
        type=lambda s: Fault.parse("kill", s),
        metavar="M@S[+D]",
    )
    parser.add_argument(
        "--stall",
        action="append",
        default=[],
        type=lambda s: Fault.parse("stall", s),
        metavar="M@S[+D]",
    )
    parser.add_argument("--heartbeat-only", action="append", default=[], choices=MODALITIES)
    parser.add_argument("--record", help="also record everything to this MCAP file")
    parser.add_argument(
        "--record-video", action="store_true", help="record the camera's face crops too"
    )
    parser.add_argument("--out", help="output directory (default runs/demo-<time>)")
    parser.add_argument(
        "--model-dir", help="exported model (default models/live or the tiny test model)"
    )
    parser.add_argument(
        "--backend",
        choices=available_backends(),
        help="inference backend of the daemon (default: its config's)",
    )
    parser.add_argument("--daemon-config", help="TOML with a [daemon] table")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.record and Path(args.record).exists():  # edge-record never truncates a recording
        print(f"edge-demo: {args.record} exists; remove it or choose another --record path",
              file=sys.stderr)
        return 2
    media: MediaRunner | None = None
    out_dir = Path(args.out or REPO_ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="edge-demo-", dir="/tmp"))  # short ipc paths
    resolved = {**vars(args), "run_dir": str(run_dir), "out": str(out_dir)}
    resolved["kill"] = [dataclasses.asdict(f) for f in args.kill]
    resolved["stall"] = [dataclasses.asdict(f) for f in args.stall]
    edge_config.write_resolved(resolved, out_dir, "demo")
    procs = Processes(out_dir, run_dir)
    ctx = zmq.Context()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(run_dir / "notify.sock"))
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"estimate")
    names: list[str] = []
    try:
        daemon_argv = command("edge-daemon") + [
            "--run-dir",
            str(run_dir),
            "--out-dir",
            str(out_dir),
        ]
        if args.model_dir:
            daemon_argv += ["--model-dir", args.model_dir]
        if args.backend:
            daemon_argv += ["--backend", args.backend]
        if args.daemon_config:
            daemon_argv += ["--config", args.daemon_config]
        procs.start("daemon", daemon_argv, env={"NOTIFY_SOCKET": str(run_dir / "notify.sock")})
        names.append("daemon")
        if not wait_ready(notify, procs.procs["daemon"], 120):
            print(
                f"edge-demo: the daemon did not start; see {out_dir / 'daemon.log'}",
                file=sys.stderr,
            )
            return 1
        sub.connect(f"ipc://{run_dir}/telemetry.ipc")
        connects = ["--connect", f"ipc://{run_dir}/ingress.ipc"]
        if args.record:
            record_argv = command("edge-record") + ["--out", args.record, "--run-dir", str(run_dir)]
            record_argv += ["--video-frames"] if args.record_video else []
            procs.start("record", record_argv, env={"NOTIFY_SOCKET": str(run_dir / "notify.sock")})
            names.insert(0, "record")
            if not wait_ready(notify, procs.procs["record"], 30):
                print(
                    f"edge-demo: the recorder did not start; see {out_dir / 'record.log'}",
                    file=sys.stderr,
                )
                return 1
            connects += ["--connect", f"ipc://{run_dir}/record.ipc"]
        if args.media:  # real capture processes on a drive, its faults on its timeline
            media = MediaRunner(
                Path(args.media),
                run_dir / "media",
                connects[1::2],
                extra_args=("--await-subscribers", str(len(connects) // 2)),
                disabled=tuple(args.disable),
                log_dir=out_dir,
            )
            args.seconds = args.seconds or media.start_delay_s + media.duration_s + 1.5
            media.start()
        for i, modality in enumerate(() if media else MODALITIES):
            sensor_argv = command("edge-sensor") + [
                f"synthetic-{modality}",
                *connects,
                "--seed",
                str(args.seed + i),
            ]
            sensor_argv += [
                "--await-subscribers",
                str(len(connects) // 2),
                "--out-dir",
                str(out_dir),
            ]
            if modality in args.disable:
                sensor_argv.append("--disabled")
            if modality in args.heartbeat_only:
                sensor_argv.append("--heartbeat-only")
            procs.start(modality, sensor_argv)
            names.insert(0, modality)
        return _serve(args, procs, sub, out_dir, media)
    except KeyboardInterrupt:
        return 130
    finally:
        if media is not None:
            media.stop()
        procs.stop(names)
        sub.close(linger=0)
        ctx.term()
        notify.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _serve(
    args: argparse.Namespace,
    procs: Processes,
    sub: zmq.Socket[Any],
    out_dir: Path,
    media: MediaRunner | None = None,
) -> int:
    """Print estimates and play the faults until --seconds have passed."""
    args.seconds = args.seconds or 20.0
    t0 = time.monotonic()
    t0_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    actions: list[tuple[float, str, str]] = []
    for fault in [*args.kill, *args.stall]:
        start, end = ("kill", "restart") if fault.action == "kill" else ("stop", "cont")
        actions.append((fault.at_s, start, fault.modality))
        if fault.for_s is not None:
            actions.append((fault.at_s + fault.for_s, end, fault.modality))
    actions.sort()
    applied = []
    n = 0
    with open(out_dir / "estimates.jsonl", "w") as jsonl:
        if media is not None:  # drive time 0 on CLOCK_MONOTONIC, for edge-score
            jsonl.write(json.dumps({"media_t0_ns": media.t0_ns}) + "\n")
        while (elapsed := time.monotonic() - t0) < args.seconds:
            if media is not None:
                media.tick()
            while actions and actions[0][0] <= elapsed:
                at, action, modality = actions.pop(0)
                if action == "kill":
                    procs.signal(modality, signal.SIGKILL)
                elif action == "restart":
                    procs.restart(modality)
                elif action == "stop":
                    procs.signal(modality, signal.SIGSTOP)
                elif action == "cont":
                    procs.signal(modality, signal.SIGCONT)
                applied.append(
                    {
                        "at_s": at,
                        "applied_s": round(elapsed, 3),
                        "applied_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                        "action": action,
                        "modality": modality,
                    }
                )
                print(f"# {elapsed:6.2f}s {action} {modality}", file=sys.stderr, flush=True)
            if not sub.poll(50):
                continue
            with contextlib.suppress(wire.WireError):
                est = wire.decode(sub.recv_multipart(copy=False)).json()
                jsonl.write(json.dumps(est) + "\n")
                n += 1
                print(json.dumps(est) if args.json else format_line(est, t0_ns), flush=True)
    (out_dir / "faults.json").write_text(json.dumps(applied, indent=1))
    if procs.procs["daemon"].poll() is not None:
        print("edge-demo: the daemon exited during the run", file=sys.stderr)
        return 1
    print(f"# {n} estimates in {args.seconds:.0f} s; outputs in {out_dir}", file=sys.stderr)
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
