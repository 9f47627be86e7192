"""Progress with an ETA for work that takes more than a few seconds.

Quiet for the first `after_s` seconds so that fast cells (the simulator's) print nothing;
after that one line every `every_s` seconds on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "requests",
        *,
        after_s: float = 3.0,
        every_s: float = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, max(total, 1), unit
        self.after_s, self.every_s = after_s, every_s
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.done = 0
        self._last = self.start
        self.lines = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.start >= self.after_s and (
            now - self._last >= self.every_s or self.done >= self.total
        ):
            self._last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
            self.lines += 1

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        frac = min(self.done / self.total, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        return (
            f"[wattflow] {self.label}: {self.done}/{self.total} {self.unit} "
            f"({frac:.0%}), {elapsed:.0f} s elapsed, ETA {eta:.0f} s"
        )
