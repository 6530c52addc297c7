"""Numpy-only featurisation shared by training and inference.

The exported ONNX graph starts *after* these functions: the onnxruntime backend calls them on the
daemon's raw window (int16 samples, uint8 face crops, utterance strings) and training calls the
very same functions on dataset files, so there is one featurisation and no train/serve skew.
Nothing here imports torch or downloads anything; the text tokenizer's state is a JSON file in
the model directory.

Static shapes (the exported graph has fixed time axes):
  audio: AUDIO_WINDOW_SAMPLES (2 s at 16 kHz) -> log-mel (N_MELS, N_AUDIO_FRAMES)
  video: up to MAX_FACES crops of 48x48 -> (MAX_FACES, 48, 48) float + (MAX_FACES,) bool mask
  text:  up to MAX_TOKENS token ids -> (MAX_TOKENS,) int64 + (MAX_TOKENS,) bool mask
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engines.backend import AUDIO_RATE_HZ, FACE_SIZE, WindowInputs


class FeatureError(ValueError):
    """Raw input that cannot be featurised (wrong dtype, shape, or non-finite values)."""


# ---------------------------------------------------------------------------------- audio
AUDIO_WINDOW_SAMPLES = 2 * AUDIO_RATE_HZ  # 2 s windows; EmoDB clips are exactly 2 s
N_FFT = 512
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_MELS = 40
N_AUDIO_FRAMES = 1 + (AUDIO_WINDOW_SAMPLES - WIN_LENGTH) // HOP_LENGTH  # 198
LOG_FLOOR = 1e-6


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def mel_filterbank(
    n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = AUDIO_RATE_HZ
) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular HTK-mel filters, 20 Hz .. Nyquist, area-normalised."""
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(np.array(20.0)), _hz_to_mel(np.array(rate / 2)),
                                      n_mels + 2))
    bin_hz = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (upper - lower))  # equal area: loudness does not depend on band width
    filters.setflags(write=False)
    return filters.astype(np.float32)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    window = np.hanning(WIN_LENGTH + 1)[:-1].astype(np.float32)  # periodic Hann
    window.setflags(write=False)
    return window


def fit_audio_window(samples: np.ndarray) -> np.ndarray:
    """int16 mono samples -> exactly AUDIO_WINDOW_SAMPLES, keeping the most recent audio.

    A longer window keeps its last 2 s (the estimate is about *now*); a shorter one is padded with
    silence at the start so the recent audio stays aligned with the end of the window.
    """
    if not isinstance(samples, np.ndarray) or samples.ndim != 1:
        raise FeatureError("audio must be a 1-D numpy array of int16 samples")
    if samples.dtype != np.int16:
        raise FeatureError(f"audio must be int16, got {samples.dtype}")
    if samples.size >= AUDIO_WINDOW_SAMPLES:
        return samples[-AUDIO_WINDOW_SAMPLES:]
    out = np.zeros(AUDIO_WINDOW_SAMPLES, np.int16)
    if samples.size:
        out[-samples.size:] = samples
    return out


def log_mel(samples: np.ndarray) -> np.ndarray:
    """int16 16 kHz mono -> float32 log-mel (N_MELS, N_AUDIO_FRAMES) for one 2 s window."""
    pcm = fit_audio_window(samples).astype(np.float32) / 32768.0
    # (n_frames, WIN_LENGTH) view without copying, then a copy for the window multiply.
    frames = np.lib.stride_tricks.sliding_window_view(pcm, WIN_LENGTH)[::HOP_LENGTH]
    frames = frames[:N_AUDIO_FRAMES] * _hann()
    power = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2  # (n_frames, n_fft//2+1)
    mel = power @ mel_filterbank().T  # (n_frames, N_MELS)
    return np.log(mel + LOG_FLOOR).T.astype(np.float32)  # (N_MELS, n_frames)


# A frame counts as voice when its energy is within this many nats of the window's peak (its
# 95th energy percentile). Relative to the peak, not a quantile: a 2 s tile of a stream is
# 20-60 % pauses, a dataset clip is mostly speech, and a quantile cut lands on the pause floor
# in the one and inside the speech in the other (the daemon's centre then sat ~1 nat below
# training's). Chosen label-free (bench/voiced_cut.py): centres of 2 s tiles of EmoDB
# speakers' clips strung with pauses vs the same clips' own centres (speakers other than the
# one-voice drive's): offset -1.35 nats with the old 30th-percentile cut, -0.13 with this.
VOICED_PEAK_DROP = 3.0
# Speech rises and falls syllable by syllable; cabin noise is steady. A window whose frame
# log-energy spans less than this (10th to 90th percentile) holds no speech: stationary noise
# spans ~0.3, every EmoDB clip more than 2.6 (so training is not affected by the gate).
SPEECH_MIN_ENERGY_RANGE = 1.5
SPEAKER_NORM_MAX_WINDOWS = 240  # beyond this the running mean forgets (~8 min of 2 s tiles)


def voiced_band_mean(logmel: np.ndarray) -> np.ndarray | None:
    """(N_MELS, n_frames) -> per-band mean over the window's louder (voiced) frames, or None
    when the window holds no speech (digital silence, steady noise) and says nothing about
    the speaker."""
    energy = logmel.mean(0)  # (n_frames,)
    if np.count_nonzero(energy > np.log(LOG_FLOOR) + 1.0) < logmel.shape[1] // 4:
        return None
    low, high = np.percentile(energy, [10, 90])
    if high - low < SPEECH_MIN_ENERGY_RANGE:
        return None
    voiced = energy >= np.percentile(energy, 95) - VOICED_PEAK_DROP
    return logmel[:, voiced].mean(1)  # never empty: the 95th-percentile frames qualify


class SpeakerNormaliser:
    """The speaker's spectral centre from the *past* of the stream (issue 4: normalisation from
    a speaker's own unlabelled audio, causal only).

    `centre()` is the mean voiced log-mel band level of the windows given to `update` so far,
    or None before any. A model trained with `audio_speaker_norm` sees its log-mel minus that
    centre, which removes the voice's and the microphone's timbre and leaves how this window
    differs from the speaker's usual (where emotion shows). Training (EmoDB: each speaker's
    clips in `arrival_order`), edge-eval and the daemon (one stream per daemon, 2 s tiles of the
    audio) all use this class, so the featurisation is the same. Bounded: two sums; after
    SPEAKER_NORM_MAX_WINDOWS windows it forgets exponentially, so a new driver takes over.
    """

    def __init__(self) -> None:
        self._sum = np.zeros(N_MELS, np.float64)
        self._count = 0.0

    @property
    def count(self) -> float:
        """How many windows the centre stands on (decayed past the cap)."""
        return self._count

    def centre(self) -> np.ndarray | None:
        return (self._sum / self._count).astype(np.float32) if self._count else None

    def update(self, logmel: np.ndarray) -> None:
        band_mean = voiced_band_mean(logmel)
        if band_mean is None:
            return
        if self._count >= SPEAKER_NORM_MAX_WINDOWS:
            keep = (SPEAKER_NORM_MAX_WINDOWS - 1) / SPEAKER_NORM_MAX_WINDOWS
            self._sum *= keep
            self._count *= keep
        self._sum += band_mean
        self._count += 1.0


def speaker_centred(logmel: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """log-mel minus the speaker's centre; with no past yet, minus this window's own voiced
    mean (its present, never its future)."""
    if centre is None:
        centre = voiced_band_mean(logmel)
        if centre is None:
            centre = logmel.mean(1)
    return (logmel - centre[:, None]).astype(np.float32)


def arrival_order(clips: Sequence[np.ndarray | str]) -> np.ndarray:
    """The order in which a dataset's clips "arrive" as a stream: sorted by a checksum of
    their samples (or of their names), i.e. a fixed pseudo-random order that a clip keeps in
    any subset.

    A dataset of separate clips has no time order, and its file order is not neutral: EmoDB's
    names sort each speaker's clips by sentence, then by *emotion code*, so "the clips before
    this one" would depend on its label. A checksum does not.
    """
    return np.argsort([zlib.crc32(c.encode() if isinstance(c, str)
                                  else np.ascontiguousarray(c).tobytes()) for c in clips],
                      kind="stable")


def causal_centres(logmels: Sequence[np.ndarray] | np.ndarray,
                   streams: Sequence[Any] | np.ndarray,
                   order: Sequence[int] | np.ndarray | None = None) -> list[np.ndarray | None]:
    """Windows of several streams (speakers) -> each window's centre from the windows of its
    stream that came *earlier* in `order` (default: as given), for training and edge-eval."""
    norms: dict[Any, SpeakerNormaliser] = {}
    centres: list[np.ndarray | None] = [None] * len(logmels)
    for i in range(len(logmels)) if order is None else order:
        norm = norms.setdefault(streams[i], SpeakerNormaliser())
        centres[i] = norm.centre()
        norm.update(logmels[i])
    return centres



def resample(samples: np.ndarray, rate_in: int, rate_out: int = AUDIO_RATE_HZ) -> np.ndarray:
    """Band-limited resampling of a whole clip via the FFT (fine for clips of a few seconds)."""
    x = np.asarray(samples, dtype=np.float64)
    if rate_in == rate_out:
        return x
    n_out = int(round(x.size * rate_out / rate_in))
    spectrum = np.fft.rfft(x)
    keep = min(spectrum.size, n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, np.complex128)
    out_spec[:keep] = spectrum[:keep]
    return np.fft.irfft(out_spec, n=n_out) * (n_out / x.size)


# ---------------------------------------------------------------------------------- video
MAX_FACES = 20  # 2 s at 10 fps; more crops are subsampled evenly over the window
FACE_MEAN = 0.5
FACE_STD = 0.25


def face_frames(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 48, 48) face crops -> (MAX_FACES, 48, 48) float32 and a (MAX_FACES,) bool mask.

    Crops keep their capture order; slots after the last real crop are zero and masked out.
    """
    if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8:
        raise FeatureError("video must be a uint8 numpy array of face crops")
    if crops.ndim == 2:
        crops = crops[None]
    if crops.ndim != 3 or crops.shape[1:] != (FACE_SIZE, FACE_SIZE):
        raise FeatureError(f"face crops must be (n, {FACE_SIZE}, {FACE_SIZE}), got {crops.shape}")
    n = crops.shape[0]
    if n > MAX_FACES:  # even subsampling keeps the whole window's time span
        crops = crops[np.linspace(0, n - 1, MAX_FACES).round().astype(np.int64)]
        n = MAX_FACES
    frames = np.zeros((MAX_FACES, FACE_SIZE, FACE_SIZE), np.float32)
    frames[:n] = (crops.astype(np.float32) / 255.0 - FACE_MEAN) / FACE_STD
    mask = np.zeros(MAX_FACES, bool)
    mask[:n] = True
    return frames, mask


# ----------------------------------------------------------------------------------- text
MAX_TOKENS = 64
COMPACT_KIND = "word+hashed-bigram/crc32"  # tokenizer.json's "kind" for Tokenizer
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\x92": "'", "\u0060": "'"})
_WORD = re.compile(r"[a-z0-9']+|[!?.]")


def normalise_text(text: str) -> str:
    """Lower-case, unify apostrophes (MELD mixes \u2019 and \\x92 with ')."""
    return text.translate(_APOSTROPHES).lower()


def words(text: str) -> list[str]:
    return _WORD.findall(normalise_text(text))


def _bucket(token: str, n_buckets: int) -> int:
    # crc32 is stable across processes and platforms (Python's hash() is salted per process).
    return zlib.crc32(token.encode("utf-8")) % n_buckets


@dataclass(frozen=True, kw_only=True)
class Tokenizer:
    """Word vocabulary + hashed word bigrams, in utterance order.

    Ids: 0 = padding, 1 = unknown word, 2 .. 2+len(vocab) = known words, then `n_bigram_buckets`
    hashed bigram ids. Tokens are interleaved w1, w1_w2, w2, w2_w3, ... so the sequence stays in
    time order; the most recent MAX_TOKENS tokens of a window are kept.
    """

    vocab: tuple[str, ...]
    n_bigram_buckets: int = 4096
    max_tokens: int = MAX_TOKENS
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({w: i + 2 for i, w in enumerate(self.vocab)})

    @property
    def n_ids(self) -> int:
        return 2 + len(self.vocab) + self.n_bigram_buckets

    def token_ids(self, utterances: Sequence[str]) -> list[int]:
        ids: list[int] = []
        bigram_base = 2 + len(self.vocab)
        for utterance in utterances:
            toks = words(utterance)
            for i, w in enumerate(toks):
                ids.append(self._index.get(w, 1))
                if i + 1 < len(toks):
                    ids.append(bigram_base + _bucket(w + " " + toks[i + 1], self.n_bigram_buckets))
        return ids

    def encode(self, utterances: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Utterances of one window -> (max_tokens,) int64 ids and (max_tokens,) bool mask."""
        if isinstance(utterances, str):
            utterances = (utterances,)
        if not all(isinstance(u, str) for u in utterances):
            raise FeatureError("text must be a sequence of str")
        ids = self.token_ids(utterances)[-self.max_tokens:]
        out = np.zeros(self.max_tokens, np.int64)
        mask = np.zeros(self.max_tokens, bool)
        out[: len(ids)] = ids
        mask[: len(ids)] = True
        if not ids:  # an empty utterance still gives one (unknown) token to attend to
            out[0], mask[0] = 1, True
        return out, mask

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int = 2, max_vocab: int = 8000,
            n_bigram_buckets: int = 4096) -> Tokenizer:
        counts = Counter(w for t in texts for w in words(t))
        kept = [w for w, c in counts.most_common(max_vocab) if c >= min_count]
        return cls(vocab=tuple(kept), n_bigram_buckets=n_bigram_buckets)

    def state(self) -> dict[str, Any]:
        """What tokenizer.json and the checkpoint hold (tokenizer_from_state)."""
        state = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return {"kind": COMPACT_KIND, **state, "vocab": list(self.vocab)}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.state(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tokenizer:
        return cls(vocab=tuple(state["vocab"]), n_bigram_buckets=int(state["n_bigram_buckets"]),
                   max_tokens=int(state["max_tokens"]))

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        return cls.from_state(json.loads(Path(path).read_text(encoding="utf-8")))


class TextTokenizer(Protocol):
    """What featurisation needs of a tokenizer: Tokenizer (compact) or
    engines.wordpiece.WordPieceTokenizer (MiniLM)."""

    @property
    def max_tokens(self) -> int: ...

    @property
    def n_ids(self) -> int: ...

    def encode(self, utterances: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def state(self) -> dict[str, Any]: ...

    def save(self, path: Path) -> None: ...


def tokenizer_from_state(state: dict[str, Any]) -> TextTokenizer:
    """A checkpoint's or tokenizer.json's state -> the tokenizer of its "kind".

    States without a kind predate the MiniLM encoder: they are the compact tokenizer's."""
    kind = state.get("kind", COMPACT_KIND)
    if kind == COMPACT_KIND:
        return Tokenizer.from_state(state)
    from engines.wordpiece import KIND as WORDPIECE_KIND
    from engines.wordpiece import WordPieceTokenizer

    if kind == WORDPIECE_KIND:
        return WordPieceTokenizer(vocab=tuple(state["vocab"]),
                                  max_tokens=int(state["max_tokens"]))
    raise FeatureError(f"unknown tokenizer kind {kind!r}")


def load_tokenizer(path: Path) -> TextTokenizer:
    """tokenizer.json of a model directory -> its tokenizer (FeatureError if malformed)."""
    try:
        return tokenizer_from_state(json.loads(Path(path).read_text(encoding="utf-8")))
    except (KeyError, TypeError, ValueError) as exc:
        raise FeatureError(f"{path}: malformed tokenizer file ({exc})") from exc


# ------------------------------------------------------------------------------ window batch
def featurise_windows(windows: Sequence[WindowInputs], modalities: Sequence[str],
                      tokenizer: TextTokenizer | None, audio_speaker_norm: bool = False
                      ) -> dict[str, np.ndarray]:
    """Raw windows -> the live graph's feeds (one batch axis per modality, see engines.live).

    Modality m contributes rows only for windows where it is present and in `modalities`; the
    `present` (B, len(modalities)) mask says which. With `audio_speaker_norm` (a model trained
    so) each log-mel is centred by its window's `audio_centre` (`speaker_centred`). Raises
    FeatureError on malformed input.
    """
    present = np.array([[getattr(w, m) is not None for m in modalities] for w in windows],
                       bool).reshape(len(windows), len(modalities))
    feeds: dict[str, np.ndarray] = {"present": present}
    if "audio" in modalities:
        rows = [log_mel(w.audio) for w in windows if w.audio is not None]
        if audio_speaker_norm:
            centres = [w.audio_centre for w in windows if w.audio is not None]
            rows = [speaker_centred(lm, c) for lm, c in zip(rows, centres, strict=True)]
        feeds["audio_logmel"] = (np.stack(rows) if rows
                                 else np.zeros((0, N_MELS, N_AUDIO_FRAMES), np.float32))
    if "video" in modalities:
        pairs = [face_frames(w.video) for w in windows if w.video is not None]
        feeds["video_frames"] = (np.stack([p[0] for p in pairs]) if pairs
                                 else np.zeros((0, MAX_FACES, FACE_SIZE, FACE_SIZE), np.float32))
        feeds["video_mask"] = (np.stack([p[1] for p in pairs]) if pairs
                               else np.zeros((0, MAX_FACES), bool))
    if "text" in modalities:
        if tokenizer is None:
            raise FeatureError("a text model needs its tokenizer")
        enc = [tokenizer.encode(w.text) for w in windows if w.text is not None]
        n_tok = tokenizer.max_tokens
        feeds["text_ids"] = (np.stack([e[0] for e in enc]) if enc
                             else np.zeros((0, n_tok), np.int64))
        feeds["text_mask"] = (np.stack([e[1] for e in enc]) if enc
                              else np.zeros((0, n_tok), bool))
    return feeds
