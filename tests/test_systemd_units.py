"""Unit files: `systemd-analyze verify` is silent on them; they say what the daemon needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path(ANALYZE).exists(), reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_silent_on_our_units(tmp_path: Path) -> None:
    # The shipped units point at /opt/emotion-edge; verify checks that ExecStart exists, so
    # point them at this checkout's installed entry points.
    bin_dir = Path(sys.executable).parent
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/opt/emotion-edge/.venv/bin", str(bin_dir))
        (tmp_path / unit.name).write_text(text)
    names = [tmp_path / "edge-daemon.service", tmp_path / "edge-sensor@audio.service"]
    proc = subprocess.run(
        [ANALYZE, "verify", *map(str, names)], capture_output=True, text=True, timeout=50
    )
    output = (proc.stdout + proc.stderr).strip()
    ours = [line for line in output.splitlines() if "edge-" in line or str(tmp_path) in line]
    assert proc.returncode == 0 and not ours, output


def test_daemon_unit_is_notify_watchdog_restart_and_hardened() -> None:
    unit = settings(UNITS / "edge-daemon.service")
    assert unit["Type"] == ["notify"] and unit["WatchdogSec"] and unit["Restart"] == ["on-failure"]
    for hardening in (
        "NoNewPrivileges",
        "ProtectSystem",
        "PrivateNetwork",
        "PrivateDevices",
        "ProtectHome",
    ):
        assert unit[hardening][0] in ("yes", "strict"), hardening
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX"]  # ipc only
    assert unit["RuntimeDirectory"] == ["emotion-edge"] and unit["RuntimeDirectoryPreserve"] == [
        "yes"
    ]
    assert "edge-daemon" in unit["ExecStart"][0]


def test_sensor_template_restarts_and_shares_the_runtime_directory() -> None:
    unit = settings(UNITS / "edge-sensor@.service")
    assert unit["Restart"] == ["always"] and "%i" in unit["ExecStart"][0]
    assert unit["RuntimeDirectory"] == ["emotion-edge"] and unit["RuntimeDirectoryPreserve"] == [
        "yes"
    ]
    assert unit["NoNewPrivileges"] == ["yes"]
