"""Transcript sensor: the voice assistant's utterances, from a socket or a JSONL file.

Each utterance is one JSON object per line (utf-8, newline-terminated):
    {"text": "turn it up", "t_start_ns": ..., "t_end_ns": ...}        socket feed
    {"text": "turn it up", "start_s": 12.4, "end_s": 13.9}             JSONL file (drive time)
Socket stamps are CLOCK_MONOTONIC ns of this device (the assistant runs on it); a line without
stamps is stamped on arrival. A file's seconds are relative to the drive's start
(`replay_t0_ns`, default: when the sensor connects), and an utterance is released at its end.

A sample is stamped with the utterance's *end*: that is when its text exists, so a window
never holds words that were not yet spoken. The start stays in `last_utterance`.

While nobody speaks, `read` returns an `empty` sample every `idle_s`, so the watchdog sees an
alive sensor with nothing to say rather than a stale one. Bad lines (not JSON, no text, too
long) are counted in `counters["bad_lines"]` and skipped.

Socket: the sensor listens on `unix:/path/to.sock` or `tcp:HOST:PORT` and takes one assistant
connection at a time (a new connection replaces the old one: the assistant restarted).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sensors.base import Sample, Sensor, SensorError
from sensors.privacy import PrivacySwitch

MAX_LINE_BYTES = 8192  # a transcript line longer than this is not an utterance


def _mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


@dataclass(frozen=True, kw_only=True)
class TranscriptConfig:
    """`source`: `unix:PATH`, `tcp:HOST:PORT` (listen) or a path to a JSONL file."""

    source: str
    idle_s: float = 0.5  # how often an `empty` sample says "alive, nobody speaking"
    replay_t0_ns: int | None = None  # files: drive start on CLOCK_MONOTONIC
    privacy_file: str | None = None  # while it exists utterances are discarded (disabled)

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("transcript source is empty")
        if self.idle_s <= 0:
            raise ValueError("idle_s must be > 0")


@dataclass(frozen=True)
class Utterance:
    text: str
    t_start_ns: int
    t_end_ns: int


def _text_sample(u: Utterance) -> Sample:
    data = np.frombuffer(u.text.encode("utf-8"), dtype=np.uint8).copy()
    return Sample(data=data, t_mono_ns=u.t_end_ns, t_wall_ns=time.time_ns(), encoding="utf-8")


class TranscriptSensor(Sensor):
    """Utterances as utf-8 samples; `empty` samples while nobody speaks."""

    modality = "text"

    def __init__(self, cfg: TranscriptConfig) -> None:
        self.cfg = cfg
        self.counters = {"utterances": 0, "bad_lines": 0, "connections": 0, "skipped": 0,
                         "discarded_private": 0}
        self.last_utterance: Utterance | None = None
        self._last_sample_ns = 0
        # socket mode
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._sel: selectors.DefaultSelector | None = None
        self._buf = b""
        self._unix_path: str | None = None
        # file mode
        self._pending: list[Utterance] = []
        self._t0_ns = 0
        self._privacy = PrivacySwitch(cfg.privacy_file, round(cfg.idle_s * 1000))
        self.finished = False

    # -- Sensor interface -------------------------------------------------------------
    def connect(self) -> None:
        src = self.cfg.source
        self._last_sample_ns = _mono_ns()
        if src.startswith(("unix:", "tcp:")):
            self._listen(src)
        else:
            self._load_file(Path(src))

    def close(self) -> None:
        for s in (self._conn, self._listener):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self._conn = self._listener = None
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)
            self._unix_path = None

    def read(self, timeout_s: float) -> Sample | None:
        deadline = _mono_ns() + int(max(0.0, timeout_s) * 1e9)
        private = self._privacy.on()
        read_by = _mono_ns() if private else deadline  # private: drain, don't wait for words
        u = self._read_socket(read_by) if self._sel is not None else self._read_file(read_by)
        if private:  # what was said is read and dropped, never published
            if u is not None:
                self.counters["discarded_private"] += 1
            return self._privacy.disabled_sample(deadline, np.zeros(0, np.uint8))
        if u is not None:
            self.counters["utterances"] += 1
            self.last_utterance = u
            self._last_sample_ns = _mono_ns()
            return _text_sample(u)
        now = _mono_ns()
        if now - self._last_sample_ns >= self.cfg.idle_s * 1e9:
            self._last_sample_ns = now
            return Sample(data=np.zeros(0, np.uint8), t_mono_ns=now, t_wall_ns=time.time_ns(),
                          state="empty", encoding="utf-8")
        return None

    @property
    def address(self) -> str:
        """Where the assistant should connect (tcp port resolved when 0 was asked for)."""
        if self._listener is None:
            raise SensorError("not listening")
        if self._unix_path is not None:
            return f"unix:{self._unix_path}"
        host, port = self._listener.getsockname()[:2]
        return f"tcp:{host}:{port}"

    # -- parsing ----------------------------------------------------------------------
    def _parse(self, line: bytes, *, file_mode: bool) -> Utterance | None:
        try:
            obj = json.loads(line)
            text = obj["text"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError("no text")
            if file_mode:
                t0 = self._t0_ns
                start = t0 + round(float(obj["start_s"]) * 1e9)
                end = t0 + round(float(obj["end_s"]) * 1e9)
            else:
                now = _mono_ns()
                end = int(obj.get("t_end_ns", now))
                start = int(obj.get("t_start_ns", end))
            if end < start:
                raise ValueError("utterance ends before it starts")
        except (ValueError, KeyError, TypeError):
            self.counters["bad_lines"] += 1
            return None
        return Utterance(text=text.strip(), t_start_ns=start, t_end_ns=end)

    # -- file mode --------------------------------------------------------------------
    def _load_file(self, path: Path) -> None:
        if not path.is_file():
            raise SensorError(f"transcript file {path} not found")
        self._t0_ns = self.cfg.replay_t0_ns if self.cfg.replay_t0_ns is not None else _mono_ns()
        with path.open("rb") as f:
            lines = [line for line in f if line.strip()]
        parsed = [self._parse(line[:MAX_LINE_BYTES], file_mode=True) for line in lines]
        utterances = sorted((u for u in parsed if u is not None), key=lambda u: u.t_end_ns)
        now = _mono_ns()
        # (Re)started late: what was said while the sensor was down is gone, as it would be live.
        self._pending = [u for u in utterances if u.t_end_ns >= now]
        self.counters["skipped"] += len(utterances) - len(self._pending)

    def _read_file(self, deadline_ns: int) -> Utterance | None:
        while True:
            now = _mono_ns()
            if self._pending and self._pending[0].t_end_ns <= now:
                return self._pending.pop(0)
            if not self._pending:
                self.finished = True
            due = self._pending[0].t_end_ns if self._pending else deadline_ns
            wait_ns = min(due, deadline_ns) - now
            if wait_ns <= 0:
                return None
            time.sleep(wait_ns / 1e9)

    # -- socket mode ------------------------------------------------------------------
    def _listen(self, src: str) -> None:
        kind, _, addr = src.partition(":")
        sock: socket.socket | None = None
        try:
            if kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(addr)
                sock.bind(addr)
                self._unix_path = addr
            else:
                host, _, port = addr.rpartition(":")
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host or "127.0.0.1", int(port)))
            sock.listen(1)
            sock.setblocking(False)
        except (OSError, ValueError) as e:
            if sock is not None:
                sock.close()
            raise SensorError(f"cannot listen on {src!r}: {e}") from e
        self._listener = sock
        self._sel = selectors.DefaultSelector()
        self._sel.register(sock, selectors.EVENT_READ)

    def _read_socket(self, deadline_ns: int) -> Utterance | None:
        assert self._sel is not None and self._listener is not None
        while True:
            if (u := self._next_buffered_line()) is not None:
                return u
            wait = max(0.0, (deadline_ns - _mono_ns()) / 1e9)
            events = self._sel.select(timeout=wait)  # polled at least once, even when due
            if not events and wait <= 0:
                return None
            for key, _ in events:
                if key.fileobj is self._listener:
                    self._accept()
                elif self._conn is not None:
                    try:
                        chunk = self._conn.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk:  # the assistant went away; wait for it to reconnect
                        self._drop_conn()
                    else:
                        self._buf += chunk

    def _next_buffered_line(self) -> Utterance | None:
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip() and (u := self._parse(line, file_mode=False)) is not None:
                return u
        if len(self._buf) > MAX_LINE_BYTES:  # no newline in sight: garbage, not a line
            self.counters["bad_lines"] += 1
            self._buf = b""
        return None

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._drop_conn()
        conn.setblocking(False)
        self._conn = conn
        self._sel.register(conn, selectors.EVENT_READ)
        self.counters["connections"] += 1

    def _drop_conn(self) -> None:
        if self._conn is not None and self._sel is not None:
            self._sel.unregister(self._conn)
            self._conn.close()
        self._conn = None
        self._buf = b""
