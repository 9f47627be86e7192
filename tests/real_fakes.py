"""Test doubles for the real-engine tests: a fake NVML module and helpers to run the fake
OpenAI server. Not a test module itself (no test_ prefix)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from wattflow import devices
from wattflow.devices.nvml import NvmlLibrary
from wattflow.engines.server import free_port


class NVMLError(Exception):
    pass


class NVMLError_NoPermission(NVMLError):  # noqa: N801 - pynvml's name
    pass


class FakeNvml:
    """Records calls and GPU state; raises on demand (`fail` = {"power", "clock", ...})."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    NVML_FI_DEV_POWER_INSTANT, NVML_POWER_SCOPE_MEMORY = 186, 2
    NVMLError, NVMLError_NoPermission = NVMLError, NVMLError_NoPermission

    def __init__(
        self,
        n: int = 1,
        *,
        state_file: str | Path | None = None,
        fail: set[str] | None = None,
        power_w: float = 250.0,
        mem_power: bool = False,
        instant: bool = True,
    ) -> None:
        self.instant = instant
        self.gpus = [{"limit_mw": 700_000, "locked": None} for _ in range(n)]
        self.state_file = Path(state_file) if state_file else None
        self.fail = set(fail or ())
        self.power_mw = int(power_w * 1000)
        self.mem_power = mem_power
        self.t0 = time.monotonic()
        self.calls: list[tuple] = []
        self.inits = 0
        self._save()

    def _save(self) -> None:
        if self.state_file:
            self.state_file.write_text(json.dumps(self.gpus))

    def nvmlInit(self) -> None:  # noqa: N802
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.inits -= 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h: int) -> str:  # noqa: N802
        return "Fake GPU"

    def nvmlDeviceGetUUID(self, h: int) -> bytes:  # noqa: N802 - older bindings return bytes
        return f"GPU-fa4e0000-0000-0000-0000-{h:012d}".encode()

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:  # noqa: N802
        return self.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:  # noqa: N802
        # mJ since "boot": a large offset, growing at power_w
        return 987_654_321 + int((time.monotonic() - self.t0) * self.power_mw)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:  # noqa: N802
        return self.gpus[h]["limit_mw"]

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:  # noqa: N802
        return self.gpus[h]["limit_mw"]

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> tuple[int, int]:  # noqa: N802
        return 200_000, 700_000

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:  # noqa: N802
        if kind == self.NVML_CLOCK_SM:
            return self.gpus[h]["locked"] or 1980
        return 2619

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:  # noqa: N802
        return 41

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:  # noqa: N802
        return 0x2 if self.gpus[h]["locked"] else 0x1

    def nvmlDeviceGetFieldValues(self, h: int, ids: list) -> list:  # noqa: N802
        out = []
        for fid in ids:
            if isinstance(fid, tuple):  # (field, scope): memory power
                if not self.mem_power:
                    raise NVMLError("Not Supported")
                mw = 60_000
            else:  # the instantaneous power field; this fake's "average" lags by 10 W
                if not self.instant:
                    raise NVMLError("Not Supported")
                mw = self.nvmlDeviceGetPowerUsage(h) + 10_000
            out.append(SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(uiVal=mw)))
        return out

    def nvmlDeviceSetPowerManagementLimit(self, h: int, mw: int) -> None:  # noqa: N802
        self.calls.append(("set_limit", h, mw))
        if "power" in self.fail:
            raise NVMLError_NoPermission("Insufficient Permissions")
        self.gpus[h]["limit_mw"] = mw
        self._save()

    def nvmlDeviceSetGpuLockedClocks(self, h: int, lo: int, hi: int) -> None:  # noqa: N802
        self.calls.append(("lock", h, lo, hi))
        if "clock" in self.fail:
            raise NVMLError_NoPermission("Insufficient Permissions")
        self.gpus[h]["locked"] = hi
        self._save()

    def nvmlDeviceResetGpuLockedClocks(self, h: int) -> None:  # noqa: N802
        self.calls.append(("reset", h))
        self.gpus[h]["locked"] = None
        self._save()


def lib(fake: FakeNvml) -> NvmlLibrary:
    """The NVML device library over a fake NVML module."""
    return NvmlLibrary(fake)


def use_fake_nvml(fake: FakeNvml) -> None:
    """Make `wattflow.devices.library("nvml")` (what the cell's slot, sampler and settings
    use) answer from `fake`, in this process. Undo with `devices._OVERRIDES.clear()`."""
    devices._OVERRIDES["nvml"] = lambda: NvmlLibrary(fake)


def start_fake_server(api_key: str = "k", *extra: str) -> tuple[subprocess.Popen, str]:
    """The fake OpenAI server in a subprocess; returns (process, base_url) once healthy."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wattflow.testing.standin_server",
            "--port",
            str(port),
            "--api-key",
            api_key,
            *extra,
        ]
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("fake server did not start")


def openai_cell(url: str, workload: dict, timeout_s: float = 2.0, **engine) -> tuple[dict, dict]:
    """(spec, knobs) of one cell against the OpenAI endpoint `url` (kind openai, no
    telemetry, served model `wattflow` unless `served_model=None`), validated like a
    config: `workload` is the one workload's parameters."""
    import copy

    import yaml

    from tests.conftest import ROOT, TINY_MODEL
    from wattflow import config as wf_config

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["engines"] = {
        "flt": {
            "kind": "openai",
            "url": url,
            "model": "tiny",
            "gpu": "h100-sxm",
            "telemetry": "none",
            "request_timeout_s": timeout_s,
            "served_model": "wattflow",
            **engine,
        }
    }
    if cfg["engines"]["flt"]["served_model"] is None:  # ask the endpoint (GET /v1/models)
        del cfg["engines"]["flt"]["served_model"]
    cfg["models"] = {"tiny": {k: v for k, v in TINY_MODEL.items() if k != "name"}}
    cfg["workloads"] = {"w": workload}
    cfg["grid"] = {
        "engine": ["flt"],
        "workload": ["w"],
        "max_output_tokens": [workload["output_tokens"]],
    }
    cfg = wf_config.validate(copy.deepcopy(cfg))
    knobs = wf_config.cells(cfg)[0].knobs
    return wf_config.cell_spec(cfg, knobs), knobs
