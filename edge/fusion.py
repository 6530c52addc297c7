"""The daemon's pure core: envelopes in, estimates out, time injected.

`FusionCore.ingest` takes decoded sensor envelopes (validating that each payload is what its
modality's front-end expects), `FusionCore.step(now)` closes due windows, asks the watchdog
for each link's state as of the window's close, builds `WindowInputs` from the modalities that
are available, runs the backend and returns one estimate document per window. No sockets,
threads or clocks: the daemon (`edge.daemon`) is the I/O shell around it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.config import DaemonConfig
from edge.watchdog import Watchdog
from edge.windowing import Window, Windower
from edge.wire import Envelope, WireError
from engines.backend import (
    AUDIO_RATE_HZ,
    FACE_SIZE,
    Backend,
    Prediction,
    WindowInputs,
    pattern_key,
)
from engines.features import SpeakerNormaliser, log_mel

# The part of an estimate that is a function of the recorded stamps and payloads alone:
# replaying a recording must reproduce these bit for bit. The rest (seq, latency, counters)
# measures the run that produced it.
CONTENT_KEYS: tuple[str, ...] = (
    "t_start_ns",
    "t_end_ns",
    "probs",
    "label",
    "confidence",
    "availability",
    "used",
    "pattern",
    "router",
    "frames",
)
MAX_TEXT_BYTES = 4096  # one utterance


def check_payload(envelope: Envelope) -> Any:
    """The frame's payload in the form the window keeps, or WireError("bad_payload")."""
    header, payload = envelope.header, envelope.payload
    modality = header.modality
    if modality == "audio":
        if header.dtype != "int16" or payload.ndim != 1 or payload.size > AUDIO_RATE_HZ * 10:
            got = f"{header.dtype}{header.shape}"
            raise WireError("bad_payload", f"audio must be 1-D int16, got {got}")
        return payload
    if modality == "video":
        ok_shape = payload.shape[-2:] == (FACE_SIZE, FACE_SIZE) and payload.ndim in (2, 3)
        if header.dtype != "uint8" or not ok_shape:
            raise WireError("bad_payload", f"video must be uint8 (n,48,48), got {header.shape}")
        return payload.reshape(-1, FACE_SIZE, FACE_SIZE)
    if modality == "text":
        if header.encoding != "utf-8" or payload.ndim != 1 or payload.size > MAX_TEXT_BYTES:
            raise WireError("bad_payload", "text must be a utf-8 uint8 vector")
        return envelope.text()
    raise WireError("bad_payload", f"no frames expected on {modality}")


def availability(modality: str, link_state: str, n_frames: int) -> str:
    """Why a modality is (not) in a window: disabled and dead win; frames make it ok;
    otherwise the link says empty, or it is alive but sending nothing (stale)."""
    if link_state in ("disabled", "dead"):
        return link_state
    if n_frames > 0:
        return "ok"
    return "empty" if link_state == "empty" else "stale"


@dataclass(frozen=True, kw_only=True)
class ClosedWindow:
    """A window at its close: its frames, each modality's availability and the links' health
    as judged for it, and the modalities the model is to see."""

    window: Window
    availability: dict[str, str]
    used: tuple[str, ...]
    links: dict[str, dict[str, Any]]
    audio_centre: np.ndarray | None = None  # the speaker's centre before this window, if kept


@dataclass(frozen=True, kw_only=True)
class Inference:
    """The model's answer for one closed window, or why there is none."""

    prediction: Prediction | None  # None: the backend raised (error, error_type say what)
    error: str | None = None
    error_type: str = ""
    infer_ms: float = 0.0  # time spent in the model after the close
    precomputed: bool = False
    ahead_ms: float = 0.0  # time the model spent ahead of the close, when precomputed


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A window's model answer computed before its close (`FusionCore.precompute`)."""

    end_ns: int
    inputs_key: tuple[Any, ...]  # what entered the model (payload ids among it)
    window: Window  # keeps those payloads alive, so their ids stay unique until the close
    prediction: Prediction
    ms: float  # the model's time


def run_model(backend: Backend, closed: ClosedWindow) -> Inference:
    """Run the model on a closed window. Touches nothing but the backend, so a thread-safe
    backend may run several windows at once (replay); `FusionCore.finish` takes them in order."""
    started = time.perf_counter()
    try:
        prediction = backend.predict(window_inputs(closed.window, closed.used,
                                                   closed.audio_centre))
    except Exception as exc:  # counted by finish; the prior is published instead
        return Inference(prediction=None, error=f"{type(exc).__name__}: {exc}"[:200],
                         error_type=type(exc).__name__,
                         infer_ms=(time.perf_counter() - started) * 1000)
    return Inference(prediction=prediction, infer_ms=(time.perf_counter() - started) * 1000)


def _used(avail: dict[str, str]) -> tuple[str, ...]:
    return tuple(m for m, reason in avail.items() if reason == "ok")


def _inputs_key(window: Window, used: tuple[str, ...],
                audio_centre: np.ndarray | None) -> tuple[Any, ...]:
    """What decides the model's input for `window`: the used modalities and, for each, its
    frames' stamps and identities (payloads are never mutated, and an overflowed, late or
    duplicated frame changes the stamps or the identities), and the speaker centre (settled
    before a window's precompute, as the window before it has closed: checked all the same)."""
    return used, tuple(
        (tuple(window.stamps[m]), tuple(id(p) for p in window.frames[m])) for m in used), (
        None if audio_centre is None else audio_centre.tobytes())


def window_inputs(window: Window, used: tuple[str, ...],
                  audio_centre: np.ndarray | None = None) -> WindowInputs:
    audio = video = text = None
    if "audio" in used:
        audio = np.concatenate(window.frames["audio"]).astype(np.int16, copy=False)
    if "video" in used:
        video = np.concatenate(window.frames["video"], axis=0)
    if "text" in used:
        text = tuple(window.frames["text"])
    return WindowInputs(audio=audio, video=video, text=text, audio_centre=audio_centre)


class FusionCore:
    def __init__(self, config: DaemonConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.modalities = config.modalities
        self.watchdog = Watchdog(config.watchdog, config.modalities, disabled=config.disabled)
        self.windower = Windower(config.window, config.modalities)
        self.rejected: Counter[str] = Counter()  # reason -> count (bad payloads, late, ...)
        self.ignored = 0  # well-formed messages the core has no use for (estimates, ...)
        self.seq = 0
        # The model's answer for the next window, computed ahead of its close (`precompute`).
        self._ahead: _Ahead | None = None
        self._ahead_tried_end_ns: int | None = None
        self.precompute_hits = 0
        self.precompute_misses = 0
        # A model trained on speaker-centred audio gets the centre of this stream's past audio
        # (the driver's voice), updated at each close, in window order: so live and replay
        # hand every window the same centre. One 2 s tile of audio in window/hop windows
        # updates it, so each stretch of audio counts once and costs one extra log-mel.
        self.speaker_norm = (SpeakerNormaliser() if "audio" in self.modalities
                             and getattr(backend, "audio_speaker_norm", False) else None)
        self._tile_every = config.window.window_ms // config.window.hop_ms  # a multiple
        self._hop_ns = config.window.hop_ms * 1_000_000

    def ingest(self, envelope: Envelope, now_ns: int) -> None:
        """Take one decoded message. Raises WireError for a frame whose payload is unusable."""
        header = envelope.header
        if header.kind not in ("frame", "heartbeat") or header.modality not in self.modalities:
            self.ignored += 1
            return
        if header.t_mono_ns > now_ns + self.config.window.max_future_ms * 1_000_000:
            raise WireError("future_stamp", f"{header.t_mono_ns - now_ns} ns ahead")
        payload = check_payload(envelope) if header.kind == "frame" else None
        self.watchdog.observe(
            header.modality,
            sensor=header.sensor,
            kind=header.kind,
            seq=header.seq,
            t_ns=header.t_mono_ns,
            state=header.state,
        )
        if payload is not None and header.modality not in self.config.disabled:
            verdict = self.windower.add(header.modality, header.t_mono_ns, payload, now_ns)
            if verdict != "ok":
                self.rejected[verdict] += 1

    def step(self, now_ns: int) -> list[dict[str, Any]]:
        """Estimates for every window due at `now_ns`, oldest first."""
        return [self.finish(closed, self.infer(closed)) for closed in self.close(now_ns)]

    def close(self, now_ns: int) -> list[ClosedWindow]:
        """Close every window due at `now_ns`, oldest first, judging its links. The model has
        not run yet: `infer` (or `run_model`, on any thread) and then `finish`, in order."""
        closed = []
        for window in self.windower.due(now_ns):
            avail = self._availability(window, window.judged_ns)
            used = _used(avail)
            closed.append(ClosedWindow(window=window, availability=avail, used=used,
                                       links=self.links(window),
                                       audio_centre=self._speaker_centre(window, used)))
        return closed

    def _speaker_centre(self, window: Window, used: tuple[str, ...]) -> np.ndarray | None:
        """The centre for `window` (from earlier windows only), then this window's update."""
        if self.speaker_norm is None:
            return None
        centre = self.speaker_norm.centre()
        if "audio" in used and (window.end_ns // self._hop_ns) % self._tile_every == 0:
            samples = np.concatenate(window.frames["audio"]).astype(np.int16, copy=False)
            self.speaker_norm.update(log_mel(samples))
        return centre

    def next_precompute_ns(self) -> int | None:
        """When `precompute` has work next; None when it is off or done for the next window."""
        due = self.windower.next_precompute_ns()
        return None if self._ahead_tried_end_ns == self.windower.next_end_ns else due

    def precompute(self, now_ns: int) -> None:
        """Live only: run the model for the next window on what it holds now, once `now` is
        `precompute_after_ms` past its end, so that at the close (`infer`) only a check that
        nothing changed remains. A frame or link change in between makes the close run the
        model again: the estimate is the same either way, only its latency differs."""
        due = self.windower.next_precompute_ns()
        window = self.windower.peek()
        if due is None or window is None or now_ns < due:
            return
        if self._ahead_tried_end_ns == window.end_ns:
            return  # once per window
        self._ahead_tried_end_ns = window.end_ns
        self._ahead = None
        used = _used(self._availability(window, now_ns))
        centre = self.speaker_norm.centre() if self.speaker_norm is not None else None
        started = time.perf_counter()
        try:
            prediction = self.backend.predict(window_inputs(window, used, centre))
        except Exception:
            return  # the close runs it again and counts the failure there
        ahead_ms = (time.perf_counter() - started) * 1000
        self._ahead = _Ahead(window.end_ns, _inputs_key(window, used, centre), window,
                             prediction, ahead_ms)

    def _availability(self, window: Window, judged_ns: int) -> dict[str, str]:
        return {
            m: availability(m, self.watchdog.state_at(m, judged_ns), len(window.frames[m]))
            for m in self.modalities
        }

    def infer(self, closed: ClosedWindow) -> Inference:
        """The model's answer for a closed window: the precomputed one if its inputs are
        unchanged, else the model runs now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.end_ns == closed.window.end_ns:
            if ahead.inputs_key == _inputs_key(closed.window, closed.used,
                                               closed.audio_centre):
                self.precompute_hits += 1
                return Inference(prediction=ahead.prediction, precomputed=True,
                                 ahead_ms=ahead.ms)
            self.precompute_misses += 1
        return run_model(self.backend, closed)

    def finish(self, closed: ClosedWindow, inference: Inference) -> dict[str, Any]:
        """The estimate document of a closed window, given the model's answer."""
        window, used, error = closed.window, closed.used, inference.error
        prediction = inference.prediction
        if prediction is None:  # a window the model cannot take must not stop the daemon
            self.rejected[f"backend:{inference.error_type}"] += 1
            used = ()
            prediction = self._prior()
        # what actually entered the model (a model may ignore a modality it was not trained on)
        final_used = tuple(prediction.used) if prediction.used or error else used
        probs = [float(p) for p in np.asarray(prediction.probs, dtype=np.float64)]
        best = int(np.argmax(probs))
        self.seq += 1
        return {
            "seq": self.seq,
            "t_start_ns": window.start_ns,
            "t_end_ns": window.end_ns,
            "t_close_ns": window.close_ns,
            "probs": dict(zip(self.backend.labels, probs, strict=True)),
            "label": self.backend.labels[best],
            "confidence": probs[best],
            "availability": closed.availability,
            "used": list(final_used),
            "pattern": pattern_key(final_used),
            "router": {
                m: {e: float(w) for e, w in weights.items()}
                for m, weights in prediction.router.items()
            },
            "frames": {m: len(window.frames[m]) for m in self.modalities},
            "newest_frame_ns": window.newest_stamp_ns(),
            "backend": self.backend.name,
            "error": error,
            "infer_ms": inference.infer_ms,  # the model's time after the close (not content)
            "precomputed": inference.precomputed,  # it ran ahead of the close on these inputs
            "ahead_ms": inference.ahead_ms,  # the model's time before the close (not content)
            "links": closed.links,
        }

    def links(self, window: Window) -> dict[str, dict[str, Any]]:
        """Per-link health when the window was judged (what edge-dash shows per link)."""
        t = window.judged_ns
        window_s = (window.end_ns - window.start_ns) / 1e9
        counters = self.watchdog.counters()
        out = {}
        for m in self.modalities:
            last = self.watchdog.last_at_or_before(m, t)
            last_frame = self.watchdog.last_at_or_before(m, t, frames_only=True)
            c = counters[m]
            out[m] = {
                "modality": m,
                "state": self.watchdog.state_at(m, t),
                "heartbeat_age_ms": None if last is None else (t - last) / 1e6,
                "frame_age_ms": None if last_frame is None else (t - last_frame) / 1e6,
                "frame_rate_hz": len(window.frames[m]) / window_s,
                "received": c.frames + c.heartbeats,
                "lost": c.lost,
                "restarts": c.restarts,
            }
        return out

    def _prior(self) -> Prediction:
        """What the model says with nothing present; uniform if even that fails."""
        try:
            return self.backend.predict(WindowInputs())
        except Exception:
            n = len(self.backend.labels)
            return Prediction(probs=np.full(n, 1.0 / n))

    def health(self) -> dict[str, Any]:
        counters = self.watchdog.counters()
        wc = self.windower.counters
        return {
            "lost": {m: c.lost for m, c in counters.items()},
            "restarts": {m: c.restarts for m, c in counters.items()},
            "duplicates": {m: c.duplicates for m, c in counters.items()},
            "late": wc.late,
            "future": wc.future,
            "overflow": wc.overflow,
            "skipped_windows": wc.skipped_windows,
            "precompute": {"hits": self.precompute_hits, "misses": self.precompute_misses},
            "speaker_norm_windows": (None if self.speaker_norm is None
                                     else round(self.speaker_norm.count, 1)),
            "rejected": dict(self.rejected),
            "ignored": self.ignored,
        }
