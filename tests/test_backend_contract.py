"""The runtime/bank contract: pattern names and input conventions."""

import numpy as np
import pytest

from engines.backend import MODALITIES, WindowInputs, load_backend, pattern_key


def test_pattern_key_orders_modalities_canonically() -> None:
    assert pattern_key({"text", "audio"}) == "audio+text"
    assert pattern_key(["video", "text", "audio"]) == "audio+video+text"
    assert pattern_key([]) == ""
    assert MODALITIES == ("audio", "video", "text")


def test_window_inputs_reports_present_modalities() -> None:
    w = WindowInputs(audio=np.zeros(10, np.int16), text=("hi",))
    assert w.present() == ("audio", "text")


def test_unknown_backend_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(tmp_path, "no-such-backend")
