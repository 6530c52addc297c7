"""Shared helpers for the dashboard tests: a real `edge-dash` process and estimate builders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# `EDGE_DASH_SCREENSHOT=docs/dashboard.png pytest tests/test_dash_browser.py` refreshes the
# README's screenshot; otherwise it goes to the test's tmp dir.
SCREENSHOT_ENV = "EDGE_DASH_SCREENSHOT"


# Fixtures under other Python names, so test modules can import them and still name their
# parameters `browser` / `page`.
@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (.ci/setup installs Debian's chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(name="page")
def page_fixture(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    assert not errors, f"the page logged errors: {errors}"


LABELS = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")
HOP_NS = 500_000_000
WINDOW_NS = 2_000_000_000


def make_estimate(
    i: int,
    *,
    t0_ns: int = 10_000_000_000,
    availability: Mapping[str, str] | None = None,
    latency_ms: float = 3.0,
    **extra: Any,
) -> dict[str, Any]:
    """A contract-shaped estimate for hop `i` (label cycles so the page visibly changes)."""
    availability = dict(availability or {"audio": "ok", "video": "ok", "text": "ok"})
    used = [m for m in ("audio", "video", "text") if availability.get(m) == "ok"]
    top = LABELS[i % len(LABELS)]
    probs = {lab: (0.58 if lab == top else 0.07) for lab in LABELS}
    t_end = t0_ns + i * HOP_NS
    est: dict[str, Any] = {
        "t_start_ns": t_end - WINDOW_NS,
        "t_end_ns": t_end,
        "probs": probs,
        "label": top,
        "confidence": probs[top],
        "availability": availability,
        "used": used,
        "router": {m: {"audio": 0.2, "video": 0.3, "text": 0.5} for m in used},
        "latency_ms": latency_ms,
    }
    est.update(extra)
    return est


def encode(estimate: Mapping[str, Any], seq: int = 0) -> list[Any]:
    """The estimate as the daemon puts it on the wire (through `edge.wire`)."""
    from edge import wire

    t_end = int(estimate["t_end_ns"])
    return wire.json_message(kind="estimate", seq=seq, t_mono_ns=t_end, t_wall_ns=t_end,
                             doc=dict(estimate))


@contextmanager
def dash_process(
    *args: str, timeout_s: float = 15.0
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `edge-dash ARGS --port 0`; yield (process, base URL); stop it with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.dash.server", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://[\d.]+:\d+)/", line)
        if match is None:
            proc.kill()
            _, err = proc.communicate(timeout=timeout_s)
            raise AssertionError(f"edge-dash did not start: {line!r} {err}")
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def get_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/stats", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll `predicate()` until truthy; return its value or raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def ipc_endpoint(tmp_path: Path, name: str = "telemetry") -> str:
    return f"ipc://{tmp_path / name}"


def write_view_recording(path: Path, n_estimates: int, *, dead_audio: range = range(0)) -> None:
    """An MCAP drive with the JSON view channels of `edge.schemas`: estimates, sensor headers
    (audio heartbeats with a sequence gap, so loss shows) and one malformed estimate."""
    from mcap.writer import Writer

    from edge import schemas

    with path.open("wb") as stream:
        writer = Writer(stream, chunk_size=4096)  # many chunks, like a long drive
        writer.start(profile="", library="emotion-edge tests")
        views = schemas.ViewChannels(writer)  # what edge-record uses

        def write(header: dict[str, Any], payload: bytes, t_ns: int) -> None:
            views.write(header, payload, log_time=t_ns, publish_time=t_ns)

        seq = 0
        for i in range(n_estimates):
            est = make_estimate(i, availability={
                "audio": "dead" if i in dead_audio else "ok", "video": "ok", "text": "ok"})
            for k in range(5):  # heartbeats every 100 ms; seq 7 is lost
                t_hb = est["t_end_ns"] - HOP_NS + (k + 1) * 100_000_000
                if i in dead_audio:
                    continue
                header = {"v": 1, "sensor": "mic0", "modality": "audio", "kind": "heartbeat",
                          "seq": seq, "t_mono_ns": t_hb, "t_wall_ns": t_hb, "dtype": "uint8",
                          "shape": [0], "encoding": "raw", "state": "ok"}
                if seq != 7:
                    write(header, b"", t_hb)
                seq += 1
            write({"kind": "estimate", "encoding": "json"}, json.dumps(est).encode(),
                  est["t_end_ns"])
        write({"kind": "estimate", "encoding": "json"}, b'{"label": 3}', est["t_end_ns"] + 1)
        writer.finish()
