"""A virtual-time asyncio event loop.

The workflow driver is ordinary asyncio code (`await engine.generate(...)`,
`await asyncio.sleep(think_time)`). Run on this loop, every wait resolves instantly in
wall-clock terms: when nothing is runnable, the selector jumps the virtual clock to the
next timer instead of sleeping. So the same driver serves real engines (default loop, wall
clock) and the simulator (this loop), and a simulated hour costs seconds.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.BaseSelector):
    """A selector that never blocks: `select(timeout)` advances virtual time instead."""

    def __init__(self) -> None:
        self.now = 0.0
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj, events, data=None):  # noqa: ANN001 - selector API
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj):  # noqa: ANN001
        return self._map.pop(fileobj)

    def modify(self, fileobj, events, data=None):  # noqa: ANN001
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None):
        if timeout is None:
            raise RuntimeError(
                "simulation deadlock: nothing is runnable and no timer is pending "
                "(a request was never answered or a workflow waits on a missing parent)"
            )
        if timeout > 0:
            self.now += timeout
        return []

    def get_map(self):
        return self._map

    def close(self) -> None:
        self._map.clear()


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """Event loop whose `time()` is simulated seconds starting at 0."""

    def __init__(self) -> None:
        self._vsel = _VirtualSelector()
        super().__init__(selector=self._vsel)
        # Timers are compared against time() + resolution; keep it tiny so events keep order.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._vsel.now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion in virtual time and close the loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
