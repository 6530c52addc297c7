"""Does the speaker normaliser's centre come out the same on a drive as in training?

Training centres each EmoDB clip by the voiced band mean of the speaker's earlier *clips*
(mostly speech); the daemon centres by the speaker's earlier 2 s *tiles* of one stream, which
hold the pauses between utterances too. The two centres must agree, or every live window sits
off what the model was trained on. This strings each speaker's clips into a stream with
seeded pauses (quiet noise, 0.3-1.2 s, as `drives/*.toml` use), cuts 2 s tiles, and compares the
tiles' centre with the clips' centre, for the shipped voiced-frame rule
(`engines.features.voiced_band_mean`: within VOICED_PEAK_DROP nats of the window's peak) and
the quantile rule it replaced (frames above the window's 30th energy percentile). No labels
are used. With --drive-wav, the same comparison for a real drive's audio and one speaker.

    .venv/bin/python bench/voiced_cut.py [--exclude 14] \
        [--drive-wav runs/commute1/audio.wav --speaker 14]
"""

from __future__ import annotations

import argparse
import json
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from engines.datasets import emodb_windows  # noqa: E402
from engines.features import AUDIO_WINDOW_SAMPLES, log_mel, voiced_band_mean  # noqa: E402

CentreRule = Callable[[np.ndarray], "np.ndarray | None"]


def quantile_rule(logmel: np.ndarray) -> np.ndarray | None:
    """The rule before: the speech gate of voiced_band_mean, then frames above the 30th
    energy percentile."""
    if voiced_band_mean(logmel) is None:
        return None
    energy = logmel.mean(0)
    return logmel[:, energy > np.percentile(energy, 30)].mean(1)


RULES: dict[str, CentreRule] = {"30th percentile (before)": quantile_rule,
                                "peak - VOICED_PEAK_DROP (shipped)": voiced_band_mean}


def centre(units: list[np.ndarray], rule: CentreRule) -> np.ndarray:
    """Mean over the units (clips or tiles) that hold speech, as SpeakerNormaliser keeps it."""
    means = [m for m in (rule(log_mel(u)) for u in units) if m is not None]
    return np.mean(means, axis=0)


def tiles(stream: np.ndarray) -> list[np.ndarray]:
    n = AUDIO_WINDOW_SAMPLES
    return [stream[i:i + n] for i in range(0, stream.size - n + 1, n)]


def strung(clips: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    parts = []
    for clip in clips:
        pause = rng.normal(0.0, 30.0, int(rng.uniform(0.3, 1.2) * 16000))
        parts += [clip, pause.astype(np.int16)]
    return np.concatenate(parts)


def offsets(clips: list[np.ndarray], stream: np.ndarray) -> dict[str, dict[str, float]]:
    """Per rule: tiles' centre minus clips' centre, mean over bands and its spread."""
    out = {}
    for name, rule in RULES.items():
        diff = centre(tiles(stream), rule) - centre(clips, rule)
        out[name] = {"mean_nats": float(diff.mean()), "shape_std_nats": float(diff.std())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emodb", type=Path, default=REPO.parent / "shared/data/emodb/wav")
    parser.add_argument("--exclude", nargs="*", default=["14"],
                        help="speakers left out of the strung-clips check (the one-voice drive's)")
    parser.add_argument("--drive-wav", type=Path, help="a drive's 16 kHz mono int16 audio.wav")
    parser.add_argument("--speaker", help="the EmoDB speaker the drive's clips come from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/voiced_cut.json")
    args = parser.parse_args(argv)

    raw = emodb_windows(args.emodb)
    by_speaker: dict[str, list[np.ndarray]] = {}
    for w, spk in zip(raw.windows, raw.groups, strict=True):
        if w.audio is not None:
            by_speaker.setdefault(str(spk), []).append(w.audio)
    rng = np.random.default_rng(args.seed)
    per_speaker = {spk: offsets(clips, strung(clips, rng))
                   for spk, clips in sorted(by_speaker.items()) if spk not in args.exclude}
    result: dict[str, object] = {"strung_clips": per_speaker, "seed": args.seed}
    print(f"{'rule':36s} {'mean offset':>12s} {'mean |offset|':>14s} {'shape std':>10s}")
    for name in RULES:
        rows = [per_speaker[s][name] for s in per_speaker]
        summary = {"mean_nats": float(np.mean([r["mean_nats"] for r in rows])),
                   "mean_abs_nats": float(np.mean([abs(r["mean_nats"]) for r in rows])),
                   "shape_std_nats": float(np.mean([r["shape_std_nats"] for r in rows]))}
        result[f"summary: {name}"] = summary
        print(f"{name:36s} {summary['mean_nats']:+12.3f} {summary['mean_abs_nats']:14.3f} "
              f"{summary['shape_std_nats']:10.3f}   ({len(rows)} speakers, strung clips)")
    if args.drive_wav and args.speaker:
        with wave.open(str(args.drive_wav)) as f:
            stream = np.frombuffer(f.readframes(f.getnframes()), np.int16)
        drive = offsets(by_speaker[args.speaker], stream)
        result["drive"] = {"wav": str(args.drive_wav), "speaker": args.speaker, **drive}
        for name, r in drive.items():
            print(f"{name:36s} {r['mean_nats']:+12.3f} {abs(r['mean_nats']):14.3f} "
                  f"{r['shape_std_nats']:10.3f}   (drive, speaker {args.speaker})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
