"""The one worker cache of loaded models: one load per slot and key, pinned by what the driver read."""

import pytest

from geoplantnet.runtime.worker_cache import ModelChangedError, pinned


def test_a_model_is_loaded_once_per_key_and_refused_when_it_changed_since_the_driver_read_it(tmp_path):
    calls = []

    def load(pin: str):
        def read():
            calls.append(pin)
            return {"weights": pin}, pin

        return read

    url = str(tmp_path / "m.pt")
    first, loads = pinned("test-slot", url, "aaa", "cpu", load("aaa"), "model file")
    again, loads_again = pinned("test-slot", url, "aaa", "cpu", load("aaa"), "model file")
    assert first is again and calls == ["aaa"] and loads_again == loads
    with pytest.raises(ModelChangedError, match=r"m\.pt: the model file changed during the run"):
        pinned("test-slot", url, "bbb", "cpu", load("ccc"), "model file")  # the file now holds other bytes
    assert pinned("test-slot", url, "ccc", "cpu", load("ccc"), "model file")[0] == {"weights": "ccc"}
