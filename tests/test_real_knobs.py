"""GPU settings (power cap, clock) with a fake NVML: set and restore on every exit path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from real_fakes import FakeNvml, lib

from wattflow.devices.settings import GpuSettings, SettingPermissionError

DEFAULT = [{"limit_mw": 700_000, "locked": None}]


def test_set_and_restore():
    fake = FakeNvml(1)
    with GpuSettings([0], lib=lib(fake), power_cap_w=300, sm_clock_mhz=1410):
        assert fake.gpus == [{"limit_mw": 300_000, "locked": 1410}]
        assert ("lock", 0, 1410, 1410) in fake.calls
    assert fake.gpus == DEFAULT and fake.inits == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_none_leaves_as_is():
    fake = FakeNvml(1)
    with GpuSettings([0], lib=lib(fake), sm_clock_mhz=1000):
        assert fake.gpus[0] == {"limit_mw": 700_000, "locked": 1000}
    assert not [c for c in fake.calls if c[0] == "set_limit"]
    with GpuSettings([0], lib=lib(fake)):
        pass
    assert fake.calls == [("lock", 0, 1000, 1000), ("reset", 0)]


def test_restored_on_exception():
    fake = FakeNvml(2)
    with pytest.raises(ZeroDivisionError), GpuSettings([0, 1], lib=lib(fake), power_cap_w=400):
        assert fake.gpus[1]["limit_mw"] == 400_000
        1 / 0  # noqa: B018
    assert fake.gpus == DEFAULT * 2


def test_restored_on_sigint():
    fake = FakeNvml(1)
    with (
        pytest.raises(KeyboardInterrupt),
        GpuSettings([0], lib=lib(fake), power_cap_w=300, sm_clock_mhz=900),
    ):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(2)
    assert fake.gpus == DEFAULT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_restored_on_sigterm_in_subprocess(tmp_path: Path):
    state = tmp_path / "gpus.json"
    script = textwrap.dedent(f"""
        import time
        from real_fakes import FakeNvml, lib
        from wattflow.devices.settings import GpuSettings
        fake = FakeNvml(1, state_file={str(state)!r})
        with GpuSettings([0], lib=lib(fake), power_cap_w=250, sm_clock_mhz=1200):
            print("applied", flush=True)
            time.sleep(30)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "applied"
    assert json.loads(state.read_text()) == [{"limit_mw": 250_000, "locked": 1200}]
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 143
    assert json.loads(state.read_text()) == DEFAULT


def test_permission_error_message_and_nothing_changed():
    fake = FakeNvml(1, fail={"power"})
    with (
        pytest.raises(SettingPermissionError) as ei,
        GpuSettings([0], lib=lib(fake), power_cap_w=300),
    ):
        pass
    msg = str(ei.value)
    assert "root or CAP_SYS_ADMIN" in msg and "power_cap_w" in msg and "sudo" in msg
    assert fake.gpus == DEFAULT and fake.inits == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_partial_failure_restores_power():
    fake = FakeNvml(1, fail={"clock"})
    k = GpuSettings([0], lib=lib(fake))
    with pytest.raises(SettingPermissionError, match="sm_clock_mhz"):
        k.apply(300, 1400)
    assert ("set_limit", 0, 300_000) in fake.calls
    assert fake.calls[-1] == ("set_limit", 0, 700_000)  # put back
    assert fake.gpus == DEFAULT


def test_cap_out_of_range():
    fake = FakeNvml(1)
    with pytest.raises(ValueError, match="outside"):
        GpuSettings([0], lib=lib(fake)).apply(900, None)
    assert fake.gpus == DEFAULT and not fake.calls
