"""The numpy featurisation shared by training and inference."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from engines.backend import WindowInputs
from engines.features import (
    AUDIO_WINDOW_SAMPLES,
    MAX_FACES,
    N_AUDIO_FRAMES,
    N_MELS,
    FeatureError,
    Tokenizer,
    face_frames,
    featurise_windows,
    fit_audio_window,
    log_mel,
    mel_filterbank,
    resample,
)


def _tone(freq: float, rate: int = 16000, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_log_mel_shape_and_the_tone_lands_in_the_right_band() -> None:
    low, high = log_mel(_tone(300)), log_mel(_tone(3000))
    assert low.shape == high.shape == (N_MELS, N_AUDIO_FRAMES)
    assert low.dtype == np.float32 and np.isfinite(low).all()
    assert low.mean(1).argmax() < high.mean(1).argmax()  # higher pitch -> higher mel band
    silence = log_mel(np.zeros(AUDIO_WINDOW_SAMPLES, np.int16))
    assert np.isfinite(silence).all() and silence.max() < low.max()


def test_audio_window_keeps_the_most_recent_two_seconds() -> None:
    long = np.arange(40000, dtype=np.int64).astype(np.int16)
    assert np.array_equal(fit_audio_window(long), long[-AUDIO_WINDOW_SAMPLES:])
    short = np.ones(100, np.int16)
    padded = fit_audio_window(short)
    assert padded.size == AUDIO_WINDOW_SAMPLES and padded[-100:].all() and not padded[:-100].any()


@pytest.mark.parametrize("bad", [np.zeros(100, np.float32), np.zeros((2, 100), np.int16), [1, 2]])
def test_bad_audio_is_a_typed_error(bad: object) -> None:
    with pytest.raises(FeatureError):
        log_mel(bad)  # type: ignore[arg-type]


def test_resample_keeps_duration_and_pitch() -> None:
    rate = 22050
    t = np.arange(2 * rate) / rate
    x = np.sin(2 * np.pi * 1000 * t)
    y = resample(x, rate, 16000)
    assert y.size == 32000
    peak_hz = np.abs(np.fft.rfft(y)).argmax() * 16000 / y.size
    assert abs(peak_hz - 1000) < 1.0
    assert abs(np.std(y) - np.std(x)) < 0.01


def test_mel_filterbank_covers_every_band() -> None:
    fb = mel_filterbank()
    assert fb.shape == (N_MELS, 257) and (fb >= 0).all() and (fb.sum(1) > 0).all()


def test_face_frames_normalise_mask_and_subsample() -> None:
    crops = np.stack([np.full((48, 48), i, np.uint8) for i in range(30)])
    frames, mask = face_frames(crops)
    assert frames.shape == (MAX_FACES, 48, 48) and mask.all()
    # evenly subsampled over the window, first and last crop kept, order kept
    values = frames[:, 0, 0]
    assert values[0] < values[-1] and np.all(np.diff(values) > 0)
    frames, mask = face_frames(np.full((3, 48, 48), 255, np.uint8))
    assert mask.sum() == 3 and np.allclose(frames[:3], (1.0 - 0.5) / 0.25) and not frames[3:].any()
    with pytest.raises(FeatureError):
        face_frames(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(FeatureError):
        face_frames(np.zeros((2, 48, 48), np.float32))


def test_tokenizer_normalises_apostrophes_and_round_trips(tmp_path) -> None:
    tok = Tokenizer.fit(["I don't know", "you don't say", "I know"], min_count=1,
                        n_bigram_buckets=32)
    plain = tok.encode(("I don't know",))
    assert np.array_equal(plain[0], tok.encode(("I don\u2019t know",))[0])
    assert np.array_equal(plain[0], tok.encode(("I don\x92t know",))[0])
    assert plain[1].sum() == 5  # 3 words + 2 bigrams
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text())["kind"].startswith("word+hashed-bigram")
    again = Tokenizer.load(path)
    assert np.array_equal(again.encode(("you know what",))[0], tok.encode(("you know what",))[0])
    # the bigram bucket is crc32, stable across processes (unlike Python's salted hash())
    bigram_id = 2 + len(tok.vocab) + zlib.crc32(b"i don't") % 32
    assert bigram_id in plain[0].tolist()


def test_tokenizer_keeps_recent_tokens_and_never_returns_an_empty_window() -> None:
    tok = Tokenizer(vocab=("a", "b"), n_bigram_buckets=8, max_tokens=4)
    ids, mask = tok.encode(("a " * 10 + "b",))
    assert mask.all() and ids[-1] == 3  # "b" (id 2 + 1) is the most recent token
    ids, mask = tok.encode(("",))
    assert mask.sum() == 1 and ids[0] == 1
    with pytest.raises(FeatureError):
        tok.encode((b"bytes",))  # type: ignore[arg-type]


def test_featurise_windows_rows_follow_presence() -> None:
    tok = Tokenizer(vocab=("hi",))
    windows = [WindowInputs(audio=_tone(440), text=("hi",)),
               WindowInputs(video=np.zeros((2, 48, 48), np.uint8)),
               WindowInputs()]
    feeds = featurise_windows(windows, ("audio", "video", "text"), tok)
    assert feeds["present"].tolist() == [[True, False, True], [False, True, False],
                                         [False, False, False]]
    assert feeds["audio_logmel"].shape == (1, N_MELS, N_AUDIO_FRAMES)
    assert feeds["video_frames"].shape == (1, MAX_FACES, 48, 48)
    assert feeds["video_mask"].sum() == 2
    assert feeds["text_ids"].shape == (1, tok.max_tokens)
