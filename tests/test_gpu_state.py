"""conftest's gpu handling (tests/gpu_state.py): skip without a GPU, fail when CuPy is broken."""

from __future__ import annotations

import types

import pytest

from tests.gpu_state import check_item, device_present, gpu_state

NVRTC = ("NVRTC missing", "a CuPy elementwise kernel: ...; pip install -e '.[gpu]'")


def item(*markers):
    return types.SimpleNamespace(keywords={m: True for m in markers})


def test_broken_cupy_on_a_machine_with_a_device_fails_loudly():
    state = gpu_state(problem=lambda: NVRTC, present=lambda: True)
    assert state[0] == "broken" and "NVRTC missing" in state[1] and ".[gpu]" in state[1]
    with pytest.raises(pytest.fail.Exception, match="CuPy is installed and a CUDA device is "
                                                    "present, but CuPy cannot run: NVRTC"):
        check_item(item("gpu"), state)
    check_item(item("slow"), state)                     # other tests are left alone


def test_no_cupy_or_no_device_skips():
    for problem, present in (((lambda: ("not installed", "pip install")), lambda: True),
                             ((lambda: NVRTC), lambda: False),
                             ((lambda: ("no device", "nvidia-smi")), lambda: False)):
        state = gpu_state(problem=problem, present=present)
        assert state[0] == "absent"
        with pytest.raises(pytest.skip.Exception):
            check_item(item("gpu"), state)


def test_working_cupy_runs_the_gpu_tests():
    state = gpu_state(problem=lambda: None, present=lambda: True)
    assert state == ("ok", "")
    check_item(item("gpu"), state)                      # neither skips nor fails


def test_a_device_counted_by_cupy_is_present(monkeypatch):
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    assert device_present(lambda: 1) is True
    assert device_present(lambda: 0) is False
    assert device_present(lambda: (_ for _ in ()).throw(RuntimeError("driver"))) is False
    monkeypatch.setattr("glob.glob", lambda pattern: ["/dev/nvidia0"])
    assert device_present(lambda: 0) is True
