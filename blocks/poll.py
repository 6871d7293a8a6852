"""The one way to wait for a condition: poll it until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[T, bool]:
    """Call `probe` until `done(value)`, or `timeout` seconds have passed; returns the last
    value and whether it was done. `probe` may raise to stop early (a crash seen while waiting)."""
    deadline = clock() + timeout
    while True:
        value = probe()
        if done(value):
            return value, True
        if clock() > deadline:
            return value, False
        sleep(interval)
