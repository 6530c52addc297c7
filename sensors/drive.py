"""`edge-make-drive`: compose a scripted drive from real clips, with its ground truth.

    edge-make-drive --script drives/commute.toml --emodb DATA/emodb/wav \\
        --ckplus DATA/ckplus48 --meld DATA/meld_text/dev_sent_emo.csv --out runs/commute

Writes to --out:
- `audio.wav`       16 kHz mono s16: EmoDB utterances of each segment's emotion, with pauses
- `video.mp4`       640x480 mp4v at `fps`: CK+48 faces of the segment's emotion, upscaled and
                    pasted on a cabin-like background with slow head motion; no face where the
                    script says so (and where CK+ has no such class: neutral)
- `transcript.jsonl` MELD utterances of the segment's emotion, `start_s`/`end_s` in drive time
- `timeline.json`   ground truth: segments (emotion, which modalities carry it, the clips used),
                    scripted faults with the availability reason the runtime must report
- `config.json`     the resolved script and the arguments

The pairing across datasets is synthetic: a German actor's voice, a CK+ subject's face and a
line from Friends share a label, nothing else. Clips are drawn by the script's seed from the
files given, so any speakers' files in the same formats make a drive without code changes.
A class a dataset lacks (EmoDB: surprise; CK+: neutral) leaves that modality without signal in
the segment (silence / no face), which the timeline records.
"""

from __future__ import annotations

import argparse
import csv
import json
import tomllib
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sensors.audio import RATE_HZ, StreamResampler

LABELS = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")
EMODB = {"N": "neutral", "L": "neutral", "F": "happy", "T": "sad", "W": "angry", "A": "fear",
         "E": "disgust"}  # README: boredom may map to neutral
CKPLUS = {"happy": "happy", "sadness": "sad", "anger": "angry", "fear": "fear",
          "disgust": "disgust", "surprise": "surprise"}
MELD = {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry", "fear": "fear",
        "disgust": "disgust", "surprise": "surprise"}
FAULT_KINDS = {"unplugged": "dead", "stalled": "dead", "privacy": "disabled"}
MODALITIES = ("audio", "video", "text")
FACE_PX = 192  # a 48x48 crop upscaled 4x: a driver ~70 cm from a 640x480 cabin camera


@dataclass(frozen=True, kw_only=True)
class Segment:
    emotion: str
    seconds: float
    face: bool = True
    speech: bool = True
    text: bool = True

    def __post_init__(self) -> None:
        if self.emotion not in LABELS:
            raise ValueError(f"segment emotion {self.emotion!r} not in {LABELS}")
        if not 2.0 <= self.seconds <= 600:
            raise ValueError(f"segment of {self.seconds} s (2..600)")


@dataclass(frozen=True, kw_only=True)
class Fault:
    modality: str
    kind: str  # unplugged | stalled | privacy
    start_s: float
    seconds: float

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES or self.kind not in FAULT_KINDS:
            raise ValueError(f"fault {self.modality}/{self.kind}: modality in {MODALITIES}, "
                             f"kind in {tuple(FAULT_KINDS)}")
        if self.start_s < 0 or self.seconds <= 0:
            raise ValueError("fault start_s >= 0 and seconds > 0")


@dataclass(frozen=True, kw_only=True)
class DriveScript:
    name: str
    seed: int = 0
    fps: int = 15
    width: int = 640
    height: int = 480
    gap_s: tuple[float, float] = (0.3, 1.2)  # pause between utterances
    emodb_speakers: tuple[str, ...] = ()  # () = every speaker in --emodb
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    faults: tuple[Fault, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a drive needs at least one [[segment]]")
        if not 1 <= self.fps <= 60 or self.width < FACE_PX + 64 or self.height < FACE_PX + 64:
            raise ValueError("fps 1..60 and a frame larger than the face")
        total = self.duration_s
        for f in self.faults:
            if f.start_s + f.seconds > total:
                raise ValueError(f"fault {f} ends after the drive ({total} s)")

    @property
    def duration_s(self) -> float:
        return float(sum(s.seconds for s in self.segments))

    @classmethod
    def load(cls, path: Path) -> DriveScript:
        raw = tomllib.loads(path.read_text())
        drive = dict(raw.get("drive", {}))
        for key in ("gap_s", "emodb_speakers"):
            if key in drive:
                drive[key] = tuple(drive[key])
        return cls(
            **drive,
            segments=tuple(Segment(**s) for s in raw.get("segment", [])),
            faults=tuple(Fault(**f) for f in raw.get("fault", [])),
        )


# -- sources ------------------------------------------------------------------------------
def _emodb_clips(wav_dir: Path, speakers: tuple[str, ...]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {label: [] for label in LABELS}
    for p in sorted(wav_dir.glob("*.wav")):
        code = p.stem[5:6]
        if code in EMODB and (not speakers or p.stem[:2] in speakers):
            out[EMODB[code]].append(p)
    return out


def _ckplus_faces(ck_dir: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {label: [] for label in LABELS}
    for folder, label in CKPLUS.items():
        out[label] = sorted((ck_dir / folder).glob("*.png"))
    return out


def _meld_lines(csv_path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {label: [] for label in LABELS}
    with csv_path.open(newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            text = row["Utterance"].replace("\u2019", "'").replace("\x92", "'")
            text = " ".join(text.split())
            label = MELD.get(row["Emotion"].strip().lower())
            if label and 3 <= len(text.split()) <= 25:
                out[label].append(text)
    return out


def _read_wav_16k(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: not 16-bit PCM")
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            x = x.reshape(-1, w.getnchannels())[:, 0].copy()
        rate = w.getframerate()
    if rate != RATE_HZ:
        x = StreamResampler(rate, RATE_HZ).process(np.concatenate([x, np.zeros(64, np.int16)]))
    # EmoDB copies here are zero-padded to 2.0 s: trim the digital silence at the end.
    nz = np.flatnonzero(np.abs(x) > 8)
    return x[: nz[-1] + 1] if len(nz) else x[:0]


# -- media --------------------------------------------------------------------------------
def _background(script: DriveScript, rng: np.random.Generator) -> np.ndarray:
    """A cabin-ish backdrop: a vertical gradient (headliner to seat) with a window patch."""
    h, w = script.height, script.width
    grad = np.linspace(70, 140, h)[:, None] * np.ones((1, w))
    grad[: h // 3, : w // 4] += 60  # side window glare
    bg = grad + rng.normal(0, 4, (h, w))
    return np.clip(bg, 0, 255).astype(np.uint8)


def _build(script: DriveScript, emodb: Path, ckplus: Path, meld: Path, out: Path) -> dict:
    import cv2

    rng = np.random.default_rng(script.seed)
    clips, faces, lines = _emodb_clips(emodb, script.emodb_speakers), _ckplus_faces(ckplus), \
        _meld_lines(meld)
    n_audio = round(script.duration_s * RATE_HZ)
    audio = np.zeros(n_audio, np.int16)
    utterances: list[dict[str, Any]] = []
    seg_rows: list[dict[str, Any]] = []
    face_plan: list[tuple[float, float, Path]] = []  # (start, end, face file)
    t = 0.0
    for seg in script.segments:
        start, end = t, t + seg.seconds
        row: dict[str, Any] = {**asdict(seg), "start_s": start, "end_s": end,
                               "audio_clips": [], "faces": [], "lines": []}
        # audio: clips back to back with pauses, only whole clips inside the segment
        if seg.speech and clips[seg.emotion]:
            pos = start + float(rng.uniform(*script.gap_s))
            while True:
                path = clips[seg.emotion][int(rng.integers(len(clips[seg.emotion])))]
                x = _read_wav_16k(path)
                if pos + len(x) / RATE_HZ > end - 0.1:
                    break
                i = round(pos * RATE_HZ)
                audio[i:i + len(x)] = x
                row["audio_clips"].append({"file": path.name, "start_s": round(pos, 3),
                                           "end_s": round(pos + len(x) / RATE_HZ, 3)})
                pos += len(x) / RATE_HZ + float(rng.uniform(*script.gap_s))
        row["speech"] = bool(row["audio_clips"])
        # video: a face image held ~2-4 s (one posed expression), then another of the class
        if seg.face and faces[seg.emotion]:
            ft = start
            while ft < end:
                hold = float(rng.uniform(2.0, 4.0))
                path = faces[seg.emotion][int(rng.integers(len(faces[seg.emotion])))]
                face_plan.append((ft, min(end, ft + hold), path))
                row["faces"].append(path.name)
                ft += hold
        row["face"] = bool(row["faces"])
        # text: a line every few seconds, ~2.5 words/s of speaking time
        if seg.text and lines[seg.emotion]:
            lt = start + float(rng.uniform(0.5, 2.0))
            while True:
                text = lines[seg.emotion][int(rng.integers(len(lines[seg.emotion])))]
                dur = max(0.8, len(text.split()) / 2.5)
                if lt + dur > end - 0.1:
                    break
                utterances.append({"start_s": round(lt, 3), "end_s": round(lt + dur, 3),
                                   "text": text})
                row["lines"].append(text)
                lt += dur + float(rng.uniform(1.5, 4.0))
        row["text"] = bool(row["lines"])
        seg_rows.append(row)
        t = end

    with wave.open(str(out / "audio.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(audio.astype("<i2").tobytes())
    with (out / "transcript.jsonl").open("w") as f:
        for u in utterances:
            f.write(json.dumps(u, ensure_ascii=False) + "\n")

    writer = cv2.VideoWriter(str(out / "video.mp4"), cv2.VideoWriter.fourcc(*"mp4v"),
                             script.fps, (script.width, script.height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v here")
    bg = _background(script, rng)
    cache: dict[Path, np.ndarray] = {}
    n_frames = round(script.duration_s * script.fps)
    k = 0
    for i in range(n_frames):
        ft = i / script.fps
        while k < len(face_plan) and face_plan[k][1] <= ft:
            k += 1
        frame = bg.copy()
        if k < len(face_plan) and face_plan[k][0] <= ft:
            path = face_plan[k][2]
            if path not in cache:
                img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                if img is None:
                    raise ValueError(f"{path}: not an image OpenCV can read")
                cache[path] = cv2.resize(img, (FACE_PX, FACE_PX), interpolation=cv2.INTER_CUBIC)
            # slow head motion: a few pixels of sway, like a driver checking mirrors
            cx = script.width // 2 - FACE_PX // 2 + round(25 * np.sin(ft * 0.7))
            cy = script.height // 2 - FACE_PX // 2 + round(12 * np.sin(ft * 0.45 + 1.0))
            frame[cy:cy + FACE_PX, cx:cx + FACE_PX] = cache[path]
        noise = rng.integers(0, 3, frame.shape, dtype=np.uint8)
        writer.write(cv2.cvtColor(cv2.add(frame, noise), cv2.COLOR_GRAY2BGR))  # saturating
    writer.release()

    return {
        "name": script.name,
        "seed": script.seed,
        "duration_s": script.duration_s,
        "labels": list(LABELS),
        "fps": script.fps,
        "audio_rate_hz": RATE_HZ,
        "segments": seg_rows,
        "faults": [{**asdict(f), "end_s": f.start_s + f.seconds,
                    "expect": FAULT_KINDS[f.kind]} for f in script.faults],
        "pairing": "synthetic: EmoDB voice, CK+ face and MELD line share only the label",
        "sources": {"emodb": str(emodb), "ckplus": str(ckplus), "meld": str(meld)},
    }


def make_drive(script: DriveScript, *, emodb: Path, ckplus: Path, meld: Path, out: Path) -> dict:
    """Build the drive's media and ground truth under `out`; returns the timeline."""
    for p, what in ((emodb, "--emodb"), (ckplus, "--ckplus"), (meld, "--meld")):
        if not p.exists():
            raise FileNotFoundError(f"{what} {p} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    timeline = _build(script, emodb, ckplus, meld, out)
    (out / "timeline.json").write_text(json.dumps(timeline, indent=1))
    config = {"script": asdict(script), "emodb": str(emodb), "ckplus": str(ckplus),
              "meld": str(meld)}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return timeline


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-make-drive", description=__doc__.split("\n")[0])
    ap.add_argument("--script", type=Path, required=True, help="drive script (TOML)")
    ap.add_argument("--emodb", type=Path, required=True, help="folder of EmoDB-named WAVs")
    ap.add_argument("--ckplus", type=Path, required=True, help="CK+48 folder (one per class)")
    ap.add_argument("--meld", type=Path, required=True, help="MELD *_sent_emo.csv")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        script = DriveScript.load(args.script)
        tl = make_drive(script, emodb=args.emodb, ckplus=args.ckplus, meld=args.meld,
                        out=args.out)
    except (ValueError, FileNotFoundError, tomllib.TOMLDecodeError, TypeError) as e:
        ap.error(str(e))
    n = {m: sum(bool(s[k]) for s in tl["segments"])
         for m, k in (("audio", "speech"), ("video", "face"), ("text", "text"))}
    print(f"{tl['name']}: {tl['duration_s']:.0f} s, {len(tl['segments'])} segments "
          f"(with speech {n['audio']}, face {n['video']}, text {n['text']}), "
          f"{len(tl['faults'])} faults -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
