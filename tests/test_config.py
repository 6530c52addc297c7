from __future__ import annotations

from pathlib import Path

import pytest

from edge import config
from edge.config import ConfigError, DaemonConfig, WindowConfig


def test_toml_loads_nested_tables_and_overrides_merge(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        '[daemon]\nclock = "event"\ndisabled = ["video"]\n[daemon.window]\nhop_ms = 250\n'
    )
    cfg = config.load(DaemonConfig, path, section="daemon", window={"max_lag_ms": 50})
    assert cfg.clock == "event" and cfg.disabled == ("video",)
    assert cfg.window == WindowConfig(hop_ms=250, max_lag_ms=50)


@pytest.mark.parametrize(
    "text",
    [
        "[daemon]\nclok = 'event'\n",  # typo
        "[daemon]\nclock = 'wall'\n",
        "[daemon]\ndisabled = ['smell']\n",
        "[daemon.window]\nwindow_ms = 1000\nhop_ms = 300\n",
        "[daemon.window]\nhop_ms = 'fast'\n",
        "[daemon]\nrcv_hwm = true\n",
        "[daemon.window]\nmax_lag_ms = 10\nsettle_ms = 20\n",
        "[daemon\n",
    ],
)
def test_bad_config_raises_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        config.load(DaemonConfig, path, section="daemon")


def test_resolved_config_round_trips_through_the_written_file(tmp_path: Path) -> None:
    cfg = DaemonConfig(run_dir=str(tmp_path), disabled=("text",)).resolved()
    assert cfg.ingress == f"ipc://{tmp_path}/ingress.ipc" and cfg.model_dir
    written = config.write_resolved(cfg, tmp_path, "daemon")
    assert config.load(DaemonConfig, written) == cfg


def test_frozen() -> None:
    cfg = DaemonConfig()
    with pytest.raises(AttributeError):
        cfg.clock = "event"  # type: ignore[misc]


def test_shipped_configs_load_and_daemon_toml_states_the_defaults() -> None:
    from sensors.capture import CaptureConfig

    configs = config.REPO_ROOT / "configs"
    assert config.load(DaemonConfig, configs / "daemon.toml", section="daemon") == DaemonConfig()
    assert config.load(CaptureConfig, configs / "sensors.toml", section="sensor") == CaptureConfig()
    demo = config.load(DaemonConfig, configs / "demo.toml", section="daemon")
    assert demo.window.hop_ms == 250
