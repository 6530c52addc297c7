"""Deterministic synthetic sensors, one per modality, paced in real time.

The *content* of sample k depends only on (seed, k): two runs with the same seed produce the
same audio blocks, face crops and utterances, whatever the machine. The *stamps* are the
capture clock's, like a real device. A slowly changing "mood" (one of the product labels,
switching every `mood_s` seconds) shapes each modality, so estimates move over a demo drive.

- audio: int16 mono 16 kHz blocks (`block_ms`, default 100 ms): tones whose pitch and
  loudness follow the mood, plus noise.
- video: 48x48 uint8 face-like crops at `fps` (default 10): an oval, eyes, a mouth whose
  curve follows the mood, plus noise.
- text:  an utterance every `utterance_every_s` (default 3 s) and, in between, "empty"
  samples (alive, nobody talking) every 500 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.clock import monotonic_ns, wall_ns
from sensors.base import Sample, Sensor, SensorError

MOODS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")
PHRASES: dict[str, tuple[str, ...]] = {
    "neutral": ("Turn left at the next junction.", "What is the weather tomorrow?"),
    "happy": ("This is a great song, turn it up!", "I love this road, what a view."),
    "sad": ("I miss them so much.", "Nothing ever works out for me."),
    "angry": ("Get out of my lane, you idiot!", "Why is this traffic always so awful!"),
    "fear": ("Watch out, that truck is too close!", "I am scared we will skid on the ice."),
    "disgust": ("Ugh, what is that smell?", "That is revolting, close the window."),
    "surprise": ("Wow, I did not expect that at all!", "No way, is that really them?"),
}
AUDIO_RATE_HZ = 16_000
FACE = 48


class SyntheticSensor(Sensor):
    """Base: sample k is due at start + k * period and built by `make(k, rng)`."""

    period_ns: int

    def __init__(
        self,
        *,
        seed: int = 0,
        mood_s: float = 4.0,
        clock: Callable[[], int] = monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.seed = seed
        self.mood_s = mood_s
        self._clock = clock  # tests inject a fake clock and a sleep that advances it
        self._sleep = sleep
        self._start_ns: int | None = None
        self._index = 0

    def connect(self) -> None:
        self._start_ns = self._clock()
        self._index = 0

    def close(self) -> None:
        self._start_ns = None

    def mood(self, index: int) -> str:
        t_s = index * self.period_ns / 1e9
        return MOODS[(int(t_s // self.mood_s) + self.seed) % len(MOODS)]

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, MOODS.index(self.mood(index))])

    def read(self, timeout_s: float) -> Sample | None:
        if self._start_ns is None:
            raise SensorError("not connected")
        due = self._start_ns + self._index * self.period_ns
        wait_s = (due - self._clock()) / 1e9
        if wait_s > timeout_s:
            self._sleep(timeout_s)
            return None
        if wait_s > 0:
            self._sleep(wait_s)
        index = self._index
        self._index += 1
        return self.make(index, self.rng(index), t_mono_ns=self._clock(), t_wall_ns=wall_ns())

    def make(
        self, index: int, rng: np.random.Generator, *, t_mono_ns: int, t_wall_ns: int
    ) -> Sample:
        raise NotImplementedError


class SyntheticAudio(SyntheticSensor):
    modality = "audio"

    def __init__(self, *, block_ms: int = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block = AUDIO_RATE_HZ * block_ms // 1000
        self.period_ns = block_ms * 1_000_000

    def make(
        self, index: int, rng: np.random.Generator, *, t_mono_ns: int, t_wall_ns: int
    ) -> Sample:
        mood_i = MOODS.index(self.mood(index))
        t = (index * self.block + np.arange(self.block)) / AUDIO_RATE_HZ
        pitch = 110.0 + 35.0 * mood_i
        loud = 2000.0 + 1500.0 * (mood_i % 3)
        wave = loud * np.sin(2 * np.pi * pitch * t) + 0.4 * loud * np.sin(
            2 * np.pi * 2.5 * pitch * t
        )
        wave += rng.normal(0.0, 300.0, self.block)
        data = np.clip(wave, -32768, 32767).astype(np.int16)
        return Sample(data=data, t_mono_ns=t_mono_ns, t_wall_ns=t_wall_ns)


class SyntheticVideo(SyntheticSensor):
    modality = "video"

    def __init__(self, *, fps: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.period_ns = int(1e9 / fps)
        yy, xx = np.mgrid[0:FACE, 0:FACE].astype(np.float32)
        self._yy, self._xx = yy, xx
        self._face = ((xx - 24) / 17) ** 2 + ((yy - 25) / 21) ** 2 <= 1.0
        self._eyes = (((xx - 17) ** 2 + (yy - 19) ** 2) <= 6) | (
            ((xx - 31) ** 2 + (yy - 19) ** 2) <= 6
        )

    def make(
        self, index: int, rng: np.random.Generator, *, t_mono_ns: int, t_wall_ns: int
    ) -> Sample:
        mood_i = MOODS.index(self.mood(index))
        img = np.full((FACE, FACE), 40.0, np.float32) + self._yy  # background gradient
        img[self._face] = 170.0
        img[self._eyes] = 30.0
        curve = (mood_i - 3) / 3.0  # -1 (frown) .. +1 (smile)
        mouth_y = 33 + curve * ((self._xx - 24) / 8) ** 2 * 3 - curve * 3
        mouth = (np.abs(self._yy - mouth_y) <= 1.2) & (np.abs(self._xx - 24) <= 8)
        img[mouth] = 60.0
        img += rng.normal(0.0, 6.0, img.shape)
        data = np.clip(img, 0, 255).astype(np.uint8)
        return Sample(data=data, t_mono_ns=t_mono_ns, t_wall_ns=t_wall_ns)


class SyntheticText(SyntheticSensor):
    modality = "text"

    def __init__(self, *, utterance_every_s: float = 3.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.period_ns = 500_000_000
        self.every = max(1, round(utterance_every_s / 0.5))

    def make(
        self, index: int, rng: np.random.Generator, *, t_mono_ns: int, t_wall_ns: int
    ) -> Sample:
        if index % self.every != self.every // 2:
            return Sample(
                data=np.empty(0, np.uint8), t_mono_ns=t_mono_ns, t_wall_ns=t_wall_ns, state="empty"
            )
        phrases = PHRASES[self.mood(index)]
        text = phrases[int(rng.integers(len(phrases)))]
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return Sample(data=data, t_mono_ns=t_mono_ns, t_wall_ns=t_wall_ns, encoding="utf-8")
