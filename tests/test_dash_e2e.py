"""The dashboard on the real runtime: edge-daemon (real exported model on onnxruntime), one
`edge-sensor` process per modality, edge-dash, and the page in headless Chromium. A sensor
process is SIGKILLed: the page shows it `dead` within the watchdog budget, and `ok` again
when it is restarted. A recorded demo drive opens in `edge-dash FILE` and its view channels
validate against the schemas they carry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcap.reader import make_reader

from edge.dash.sources import load_recording
from tests.dash_support import (  # noqa: F401 - *_fixture: fixtures used by name
    SCREENSHOT_ENV,
    browser_fixture,
    dash_process,
    get_stats,
    page_fixture,
    wait_for,
)
from tests.helpers import MODEL_DIR, short_tmp, spawn, stop

# Issue 3's budget for the estimate stream: dead within miss_limit x heartbeat_ms + one hop
# (2 x 100 + 500 ms) of the kill; plus the window's lag budget (100 ms) and the way to the
# page (dashboard, WebSocket, next animation frame) on a busy 2-core machine.
DEAD_BUDGET_S = (2 * 100 + 500 + 100) / 1000
DELIVERY_SLACK_S = 0.4


@pytest.fixture
def runtime() -> Iterator[dict[str, Any]]:
    """A running daemon and three synthetic sensor processes in a fresh run directory."""
    with short_tmp() as run:
        procs: dict[str, Any] = {
            "daemon": spawn("edge-daemon", "--run-dir", str(run), "--model-dir", str(MODEL_DIR),
                            log=run / "daemon.log"),
        }
        for modality in ("audio", "video", "text"):
            procs[modality] = spawn("edge-sensor", f"synthetic-{modality}", "--run-dir", str(run))
        try:
            yield {"run": run, "procs": procs}
        finally:
            for proc in procs.values():
                stop(proc)


def _chip(browser_page: Any, modality: str) -> str:
    return str(browser_page.get_attribute(f"#avail-{modality}", "data-state"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_sensor_shows_dead_within_budget_and_recovers(
    runtime: dict[str, Any], page: Any, tmp_path: Path
) -> None:
    run, procs = runtime["run"], runtime["procs"]
    with dash_process("--telemetry", f"ipc://{run}/telemetry.ipc") as (_, base):
        page.goto(f"{base}/")
        for modality in ("audio", "video", "text"):  # model loaded, every sensor up
            page.wait_for_selector(f"#avail-{modality}[data-state=ok]", timeout=40_000)
        page.wait_for_selector("#router-audio", timeout=5_000)
        time.sleep(2.0)  # some history before the fault

        os.kill(procs["audio"].pid, signal.SIGKILL)
        killed = time.monotonic()
        procs["audio"].wait(5)
        page.wait_for_selector("#avail-audio[data-state=dead]", timeout=10_000)
        shown_dead_s = time.monotonic() - killed
        print(f"killed sensor shown dead on the page after {shown_dead_s * 1000:.0f} ms")
        assert shown_dead_s <= DEAD_BUDGET_S + DELIVERY_SLACK_S
        # the others carry on; the link table says what happened
        assert _chip(page, "video") == "ok" and "audio" not in str(page.text_content("#used"))
        page.wait_for_selector("#link-audio td:text('dead')", timeout=5_000)

        time.sleep(2.0)  # a visible outage in the timeline
        procs["audio"] = spawn("edge-sensor", "synthetic-audio", "--run-dir", str(run))
        restarted = time.monotonic()
        page.wait_for_selector("#avail-audio[data-state=ok]", timeout=10_000)
        print(f"restarted sensor shown ok after {(time.monotonic() - restarted) * 1000:.0f} ms")
        assert "audio" in str(page.text_content("#used"))
        stats = get_stats(base)
        assert stats["malformed"] == 0, stats["last_error"]
        time.sleep(1.5)
        page.select_option("#span", "15")  # a short drive: fill the charts
        shot = Path(os.environ.get(SCREENSHOT_ENV, tmp_path / "dashboard.png"))
        page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1280, "height": 740})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recorded_demo_drive_opens_in_dash_and_carries_schemas(tmp_path: Path) -> None:
    drive = tmp_path / "drive.mcap"
    result = subprocess.run(
        [sys.executable, "-m", "edge.demo", "--seconds", "6", "--kill", "audio@2+2",
         "--record", str(drive), "--out", str(tmp_path / "demo"), "--model-dir", str(MODEL_DIR),
         "--json"],
        capture_output=True, timeout=100,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    live = [json.loads(line) for line in result.stdout.decode().splitlines()]

    rec = load_recording(drive, max_items=10_000, max_bytes=4 << 20)
    assert rec.malformed == 0, rec.last_error
    recorded_ends = [e["t_end_ns"] for e in rec.estimates]
    # the recorder joins the telemetry socket a moment after the first estimates (PUB/SUB
    # slow joiner); from then on it holds what the demo printed
    assert set(recorded_ends) <= {e["t_end_ns"] for e in live}
    assert len(recorded_ends) >= len(live) - 4
    dead = [e for e in rec.estimates if e["availability"]["audio"] == "dead"]
    assert dead, "the killed microphone never showed as dead in the recording"
    # heartbeat age measured from the recorded envelopes: silent for at least the dead limit
    assert all(e["links"]["audio"]["heartbeat_age_ms"] is None
               or e["links"]["audio"]["heartbeat_age_ms"] >= 200 for e in dead)
    ok = [e for e in rec.estimates if e["availability"]["audio"] == "ok"]
    assert ok and all(e["links"]["audio"]["heartbeat_age_ms"] < 200 for e in ok)

    # Every JSON view message validates against the schema stored in the file itself.
    topics: set[str] = set()
    with drive.open("rb") as stream:
        for schema, channel, message in make_reader(stream).iter_messages():
            if channel.message_encoding != "json":
                continue
            assert schema is not None and schema.encoding == "jsonschema"
            jsonschema.validate(json.loads(message.data), json.loads(schema.data))
            topics.add(channel.topic)
    assert {"/estimate", "/status", "/links/audio/audio", "/links/video/video"} <= topics

    with dash_process(str(drive)) as (_, base):
        stats = get_stats(base)
        assert stats["mode"] == "file" and stats["received"] == len(rec.estimates)
        wait_for(lambda: get_stats(base)["history_len"] == len(rec.estimates), timeout_s=5)
