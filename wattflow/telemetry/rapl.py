"""CPU package and DRAM energy from Linux powercap (RAPL), for the host side of a cell.

The counters wrap at max_energy_range_uj and, since CVE-2020-8694, are often readable by
root only; both cases are handled, and a missing or unreadable tree is reported as
unavailable instead of failing a cell.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from wattflow.telemetry.base import SourceContext, SourceUnavailable

DEFAULT_ROOT = Path("/sys/class/powercap")
_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


class RaplReader:
    """Reads package-N and dram-N zones (N is the package index)."""

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self.zones: dict[str, Path] = {}
        self.ranges: dict[str, int] = {}
        self.reason: str | None = None
        self._discover()

    def _discover(self) -> None:
        if not self.root.is_dir():
            self.reason = f"{self.root} does not exist"
            return
        for d in sorted(self.root.iterdir()):
            m = _ZONE.match(d.name)
            if not m or not (d / "energy_uj").exists():
                continue
            try:
                name = (d / "name").read_text().strip()
            except OSError:
                continue
            pkg = m.group(1)
            if name.startswith("package"):
                key = name  # already "package-N"
            elif name == "dram":
                key = f"dram-{pkg}"
            else:
                continue  # core/uncore are parts of the package; psys overlaps it
            self.zones[key] = d
            try:
                self.ranges[key] = int((d / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                self.ranges[key] = 2**32
        if not self.zones:
            self.reason = f"no intel-rapl package or dram zones under {self.root}"
            return
        try:
            self.read()
        except PermissionError as exc:
            self.reason = f"RAPL counters not readable ({exc.filename}): needs root"
            self.zones.clear()

    def available(self) -> bool:
        return bool(self.zones)

    def read(self) -> dict[str, float]:
        """Counter values in joules (not since any start: use delta)."""
        return {k: int((d / "energy_uj").read_text()) / 1e6 for k, d in self.zones.items()}

    def delta(self, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Energy between two reads, correcting one wraparound per zone."""
        out = {}
        for k in before.keys() & after.keys():
            d = after[k] - before[k]
            if d < 0:
                d += self.ranges.get(k, 2**32) / 1e6
            out[k] = d
        return out


class RaplCell:
    """The source for one cell: package and DRAM energy between start and stop."""

    name = "rapl"
    gpu = False

    def __init__(self, reader: RaplReader) -> None:
        self.reader = reader
        self._start: dict[str, float] | None = None
        self.energy_j: dict[str, float] | None = None

    def idle_baseline(self, seconds: float) -> float | None:
        return None

    def start(self, t0: float) -> None:
        self._start = self.reader.read()

    def stop(self, t_end: float) -> list[dict]:
        """Two rows per zone, as the GPU rows are kept: the counter at the start (0 J) and
        at the end, with the average power between (host rows: `gpu` null, `zone` set)."""
        if self._start is None:
            return []
        self.energy_j = self.reader.delta(self._start, self.reader.read())
        span = max(t_end, 0.0)
        rows = []
        for zone, joules in sorted(self.energy_j.items()):
            power = joules / span if span > 0 else None
            for t, e in ((0.0, 0.0), (span, joules)):
                rows.append({"t_s": t, "energy_j": e, "power_w": power, "zone": zone})
        return rows

    def info(self) -> dict:
        return {"energy_j": self.energy_j}

    def close(self) -> None:
        pass


class RaplSource:
    name: ClassVar[str] = "rapl"
    gpu: ClassVar[bool] = False

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = root

    def open(self, ctx: SourceContext) -> RaplCell:
        reader = RaplReader(self.root)
        if not reader.available():
            raise SourceUnavailable(reader.reason or "RAPL unavailable")
        return RaplCell(reader)


SOURCE = RaplSource()
