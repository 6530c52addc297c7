"""The page in a real headless Chromium (Debian's `chromium`, driven by playwright; no browser
is ever downloaded). A real ZeroMQ publisher feeds a real `edge-dash` process."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.dash_support import (  # noqa: F401 - *_fixture: fixtures used by name
    SCREENSHOT_ENV,
    browser_fixture,
    dash_process,
    encode,
    get_stats,
    ipc_endpoint,
    make_estimate,
    page_fixture,
    wait_for,
    write_view_recording,
)


class Feed:
    """A publisher thread sending one estimate per `period_s`, availability switchable."""

    def __init__(self, endpoint: str, period_s: float = 0.05) -> None:
        self.availability = {"audio": "ok", "video": "ok", "text": "ok"}
        self.sent = 0
        self.silent = threading.Event()  # set: publish nothing, like a daemon that died
        self._period_s = period_s
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.silent.is_set():
                time.sleep(self._period_s)
                continue
            links = {
                m: {"modality": m, "heartbeat_age_ms": 40.0 if a == "ok" else 900.0,
                    "lost": 0, "frame_rate_hz": 25.0 if a == "ok" else 0.0}
                for m, a in self.availability.items()
            }
            est = make_estimate(self.sent, availability=dict(self.availability),
                                latency_ms=2.0 + self.sent % 5, links=links)
            if not est["used"]:  # like the daemon: the prior, no frames, so no latency
                est["latency_ms"] = None
            self._pub.send_multipart(encode(est))
            self.sent += 1
            time.sleep(self._period_s)

    def __enter__(self) -> Feed:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pub.close(linger=0)
        self._ctx.term()


def _avail(page: Any, modality: str) -> str:
    return str(page.get_attribute(f"#avail-{modality}", "data-state"))


@pytest.mark.timeout(90)
def test_page_updates_shows_dead_and_recovery_pause_and_scrub(page: Any, tmp_path: Path) -> None:
    endpoint = ipc_endpoint(tmp_path)
    with Feed(endpoint) as feed, dash_process("--telemetry", endpoint) as (_, base):
        wait_for(lambda: get_stats(base)["received"] > 0, timeout_s=10)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{base}/")
        page.wait_for_selector("#conn[data-state=open]", timeout=10_000)
        page.wait_for_selector("#avail-audio[data-state=ok]", timeout=10_000)

        # Updates as estimates arrive: the label cycles and the history grows.
        first = page.text_content("#cursor-time")
        seen = {page.text_content("#current-label")}
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            seen.add(page.text_content("#current-label"))
        assert len(seen) >= 3, f"the label never changed: {seen}"
        assert page.text_content("#cursor-time") != first

        # A sensor the daemon reports dead shows as dead; it recovers when the sensor returns.
        feed.availability["audio"] = "dead"
        page.wait_for_selector("#avail-audio[data-state=dead]", timeout=5_000)
        assert "audio" not in str(page.text_content("#used"))
        assert page.locator("#link-audio").count() == 1
        feed.availability["audio"] = "ok"
        page.wait_for_selector("#avail-audio[data-state=ok]", timeout=5_000)
        assert _avail(page, "video") == "ok"

        # Pause freezes the view while estimates keep arriving; scrubbing moves the cursor.
        page.click("#pause")
        page.wait_for_selector("#mode.paused", timeout=5_000)
        paused_at = page.get_attribute("#current-label", "data-t-end")
        received_when_paused = get_stats(base)["received"]
        wait_for(lambda: get_stats(base)["received"] > received_when_paused + 10, timeout_s=5)
        time.sleep(0.2)
        assert page.get_attribute("#current-label", "data-t-end") == paused_at
        assert page.text_content("#mode") == "paused"
        page.fill("#scrub", "0")  # range inputs accept fill(); fires `input`
        wait_for(lambda: int(page.get_attribute("#current-label", "data-t-end")) < int(
            str(paused_at)), timeout_s=5)
        assert str(page.text_content("#cursor-time")).startswith("-")
        page.click("#live")
        wait_for(lambda: int(page.get_attribute("#current-label", "data-t-end")) > int(
            str(paused_at)), timeout_s=5)
        assert page.text_content("#mode") == "live"

        # Every sensor gone: the daemon still publishes (the prior); nothing was used.
        feed.availability.update(audio="dead", video="dead", text="disabled")
        page.wait_for_selector("#avail-text[data-state=disabled]", timeout=5_000)
        page.wait_for_selector("#router:text('no modality used')", timeout=5_000)
        assert str(page.text_content("#latency")).startswith("—")
        assert page.text_content("#used") == "none (prior)"
        feed.availability.update(audio="ok", video="ok", text="ok")
        page.wait_for_selector("#avail-text[data-state=ok]", timeout=5_000)

        # When estimates stop coming (daemon down), the page says so instead of freezing.
        page.wait_for_selector("#feed[data-state=flowing]", timeout=5_000)
        feed.silent.set()
        page.wait_for_selector("#feed[data-state=silent]", timeout=5_000)
        feed.silent.clear()
        page.wait_for_selector("#feed[data-state=flowing]", timeout=5_000)

        # Kill video for the screenshot so every colour of the timeline story is visible.
        feed.availability.update(video="empty", text="stale")
        page.wait_for_selector("#avail-video[data-state=empty]", timeout=5_000)
        time.sleep(1.0)
        # Offline: the page fetched nothing from anywhere but the dashboard itself.
        assert requested and all(url.startswith(f"{base}/") for url in requested), requested
        shot = Path(os.environ.get(SCREENSHOT_ENV, tmp_path / "dashboard.png"))
        page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1280, "height": 740})
        assert shot.stat().st_size > 10_000


@pytest.mark.timeout(60)
def test_recorded_drive_opens_paused_and_scrubs(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "drive.mcap"
    write_view_recording(path, 40, dead_audio=range(10, 20))
    with dash_process(str(path)) as (_, base):
        page.goto(f"{base}/")
        page.wait_for_selector("#mode:text('recording')", timeout=10_000)
        wait_for(lambda: page.get_attribute("#current-label", "data-t-end")
                 == str(make_estimate(39)["t_end_ns"]), timeout_s=5)
        page.fill("#scrub", "12")
        page.wait_for_selector("#avail-audio[data-state=dead]", timeout=5_000)
        assert page.get_attribute("#current-label", "data-t-end") == str(
            make_estimate(12)["t_end_ns"])
        assert page.text_content("#current-label") == make_estimate(12)["label"]
        # Link health derived from the recorded heartbeats: audio silent for 3 hops here.
        row = str(page.text_content("#link-audio"))
        assert "1500" in row, row
        page.fill("#scrub", "25")
        page.wait_for_selector("#avail-audio[data-state=ok]", timeout=5_000)
