"""What the benches share: progress lines on stderr, the load average beside each result, and
the summary of a sample (n, median, nearest-rank p95, min, max). A bench imports it as
`from _common import …` (the bench's own directory is first on sys.path when it runs)."""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def ts(text: str) -> float:
    """An ISO-8601 time of the state files (`…Z`) as seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stats_ms(values: list[float], digits: int = 1) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    rank = max(0, math.ceil(0.95 * len(ordered)) - 1)  # nearest rank
    return {"n": len(ordered), "median": round(statistics.median(ordered), digits),
            "p95": round(ordered[rank], digits), "min": round(ordered[0], digits), "max": round(ordered[-1], digits)}


def wait_for(predicate: Callable[[], Any], seconds: float, what: str, interval: float = 0.1) -> Any:
    """The predicate's first truthy value; TimeoutError naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds:g}s waiting for {what}")
        time.sleep(interval)
