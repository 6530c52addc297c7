"""Real PyAudio capture through the ALSA `file` plugin on real synthesised speech.

The speech is made by espeak-ng (then sox to 16 kHz / 48 kHz mono s16), so the test needs no
data set; the ALSA config points `cabinmic*` devices at those WAVs
(../shared/notes/alsa-file-capture.md). PortAudio reads the ALSA config when it initialises,
and the sensor makes a fresh PortAudio instance per (re)connect, so a device added to the
config later shows up on the next reconnect, as a re-plugged USB microphone does.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
    pytest.skip("espeak-ng and sox are needed (.ci/setup installs them)", allow_module_level=True)
if ctypes.util.find_library("portaudio") is None or ctypes.util.find_library("asound") is None:
    pytest.skip("portaudio / ALSA missing (.ci/setup installs them)", allow_module_level=True)
pyaudio = pytest.importorskip("pyaudio")

from sensors.audio import (  # noqa: E402
    RATE_HZ,
    AudioConfig,
    AudioSensor,
    StreamResampler,
    list_devices,
)
from sensors.base import Sample, SensorError  # noqa: E402
from sensors.capture import CaptureConfig, CaptureThread, SampleBuffer  # noqa: E402

SILENCE_S = 1.0
SENTENCE = "Why is this traffic so slow? I am going to be late again, and I hate it."


def _wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


@pytest.fixture(scope="module")
def alsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """silence + espeak speech + silence, as 16 kHz and 48 kHz WAVs behind ALSA file devices."""
    d = tmp_path_factory.mktemp("alsa")
    subprocess.run(["espeak-ng", "-w", str(d / "es.wav"), SENTENCE], check=True)
    subprocess.run(["sox", str(d / "es.wav"), "-r", "16000", "-c", "1", "-b", "16",
                    str(d / "speech16.wav"), "pad", str(SILENCE_S), "1.5"], check=True)
    subprocess.run(["sox", str(d / "speech16.wav"), "-r", "48000", str(d / "speech48.wav")],
                   check=True)
    # Microphones fed through FIFOs (raw s16 16 kHz), whose tests decide when audio comes and
    # when it stops. They are in the config from the start: a test that stalls a driver
    # abandons its PortAudio instance (it cannot be terminated under a stuck thread), so
    # PortAudio stays initialised and never enumerates devices added to the config later.
    # A writer holds each FIFO open for the module, so opening or probing it never blocks.
    fifos = {name: d / f"{name}.fifo" for name in ("hungmic", "quietmic")}
    writers = {}
    for name, fifo in fifos.items():
        os.mkfifo(fifo)
        writers[name] = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    conf = d / "asound.conf"
    conf.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        + "".join(
            f'pcm.{name} {{ type file slave.pcm "null" file "/dev/null" '
            f'infile "{infile}" format "{fmt}" }}\n'
            for name, infile, fmt in [
                ("cabinmic", d / "speech16.wav", "wav"),
                ("cabinmic48", d / "speech48.wav", "wav"),
                *((name, fifo, "raw") for name, fifo in fifos.items()),
            ]
        )
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("ALSA_CONFIG_PATH", str(conf))
    yield {"conf": conf, "speech16": d / "speech16.wav", "speech48": d / "speech48.wav",
           "writers": writers}
    mp.undo()
    for fd in writers.values():
        os.close(fd)


def _capture(sensor: AudioSensor, seconds: float) -> list[Sample]:
    out: list[Sample] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = sensor.read(timeout_s=0.5)
        if s is not None:
            out.append(s)
    return out


@pytest.mark.hardware
@pytest.mark.timeout(60)
def test_device_listing_and_lookup_by_name(alsa: dict[str, Path]) -> None:
    names = [d["name"] for d in list_devices()]
    assert "cabinmic" in names and "cabinmic48" in names
    with pytest.raises(SensorError, match="no input device"):
        AudioSensor(AudioConfig(device="no-such-mic")).connect()


@pytest.mark.hardware
@pytest.mark.timeout(60)
def test_speech_blocks_are_the_file_samples_and_silence_is_empty(alsa: dict[str, Path]) -> None:
    wav = _wav(alsa["speech16"])
    duration = len(wav) / RATE_HZ
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 300_000_000
    cfg = AudioConfig(device="cabinmic", replay_t0_ns=t0)
    with AudioSensor(cfg) as mic:
        assert isinstance(mic, AudioSensor)
        start = time.monotonic()
        samples = _capture(mic, duration + 0.3 - 0.2)
        elapsed = time.monotonic() - start
        assert mic.stream_rate == RATE_HZ and mic.vad_kind == "webrtc"
    assert elapsed > 0.9 * duration  # released in real time, not as fast as the file reads
    ok = [s for s in samples if s.state == "ok"]
    empty = [s for s in samples if s.state == "empty"]
    assert ok and empty
    for s in samples:
        assert s.data.dtype == np.int16
        assert len(s.data) == (1600 if s.state == "ok" else 0)
    # Each speech block holds exactly the file's samples at its stamp (the ALSA file plugin
    # hands over the 44-byte WAV header first: a constant 22-sample shift).
    matched = 0
    for s in ok:
        end = (s.t_mono_ns - t0) * RATE_HZ // 1_000_000_000 - 22
        if 1600 <= end <= len(wav):
            assert np.array_equal(s.data, wav[end - 1600:end])
            matched += 1
    assert matched >= 10
    # Silence is empty and speech starts where espeak spoke. (The first ~0.4 s are not
    # checked: the WAV header the file plugin hands over is a click, held by the hangover.)
    def at(s: Sample) -> float:
        return (s.t_mono_ns - t0) / 1e9

    assert all(s.state == "empty" for s in samples if 0.55 <= at(s) <= SILENCE_S)
    onset = min(at(s) for s in ok if at(s) > 0.55)
    assert SILENCE_S <= onset <= SILENCE_S + 0.3
    assert all(s.state == "empty" for s in samples if at(s) > duration - 1.5 + 0.4)
    speech_s = len(ok) * 0.1
    assert speech_s > 0.5 * (duration - SILENCE_S - 1.5)


@pytest.mark.hardware
@pytest.mark.timeout(60)
def test_device_at_48k_is_resampled_to_16k(alsa: dict[str, Path]) -> None:
    ref = _wav(alsa["speech16"]).astype(np.float64)
    cfg = AudioConfig(device="cabinmic48", device_rate=48_000, vad="off", queue_blocks=200)
    got = []
    with AudioSensor(cfg) as mic:
        while sum(len(s.data) for s in got) < len(ref) - 3200:
            s = mic.read(timeout_s=2.0)
            assert s is not None
            got.append(s)
        assert mic.stream_rate == 48_000
    out = np.concatenate([s.data for s in got]).astype(np.float64)
    seg = slice(RATE_HZ, RATE_HZ + 2 * RATE_HZ)  # two seconds of speech
    best = max(np.corrcoef(out[seg.start + lag:seg.stop + lag], ref[seg])[0, 1]
               for lag in range(0, 40))
    assert best > 0.95


@pytest.mark.hardware
@pytest.mark.timeout(60)
def test_energy_detector_also_separates_speech_from_silence(alsa: dict[str, Path]) -> None:
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    with AudioSensor(AudioConfig(device="cabinmic", vad="energy", replay_t0_ns=t0)) as mic:
        samples = _capture(mic, 2.0)
    states = [s.state for s in samples]
    assert states[:8] == ["empty"] * 8  # the first 0.8 s are silence
    assert "ok" in states[10:]


@pytest.mark.hardware
@pytest.mark.timeout(60)
def test_privacy_switch_disables_and_restores(alsa: dict[str, Path], tmp_path: Path) -> None:
    flag = tmp_path / "privacy"
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    cfg = AudioConfig(device="cabinmic", vad="off", privacy_file=str(flag), replay_t0_ns=t0)
    with AudioSensor(cfg) as mic:
        assert all(s.state == "ok" for s in _capture(mic, 0.5))
        flag.touch()
        disabled = _capture(mic, 0.6)
        assert disabled and all(s.state == "disabled" and s.data.size == 0 for s in disabled)
        assert mic.stream_rate and not mic._connected  # the microphone is really closed
        flag.unlink()
        back = _capture(mic, 0.6)
        assert back and back[-1].state == "ok"
        # Reopened on the drive's grid: what was said while disabled is skipped, not queued.
        assert mic.counters["skipped_samples"] > 0.5 * RATE_HZ
        assert back[-1].t_mono_ns - t0 > 1.5e9


@pytest.mark.hardware
@pytest.mark.timeout(60)
def test_missing_device_retries_with_backoff_and_recovers(alsa: dict[str, Path]) -> None:
    cfg = AudioConfig(device="latemic", vad="off", backoff_initial_s=0.1, backoff_max_s=0.8)
    mic = AudioSensor(cfg)
    with pytest.raises(SensorError):
        mic.connect()
    try:
        assert _capture(mic, 1.6) == []  # unplugged: nothing, but read() keeps returning
        attempts = mic.counters["reconnect_attempts"]
        # 1 + retries at 0.1, 0.3, 0.7, 1.5 s: exponential, not a busy loop.
        assert 3 <= attempts <= 6
        # Plug it in: the next attempt finds it.
        conf = alsa["conf"]
        conf.write_text(conf.read_text() + f'pcm.latemic {{ type file slave.pcm "null" '
                        f'file "/dev/null" infile "{alsa["speech16"]}" format "wav" }}\n')
        got = _capture(mic, 2.0)
        assert got and all(s.state == "ok" and len(s.data) == 1600 for s in got)
        assert mic.counters["reconnects"] == 1
    finally:
        mic.close()


@pytest.mark.hardware
@pytest.mark.timeout(60)
def test_a_microphone_gone_after_silence_is_not_reported_as_silence(
    alsa: dict[str, Any],
) -> None:
    """The capture thread's view: 0.5 s of a silent cabin (samples `empty`), then the device
    stops (its FIFO gets nothing more; the sensor reconnects by itself and read() returns
    None). The heartbeat must stop repeating `empty` (device_ok False: it then says `ok`
    with no frames, which the daemon reads as `stale`), and say `empty` again once the
    microphone is back and still hears silence."""
    writer = alsa["writers"]["quietmic"]
    silence = np.zeros(8000, np.int16).tobytes()  # 0.5 s
    os.write(writer, silence)
    mic = AudioSensor(AudioConfig(device="quietmic", vad="energy", stall_s=0.5,
                                  backoff_initial_s=0.1, backoff_max_s=0.2))
    buffer = SampleBuffer(64)
    reader = CaptureThread(mic, buffer, CaptureConfig(read_timeout_ms=100))
    reader.start()
    try:
        got = buffer.drain(timeout_s=2.0)
        deadline = time.monotonic() + 2.0
        while len(got) < 5 and time.monotonic() < deadline:
            got += buffer.drain(timeout_s=0.2)
        assert got and {s.state for s in got} == {"empty"}
        assert reader.device_ok
        deadline = time.monotonic() + 5.0
        while reader.device_ok and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not reader.device_ok, "a stalled microphone still reads as a silent cabin"
        assert mic.counters["errors"] >= 1 and "stalled" in mic.last_error
        deadline = time.monotonic() + 5.0
        while not reader.device_ok and time.monotonic() < deadline:
            try:  # the microphone is back: it streams silence again (a reconnect reads it)
                os.write(writer, silence[: len(silence) // 5])
            except BlockingIOError:
                pass  # the FIFO is full: nobody is reading yet
            time.sleep(0.1)
        assert reader.device_ok and buffer.drain(timeout_s=1.0)[-1].state == "empty"
    finally:
        reader.stop_event.set()
        reader.join(timeout=5)


@pytest.mark.hardware
@pytest.mark.timeout(60)
def test_a_hung_driver_never_blocks_read_and_is_reconnected(alsa: dict[str, Any]) -> None:
    """A device whose driver stops returning from read() (here: the ALSA file plugin reading
    a FIFO that receives 0.5 s of audio and then nothing) must not hang the sensor."""
    writer = alsa["writers"]["hungmic"]
    os.write(writer, (np.full(8000, 1000, np.int16)).tobytes())
    mic = AudioSensor(AudioConfig(device="hungmic", vad="off", stall_s=0.5,
                                  backoff_initial_s=0.1))
    try:
        mic.connect()
        took, states = [], []
        for _ in range(25):
            start = time.monotonic()
            s = mic.read(timeout_s=0.2)
            took.append(time.monotonic() - start)
            states.append(None if s is None else s.state)
        assert states[:5] == ["ok"] * 5  # the 0.5 s that arrived
        assert states[5:] == [None] * 20  # then nothing, and no fake samples
        assert max(took) < 0.4  # never blocked past its timeout (+ abandoning the thread)
        assert mic.counters["errors"] >= 2 and mic.counters["reconnect_attempts"] >= 3
        assert "stalled" in mic.last_error
    finally:
        mic.close()


def test_resampler_keeps_a_tone_across_block_edges() -> None:
    t = np.arange(48_000) / 48_000
    x = (10_000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    r = StreamResampler(48_000, RATE_HZ)
    y = np.concatenate([r.process(x[i:i + 4800]) for i in range(0, len(x), 4800)])
    assert len(y) == RATE_HZ
    delay = 31 / 3  # the 63-tap FIR's group delay, in output samples
    ref = 10_000 * np.sin(2 * np.pi * 440 * (np.arange(len(y)) - delay) / RATE_HZ)
    assert np.abs(y[100:] - ref[100:]).max() < 20  # no clicks at the 100 ms block edges
    with pytest.raises(ValueError):
        AudioConfig(device="x", block_ms=30)
