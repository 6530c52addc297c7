"""Security: 0700 runtime dir, CurveZMQ on tcp links (an unauthenticated peer is refused),
no pickle anywhere, hardened units (systemd-analyze security exposure)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge import keys, wire
from edge.clock import monotonic_ns
from edge.config import ConfigError, DaemonConfig, ensure_private_dir
from tests.faults.support import daemon_toml
from tests.helpers import MODEL_DIR, REPO, short_tmp, spawn, stop

ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- runtime dir ----------------------------------------------------------------------------
def test_runtime_dir_is_created_0700_tightened_and_refused_when_not_ours(tmp_path: Path) -> None:
    fresh = ensure_private_dir(tmp_path / "run" / "emotion-edge")
    assert mode(fresh) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert mode(ensure_private_dir(loose)) == 0o700
    squatted = tmp_path / "squatted"
    squatted.mkdir()
    if os.getuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(squatted, 65534, 65534)  # e.g. /tmp/emotion-edge-0 pre-created by nobody
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        ensure_private_dir(squatted)


# -- keys -----------------------------------------------------------------------------------
def test_edge_keys_writes_a_private_key_dir(tmp_path: Path) -> None:
    key_dir = tmp_path / "curve"
    proc = subprocess.run(
        [*entry("edge-keys"), "--dir", str(key_dir), "--client", "client", "--client", "dash"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert mode(key_dir) == 0o700 and mode(key_dir / keys.AUTHORIZED) == 0o700
    files = [p for p in key_dir.rglob("*") if p.is_file()]
    assert len(files) == 3 * 2 + 2 and all(mode(p) == 0o600 for p in files)
    public, secret = keys.load_keypair(key_dir, "dash")
    assert len(public) == len(secret) == 40
    assert {p.name for p in (key_dir / keys.AUTHORIZED).iterdir()} == {"client.key", "dash.key"}
    os.chmod(key_dir / "dash.key_secret", 0o644)
    with pytest.raises(keys.KeyDirError, match="accessible by others"):
        keys.load_keypair(key_dir, "dash")


def test_a_tcp_endpoint_without_keys_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="curve_dir"):
        DaemonConfig(ingress="tcp://127.0.0.1:5555")


def entry(name: str) -> list[str]:
    from tests.helpers import entry_point

    return entry_point(name)


def _frame_parts(modality: str, sensor: str, seq: int) -> list[Any]:
    header = wire.Header(
        sensor=sensor, modality=modality, kind="heartbeat", seq=seq,
        t_mono_ns=monotonic_ns(), t_wall_ns=0,
    )
    return wire.encode(header)


@pytest.mark.timeout(90)
def test_curve_on_tcp_admits_the_keyed_sensor_and_refuses_unauthenticated_peers(
    tmp_path: Path,
) -> None:
    key_dir = keys.generate(tmp_path / "curve", ("client", "telemetry"))
    ingress, telemetry = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    ctx = zmq.Context()
    socks: list[zmq.Socket[Any]] = []
    with short_tmp() as run:
        config = daemon_toml(run)
        daemon = spawn(
            "edge-daemon",
            *("--run-dir", str(run / "rt"), "--model-dir", str(MODEL_DIR), "--config", config),
            *("--ingress", ingress, "--telemetry", telemetry, "--curve-dir", str(key_dir)),
            log=tmp_path / "daemon.log",
        )
        sensor = spawn(
            "edge-sensor", "synthetic-audio", "--connect", ingress, "--curve-dir", str(key_dir),
            "--heartbeat-ms", "50", log=tmp_path / "sensor.log",
        )
        try:
            # authorized subscriber (its key is in authorized/) and a plain one
            good = ctx.socket(zmq.SUB)
            keys.secure_client(good, key_dir, "telemetry")
            plain_sub = ctx.socket(zmq.SUB)
            # a plain publisher (no CURVE) claims to be the camera; a CURVE publisher with a
            # key of its own (it knows the server's public key, but is not authorized) the text
            plain_pub = ctx.socket(zmq.PUB)
            rogue_pub = ctx.socket(zmq.PUB)
            rogue_pub.curve_publickey, rogue_pub.curve_secretkey = zmq.curve_keypair()
            rogue_pub.curve_serverkey = keys.server_public_key(key_dir)
            for s in (good, plain_sub, plain_pub, rogue_pub):
                s.setsockopt(zmq.LINGER, 0)
                socks.append(s)
            for s in (good, plain_sub):
                s.setsockopt(zmq.SUBSCRIBE, b"estimate")
                s.connect(telemetry)
            for s in (plain_pub, rogue_pub):
                s.connect(ingress)
            estimates: list[dict[str, Any]] = []
            plain_got = 0
            deadline = time.monotonic() + 45
            seq = 0
            while time.monotonic() < deadline and len(estimates) < 12:
                plain_pub.send_multipart(_frame_parts("video", "cam", seq))
                rogue_pub.send_multipart(_frame_parts("text", "va", seq))
                seq += 1
                if good.poll(50):
                    estimates.append(wire.decode(good.recv_multipart()).json())
                while plain_sub.poll(0):
                    plain_sub.recv_multipart()
                    plain_got += 1
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-2000:]
            assert len(estimates) >= 12, (tmp_path / "daemon.log").read_text()[-2000:]
            last = estimates[-4:]
            assert all(e["availability"]["audio"] == "ok" for e in last)  # keyed sensor in
            assert all(e["availability"]["video"] == "dead" for e in last)  # plain peer out
            assert all(e["availability"]["text"] == "dead" for e in last)  # unknown key out
            assert last[-1]["health"]["malformed"] == {}  # refused at the handshake
            assert plain_got == 0  # a plain subscriber learns nothing
        finally:
            for s in socks:
                s.close(linger=0)
            ctx.term()
            stop(sensor)
            stop(daemon)
        assert mode(run / "rt") == 0o700  # the run dir (resolved config) is private too
        assert daemon.returncode == 0


@pytest.mark.timeout(30)
def test_daemon_refuses_tcp_without_keys_and_sensor_refuses_world_readable_keys(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = subprocess.run(
        [*entry("edge-daemon"), "--ingress", f"tcp://127.0.0.1:{port}", "--model-dir",
         str(MODEL_DIR), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=25,
    )
    assert proc.returncode == 2 and "curve_dir" in proc.stderr
    key_dir = keys.generate(tmp_path / "curve")
    os.chmod(key_dir / "client.key_secret", 0o640)
    proc = subprocess.run(
        [*entry("edge-sensor"), "synthetic-text", "--connect", f"tcp://127.0.0.1:{port}",
         "--curve-dir", str(key_dir), "--seconds", "1"],
        capture_output=True, text=True, timeout=25,
    )
    assert proc.returncode == 2 and "accessible by others" in proc.stderr


# -- no pickle ------------------------------------------------------------------------------
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "dill", "cloudpickle", "shelve",
                  "joblib"}
SOURCE_DIRS = ("edge", "sensors", "engines", "calibration", "bench", "tests")


def pickle_uses(source: str) -> list[str]:
    """Where `source` imports a pickle-like module or loads with pickling allowed."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]
            found += [f"import {n}" for n in names if n.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            weights_only = kw.get("weights_only")
            if func.endswith("torch.load") or func == "load" and "weights_only" in kw:
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{func}( without weights_only=True")
            allow = kw.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{func}(allow_pickle=...)")
            if re.search(r"(read_pickle|to_pickle|pickle\.loads?|marshal\.loads?)$", func):
                found.append(func)
    return found


def test_the_checker_catches_what_it_bans() -> None:
    bad = (
        "import pickle\nfrom marshal import loads\nimport torch\n"
        "torch.load('m.pt')\ntorch.load('m.pt', weights_only=False)\n"
        "import numpy as np\nnp.load('x.npz', allow_pickle=True)\n"
    )
    assert len(pickle_uses(bad)) == 5
    assert pickle_uses("import torch\ntorch.load('m.pt', weights_only=True)\n") == []


def test_no_pickle_marshal_or_unsafe_torch_load_in_the_code_base() -> None:
    offenders = {}
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            uses = pickle_uses(path.read_text())
            if uses:
                offenders[str(path.relative_to(REPO))] = uses
    assert offenders == {}


# -- hardened units -------------------------------------------------------------------------
def exposure(unit: Path) -> float:
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert match, proc.stdout[-1000:] + proc.stderr[-1000:]
    return float(match.group(1))


@pytest.mark.timeout(120)
@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
def test_units_are_hardened_per_systemd_analyze_security(tmp_path: Path) -> None:
    daemon = REPO / "systemd" / "edge-daemon.service"
    sensor = tmp_path / "edge-sensor@audio.service"  # a template needs an instance name
    shutil.copy(REPO / "systemd" / "edge-sensor@.service", sensor)
    scores = {"daemon": exposure(daemon), "sensor": exposure(sensor)}
    assert scores["daemon"] <= MAX_EXPOSURE and scores["sensor"] <= MAX_EXPOSURE, scores


def test_units_keep_the_runtime_dir_private() -> None:
    for unit in ("edge-daemon.service", "edge-sensor@.service"):
        text = (REPO / "systemd" / unit).read_text()
        assert "RuntimeDirectoryMode=0700" in text and "UMask=0077" in text, unit

