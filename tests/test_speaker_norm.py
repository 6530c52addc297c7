"""The speaker normaliser: log-mel centred by the speaker's own *past* audio (issue 4 allows it
only causally). The same definition must hold in training (EmoDB, per speaker in file order),
in edge-eval and in the daemon (one stream, 2 s tiles), or the model sees skewed inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge import wire
from edge.config import DaemonConfig, WatchdogConfig, WindowConfig
from edge.fusion import CONTENT_KEYS, ClosedWindow, FusionCore
from engines.backend import WindowInputs, load_backend
from engines.features import (
    SPEAKER_NORM_MAX_WINDOWS,
    SpeakerNormaliser,
    arrival_order,
    causal_centres,
    featurise_windows,
    log_mel,
    speaker_centred,
    voiced_band_mean,
)
from tests.helpers import MODEL_DIR

MS = 1_000_000
LIVE = Path(__file__).resolve().parents[1] / "models" / "live"


def speech(seed: int, level: float = 3000.0, tilt: float = 0.0) -> np.ndarray:
    """2 s of noise bursts (voiced stretches and pauses); `tilt` colours the spectrum."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(32000)
    if tilt:
        x = np.convolve(x, [1.0, tilt], mode="same")
    envelope = (np.sin(np.linspace(0, 12 * np.pi, x.size)) > -0.3).astype(float)
    return np.clip(x * envelope * level, -32768, 32767).astype(np.int16)


def test_the_centre_is_the_mean_of_earlier_voiced_windows_and_silence_is_ignored() -> None:
    norm = SpeakerNormaliser()
    assert norm.centre() is None
    mels = [log_mel(speech(k)) for k in range(3)]
    for lm in mels:
        norm.update(lm)
    norm.update(log_mel(np.zeros(32000, np.int16)))  # a muted stretch says nothing of the voice
    cabin = np.random.default_rng(9).standard_normal(32000) * 2000  # nor does steady noise
    norm.update(log_mel(cabin.astype(np.int16)))
    assert norm.count == 3
    want = np.mean([voiced_band_mean(lm) for lm in mels], axis=0)
    np.testing.assert_allclose(norm.centre(), want, rtol=1e-5)


def test_the_centre_forgets_past_its_cap_so_a_new_speaker_takes_over() -> None:
    norm = SpeakerNormaliser()
    first, second = log_mel(speech(1, tilt=0.9)), log_mel(speech(2, tilt=-0.9))
    for _ in range(SPEAKER_NORM_MAX_WINDOWS):
        norm.update(first)
    for _ in range(2 * SPEAKER_NORM_MAX_WINDOWS):
        norm.update(second)
    assert norm.count <= SPEAKER_NORM_MAX_WINDOWS
    centre, a, b = norm.centre(), voiced_band_mean(first), voiced_band_mean(second)
    assert centre is not None and a is not None and b is not None
    assert np.abs(centre - b).mean() < 0.2 * np.abs(a - b).mean()


def test_a_windows_centre_never_depends_on_its_own_or_later_audio() -> None:
    mels = [log_mel(speech(k, level=500 + 800 * k)) for k in range(8)]
    streams = ["a", "b"] * 4
    centres = causal_centres(mels, streams)
    assert centres[0] is None and centres[1] is None  # each stream's first window
    changed = causal_centres(mels[:5] + [log_mel(speech(99, 20000))] * 3, streams)
    for k in range(6):  # windows 5.. changed: the centres up to 5 (its own) are the same
        np.testing.assert_array_equal(centres[k], changed[k])
    # streams are separate: stream a's centre at window 4 stands on its windows 0 and 2 only
    np.testing.assert_allclose(centres[4], (voiced_band_mean(mels[0]) + voiced_band_mean(mels[2]))
                               / 2, rtol=1e-5)


def test_featurisation_centres_only_when_the_model_was_trained_so() -> None:
    audio = speech(5)
    centre = np.linspace(-9, -5, 40).astype(np.float32)
    window = WindowInputs(audio=audio, audio_centre=centre)
    plain = featurise_windows([window], ("audio",), None)["audio_logmel"][0]
    np.testing.assert_array_equal(plain, log_mel(audio))
    centred = featurise_windows([window], ("audio",), None, True)["audio_logmel"][0]
    np.testing.assert_allclose(centred, log_mel(audio) - centre[:, None], rtol=1e-6)
    # no past yet: the window is centred by its own voiced mean (its present, not its future)
    first = featurise_windows([WindowInputs(audio=audio)], ("audio",), None, True)
    np.testing.assert_allclose(first["audio_logmel"][0], speaker_centred(log_mel(audio), None))


# ------------------------------------------------------------------------------ the daemon
WINDOW = WindowConfig(window_ms=2000, hop_ms=500, max_lag_ms=100, precompute_after_ms=60)


@pytest.fixture(scope="module")
def backend() -> Any:
    """The real onnxruntime test model, switched to speaker-centred audio (the switch a model
    trained with audio_speaker_norm sets from its manifest)."""
    engine = load_backend(MODEL_DIR)
    engine.audio_speaker_norm = True
    return engine


def make_core(backend: Any, **window: Any) -> FusionCore:
    core = FusionCore(DaemonConfig(window=WindowConfig(**{**WINDOW.__dict__, **window}),
                                   watchdog=WatchdogConfig(heartbeat_ms=100, miss_limit=2),
                                   model_dir=str(MODEL_DIR)), backend)
    core.windower.start(0)
    return core


def feed(core: FusionCore, t_from_ns: int, t_to_ns: int) -> None:
    """Audio frames (100 ms of speech-like bursts, louder as time goes on) and heartbeats
    every 100 ms."""
    for t in range(t_from_ns, t_to_ns, 100 * MS):
        k = t // (100 * MS)
        chunk = speech(k // 20, level=400 + 60 * k)[(k % 20) * 1600:][:1600]
        for kind, data in (("frame", chunk), ("heartbeat", None)):
            header = wire.Header(sensor="mic", modality="audio", kind=kind, seq=2 * k +
                                 (kind == "heartbeat"), t_mono_ns=t + (kind == "heartbeat"),
                                 t_wall_ns=0, encoding="raw")
            core.ingest(wire.decode(wire.encode(header, data)), t + 1)


def closed_windows(core: FusionCore, until_ns: int) -> list[ClosedWindow]:
    out: list[ClosedWindow] = []
    for t in range(0, until_ns + 1, 100 * MS):
        feed(core, t, t + 1)
        out += core.close(t)
    return out


def test_the_daemon_hands_each_window_the_centre_of_the_earlier_2s_tiles(backend: Any) -> None:
    closed = closed_windows(make_core(backend), 8000 * MS)
    assert [c.window.end_ns for c in closed] == [k * 500 * MS for k in range(1, 16)]
    # by definition: the tiles are the windows ending on a multiple of 2 s (each stretch of
    # audio counted once); window k's centre stands on the tiles that closed before it
    norm, want = SpeakerNormaliser(), []
    for c in closed:
        want.append(norm.centre())
        if c.window.end_ns % (2000 * MS) == 0 and "audio" in c.used:
            norm.update(log_mel(np.concatenate(c.window.frames["audio"])))
    assert all(c.used == ("audio",) for c in closed[3:])
    for c, centre in zip(closed, want, strict=True):
        if centre is None:
            assert c.audio_centre is None
        else:
            np.testing.assert_array_equal(c.audio_centre, centre)
    assert sum(c is not None for c in want) >= 10


def test_replay_and_live_give_the_same_centred_estimates_and_precompute_still_hits(
        backend: Any) -> None:
    live, replay = make_core(backend), make_core(backend, precompute_after_ms=100)  # off
    estimates = []
    for t in range(0, 8000 * MS + 1, 20 * MS):  # live: small steps, precompute on
        if t % (100 * MS) == 0:
            feed(live, t, t + 1)
        live.precompute(t)
        estimates += live.step(t)
    feed(replay, 0, 8000 * MS + 1)
    replayed = replay.step(8000 * MS)  # replay: everything at once, after the fact
    assert [e["t_end_ns"] for e in estimates] == [e["t_end_ns"] for e in replayed]
    assert [{k: e[k] for k in CONTENT_KEYS} for e in estimates] == [
        {k: e[k] for k in CONTENT_KEYS} for e in replayed]
    # the previous window (maybe a tile) closes before the next one's precompute: the centre
    # is settled by then, so precomputing still pays
    assert live.health()["precompute"] == {"hits": len(estimates), "misses": 0}
    assert live.health()["speaker_norm_windows"] == 3  # tiles ending at 2, 4, 6 s


def test_the_centre_changes_the_estimate(backend: Any) -> None:
    audio = speech(3)
    a = backend.predict(WindowInputs(audio=audio, audio_centre=np.full(40, -9.0, np.float32)))
    b = backend.predict(WindowInputs(audio=audio, audio_centre=np.full(40, -4.0, np.float32)))
    assert not np.allclose(a.probs, b.probs)


@pytest.mark.data
def test_edge_eval_centres_each_emodb_clip_by_its_speakers_earlier_clips_only(
        shared_data: Path) -> None:
    from engines.datasets import emodb_windows, live_eval_set
    from engines.manifest import Manifest

    assert Manifest.load(LIVE).features["audio_speaker_norm"] is True
    raw = emodb_windows(shared_data / "emodb" / "wav")
    rows = np.flatnonzero(np.isin(raw.groups, np.unique(raw.groups)[:2]))[:40]
    # the clips' arrival order (a checksum order, the same in training): first 30, then 10
    arrival = rows[arrival_order([raw.windows[i].audio for i in rows])]

    def logits(subset_rows: np.ndarray) -> dict[int, np.ndarray]:
        subset = dataclasses.replace(raw, windows=[raw.windows[i] for i in subset_rows],
                                     labels=raw.labels[subset_rows],
                                     groups=raw.groups[subset_rows])
        (got, _), = live_eval_set(LIVE, subset, "onnxruntime").logits.values()
        return dict(zip(subset_rows.tolist(), got, strict=True))

    full, early = logits(rows), logits(np.sort(arrival[:30]))
    for i in arrival[:30]:  # clips that arrive later change nothing before them
        np.testing.assert_allclose(full[i], early[i], rtol=1e-5, atol=1e-5)
    last = int(arrival[-1])  # alone, it has no past: another centre, other logits
    assert not np.allclose(logits(np.array([last]))[last], full[last])


def test_arrival_order_is_a_clips_own_not_its_file_position() -> None:
    clips = [speech(k)[: 1000 + k] for k in range(12)]
    order = arrival_order(clips)
    assert sorted(order.tolist()) == list(range(12)) and order.tolist() != list(range(12))
    subset = [clips[i] for i in (1, 4, 5, 9)]
    ranks = {k: int(np.flatnonzero(order == k)[0]) for k in (1, 4, 5, 9)}
    want = sorted(range(4), key=lambda j: ranks[(1, 4, 5, 9)[j]])
    assert arrival_order(subset).tolist() == want


# ---------------------------------------------------------------------------- RAVDESS track
def test_actor_centring_uses_only_the_actors_earlier_clips() -> None:
    from engines.ravdess import actor_centred

    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 2, 3))
    actors = np.array([1, 2, 1, 1, 2, 1, 2, 2, 1])
    order = np.array([4, 0, 2, 6, 8, 1, 3, 5, 7])
    out = actor_centred(x, actors, order)
    np.testing.assert_array_equal(out[0], 0)  # actor 1's first clip: no past
    np.testing.assert_array_equal(out[4], 0)  # actor 2's first
    np.testing.assert_allclose(out[8], x[8] - (x[0] + x[2]) / 2)  # actor 1, after 0 and 2
    np.testing.assert_allclose(out[7], x[7] - (x[4] + x[6] + x[1]) / 3)  # actor 2: 4, 6, 1
    changed = x.copy()
    changed[[5, 7]] += 100.0  # the last to arrive change nothing before them
    again = actor_centred(changed, actors, order)
    np.testing.assert_array_equal(again[[4, 0, 2, 6, 8, 1, 3]], out[[4, 0, 2, 6, 8, 1, 3]])


@pytest.mark.data
def test_ravdess_actor_norm_streams_clips_in_checksum_order_not_file_order(
        shared_data: Path) -> None:
    from engines.ravdess import DEFAULT_NPZ, RavdessConfig, load_arrays

    npz = shared_data / DEFAULT_NPZ
    plain = load_arrays(npz, RavdessConfig())
    normed = load_arrays(npz, RavdessConfig(actor_norm=True))
    with np.load(npz, allow_pickle=False) as d:
        order = arrival_order([str(k) for k in d["key"]])
    assert not np.array_equal(order, np.arange(len(order)))
    first = order[plain.actors[order] == 5][:3]  # actor 5's first three clips to arrive
    np.testing.assert_array_equal(normed.video[first[0]], 0)
    np.testing.assert_allclose(normed.video[first[2]],
                               plain.video[first[2]] - plain.video[first[:2]].mean(0))
    np.testing.assert_array_equal(normed.labels, plain.labels)


def test_the_voiced_centre_does_not_depend_on_how_much_of_the_window_is_pause() -> None:
    """A dataset clip is mostly speech, a 2 s tile of a drive is often half pause: the same
    voice must give the same centre in both, or the daemon's inputs sit off training's."""
    rng = np.random.default_rng(3)
    voice = rng.standard_normal(32000) * 3000
    quiet = rng.standard_normal(32000) * 20  # cabin hush between utterances

    def window(speech_share: float) -> np.ndarray:
        t = np.linspace(0, 8 * np.pi, 32000)
        on = np.sin(t) > np.cos(np.pi * speech_share)  # `speech_share` of each cycle is voice
        return np.where(on, voice, quiet).astype(np.int16)

    mostly_speech = voiced_band_mean(log_mel(window(0.75)))
    mostly_pause = voiced_band_mean(log_mel(window(0.3)))
    assert mostly_speech is not None and mostly_pause is not None
    assert np.mean(np.abs(mostly_speech - mostly_pause)) < 0.3
