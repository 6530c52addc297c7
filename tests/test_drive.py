"""edge-make-drive on the real clips: media where the timeline says, decodable, reproducible."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from sensors.camera import CameraConfig, FaceCropper  # noqa: E402
from sensors.drive import DriveScript, main, make_drive  # noqa: E402

SCRIPT = """
[drive]
name = "tiny"
seed = {seed}
fps = 10

[[segment]]
emotion = "angry"
seconds = 6

[[segment]]
emotion = "happy"
seconds = 5
face = false

[[segment]]
emotion = "surprise"
seconds = 5
speech = false

[[fault]]
modality = "audio"
kind = "privacy"
start_s = 2
seconds = 3
"""


def _build(shared_data: Path, out: Path, seed: int = 3) -> dict:
    script_path = out.with_suffix(".toml")
    script_path.write_text(SCRIPT.format(seed=seed))
    return make_drive(DriveScript.load(script_path), emodb=shared_data / "emodb" / "wav",
                      ckplus=shared_data / "ckplus48",
                      meld=shared_data / "meld_text" / "dev_sent_emo.csv", out=out)


@pytest.fixture(scope="module")
def drive(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("drive") / "tiny"
    return out, _build(shared_data, out)


@pytest.mark.data
@pytest.mark.timeout(120)
def test_audio_holds_the_emotions_clips_where_the_timeline_says(drive: tuple[Path, dict]) -> None:
    out, tl = drive
    with wave.open(str(out / "audio.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 1, 2)
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert len(x) == 16 * 16_000
    seg_angry, seg_happy, seg_surprise = tl["segments"]
    assert seg_angry["audio_clips"] and seg_happy["audio_clips"]
    assert not seg_surprise["audio_clips"] and not seg_surprise["speech"]
    voiced = np.zeros(len(x), bool)
    for seg in (seg_angry, seg_happy):
        assert seg["start_s"] <= seg["audio_clips"][0]["start_s"]
        for c in seg["audio_clips"]:
            assert c["file"][5] == {"angry": "W", "happy": "F"}[seg["emotion"]]  # EmoDB code
            assert c["end_s"] <= seg["end_s"]
            a, b = round(c["start_s"] * 16_000), round(c["end_s"] * 16_000)
            assert np.abs(x[a:b]).max() > 1000  # real speech there
            voiced[a - 16:b + 16] = True  # stamps are rounded to 1 ms
    assert np.all(x[~voiced] == 0)  # and nothing anywhere else


@pytest.mark.data
@pytest.mark.timeout(120)
def test_video_decodes_with_faces_only_in_face_segments(
    drive: tuple[Path, dict], shared_data: Path
) -> None:
    out, tl = drive
    cap = cv2.VideoCapture(str(out / "video.mp4"))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == 10
    cropper = FaceCropper(CameraConfig(source="file"))
    found = {0: 0, 1: 0, 2: 0}
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (480, 640, 3)
        seg = min(2, int((frames / 10 >= 6) + (frames / 10 >= 11)))
        if frames % 2 == 0:  # every other frame keeps the test quick
            found[seg] += cropper.crop(frame) is not None
        frames += 1
    cap.release()
    assert frames == 160
    assert found[0] >= 27 and found[2] >= 22  # angry (30 checked), surprise (25 checked)
    assert found[1] == 0  # the driver looks away
    faces = tl["segments"][0]["faces"]
    assert faces and all((shared_data / "ckplus48" / "anger" / f).exists() for f in faces)


@pytest.mark.data
@pytest.mark.timeout(120)
def test_transcript_and_timeline(drive: tuple[Path, dict], shared_data: Path) -> None:
    out, tl = drive
    rows = [json.loads(line) for line in (out / "transcript.jsonl").read_text().splitlines()]
    assert rows
    for r in rows:
        seg = next(s for s in tl["segments"] if s["start_s"] <= r["start_s"] < s["end_s"])
        assert r["end_s"] <= seg["end_s"] and r["text"] in seg["lines"]
    meld = (shared_data / "meld_text" / "dev_sent_emo.csv").read_text(encoding="utf-8")
    assert rows[0]["text"].split()[0].replace("'", "") in meld.replace("\u2019", "")
    assert tl["faults"] == [{"modality": "audio", "kind": "privacy", "start_s": 2,
                             "seconds": 3, "end_s": 5, "expect": "disabled"}]
    assert "synthetic" in tl["pairing"]
    assert json.loads((out / "config.json").read_text())["script"]["seed"] == 3


@pytest.mark.data
@pytest.mark.timeout(120)
def test_same_seed_same_drive_other_seed_other_clips(
    drive: tuple[Path, dict], shared_data: Path, tmp_path: Path
) -> None:
    out, tl = drive
    again = _build(shared_data, tmp_path / "again", seed=3)
    assert again["segments"] == tl["segments"]
    assert (tmp_path / "again" / "audio.wav").read_bytes() == (out / "audio.wav").read_bytes()
    other = _build(shared_data, tmp_path / "other", seed=4)
    assert other["segments"] != tl["segments"]


def test_bad_scripts_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[drive]\nname = "x"\n[[segment]]\nemotion = "bored"\nseconds = 5\n')
    with pytest.raises(SystemExit) as e:
        main(["--script", str(bad), "--emodb", ".", "--ckplus", ".", "--meld", ".",
              "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "bored" in capsys.readouterr().err
    bad.write_text('[drive]\nname = "x"\n[[segment]]\nemotion = "sad"\nseconds = 5\n'
                   '[[fault]]\nmodality = "audio"\nkind = "stalled"\nstart_s = 4\nseconds = 3\n')
    with pytest.raises(ValueError, match="ends after the drive"):
        DriveScript.load(bad)
