"""The OpenCV camera sensor on a real encoded video (mp4v) made from real CK+ face crops."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from sensors.base import SensorError  # noqa: E402
from sensors.camera import CameraConfig, CameraSensor  # noqa: E402

FPS = 15


def _face_frame(face48: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    frame = np.full((480, 640, 3), 110, np.uint8)
    frame += rng.integers(0, 12, frame.shape, dtype=np.uint8)  # sensor noise, not flat grey
    big = cv2.resize(face48, (192, 192), interpolation=cv2.INTER_CUBIC)
    frame[140:332, 224:416] = big[..., None]
    return frame


@pytest.fixture(scope="module")
def face_video(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """10 frames face A, 10 frames no face, 10 frames face B; returns (path, per-frame face)."""
    files = sorted((shared_data / "ckplus48" / "happy").glob("*.png"))
    faces = [cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE),
             cv2.imread(str(files[-1]), cv2.IMREAD_GRAYSCALE)]
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("cam") / "drive.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (640, 480))
    assert writer.isOpened()
    truth: list[np.ndarray | None] = []
    for face in [faces[0]] * 10 + [None] * 10 + [faces[1]] * 10:
        if face is None:
            frame = np.full((480, 640, 3), 110, np.uint8)
            frame += rng.integers(0, 12, frame.shape, dtype=np.uint8)
        else:
            frame = _face_frame(face, rng)
        writer.write(frame)
        truth.append(face)
    writer.release()
    return path, truth


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


@pytest.mark.data
@pytest.mark.timeout(60)
def test_file_gives_face_crops_and_empty_without_face(face_video: tuple[Path, list]) -> None:
    path, truth = face_video
    samples = []
    with CameraSensor(CameraConfig(source=str(path))) as cam:
        assert isinstance(cam, CameraSensor)
        while len(samples) < len(truth):
            s = cam.read(timeout_s=5.0)
            assert s is not None, "the decoder stalled"
            samples.append(s)
        assert cam.read(timeout_s=0.5) is None  # end of file: nothing more, no hang
        assert cam.finished
        assert cam.counters["frames"] == len(truth) and cam.counters["dropped"] == 0
    found = 0
    for s, face in zip(samples, truth, strict=True):
        if face is None:
            assert s.state == "empty" and s.data.shape == (0, 48, 48)
            continue
        if s.state == "ok":
            found += 1
            assert s.data.shape == (1, 48, 48) and s.data.dtype == np.uint8
            # The crop is the face that was pasted, not just "some" 48x48 patch.
            assert _corr(s.data[0], face) > 0.6  # mp4v + noise + a box a few px off
            other = truth[0] if face is truth[-1] else truth[-1]
            assert _corr(s.data[0], face) > _corr(s.data[0], other)
    assert found >= 18, f"only {found} of 20 face frames detected"
    stamps = [s.t_mono_ns for s in samples]
    assert stamps == sorted(stamps)


@pytest.mark.data
@pytest.mark.timeout(60)
def test_replay_paces_in_real_time_and_seeks_when_started_late(
    face_video: tuple[Path, list],
) -> None:
    path, truth = face_video
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - 1_000_000_000  # the drive began 1 s ago
    got = []
    with CameraSensor(CameraConfig(source=str(path), replay_t0_ns=t0)) as cam:
        start = time.monotonic()
        while (s := cam.read(timeout_s=1.0)) is not None:
            got.append(s)
        elapsed = time.monotonic() - start
        skipped = cam.counters["skipped"]
    # 1 s late at 15 fps: the first ~15 frames are skipped, the rest play at 15 fps.
    assert 13 <= skipped <= 16
    assert len(got) == len(truth) - skipped
    assert elapsed > 0.8 * len(got) / FPS  # not decoded as fast as possible
    period = np.diff([s.t_mono_ns for s in got])
    assert np.all(np.abs(period - 1e9 / FPS) < 1e6)  # stamps on the file's frame grid
    assert all(s.t_mono_ns > t0 for s in got)


@pytest.mark.timeout(30)
def test_bad_source_is_a_sensor_error(tmp_path: Path) -> None:
    with pytest.raises(SensorError):
        CameraSensor(CameraConfig(source=str(tmp_path / "missing.mp4"))).connect()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(SensorError):
        CameraSensor(CameraConfig(source=str(junk))).connect()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        CameraConfig(source="")
    with pytest.raises(ValueError):
        CameraConfig(source="0", min_face_frac=2.0)


@pytest.mark.data
@pytest.mark.timeout(60)
def test_privacy_flag_releases_the_camera_and_reopens_in_place(
    face_video: tuple[Path, list], tmp_path: Path
) -> None:
    path, _ = face_video
    flag = tmp_path / "privacy-video"
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    with CameraSensor(CameraConfig(source=str(path), replay_t0_ns=t0,
                                   privacy_file=str(flag))) as cam:
        assert cam.read(timeout_s=1.0) is not None
        flag.touch()
        got = [cam.read(timeout_s=0.2) for _ in range(5)]
        assert {s.state for s in got if s is not None} == {"disabled"}
        assert cam._cap is None  # released, not just ignored
        reopened = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        flag.unlink()
        s = cam.read(timeout_s=1.0)
        assert s is not None and s.state in ("ok", "empty")
        # reopened where the drive is now, not where it was paused
        assert s.t_mono_ns >= reopened and cam.counters["skipped"] >= 5
